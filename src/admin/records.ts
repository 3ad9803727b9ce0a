import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import type { z } from "zod";
import type {
  CommandRow,
  CustomerRow,
  FleetRow,
  FoundRow,
  LicenceRow,
  RecordQueries,
  RequestDetail,
  RequestKind,
  RequestRow,
  Timeline,
  TimelineRow,
  TimelineSubject,
} from "../domain/records.js";
import { NotFound } from "../errors.js";
import type { JsonObject, JsonValue } from "../lib/json.js";
import { rejectOtherMethods } from "../orange/error-handler.js";
import { compact } from "../orange/mapping.js";
import { ErrorBodySchema } from "../orange/schemas.js";
import {
  CustomerDetailSchema,
  CustomerListQuerySchema,
  CustomerListSchema,
  FleetDetailSchema,
  FleetListQuerySchema,
  FleetListSchema,
  LicenceDetailSchema,
  LicenceListQuerySchema,
  LicenceListSchema,
  OrderDetailSchema,
  OrderListQuerySchema,
  OrderListSchema,
  RecordParamsSchema,
  SearchQuerySchema,
  SearchResultSchema,
  TimelineQuerySchema,
  TimelineSchema,
  UpdateDetailSchema,
  UpdateListQuerySchema,
  UpdateListSchema,
} from "./schemas.js";

/**
 * What operators look up, under /admin/v1 (registered by routes.ts, behind its authentication):
 * customers, fleets, licences, orders and updates, each listed with filters (an unknown one is a
 * 400 naming it), paged (offset, limit, sort; X-Total-Count, X-Result-Count) and read with its
 * timeline; and one search box for any partner id or Orange reference.
 */

export interface RecordRoutesOptions {
  records: RecordQueries;
}

const BASE = "/admin/v1";

const errors = {
  400: ErrorBodySchema.describe("invalid request: an unknown parameter or sort field, a bad value (code 28)"),
  401: ErrorBodySchema.describe("missing or invalid admin token (codes 40-41)"),
  503: ErrorBodySchema.describe("admin API disabled (ADMIN_TOKEN unset) or store unavailable (code 5)"),
};
const notFound = (what: string) => ErrorBodySchema.describe(`unknown ${what} (code 60)`);

// ---------------------------------------------------------------------------------------------
// Timeline entries in words

const show = (v: unknown): string => (typeof v === "string" ? v : JSON.stringify(v));

/** What changed between two snapshots of a licence, field by field. */
function changes(before: JsonObject | undefined, after: JsonObject | undefined): string {
  const out: string[] = [];
  const b = before ?? {};
  const a = after ?? {};
  if (b.state !== a.state || b.externalState !== a.externalState) {
    out.push(`state ${show(b.state)} → ${show(a.state)}${a.externalState !== undefined ? ` (Orange asked ${show(a.externalState)})` : ""}`);
  }
  if (b.offerCode !== a.offerCode) out.push(`offer ${show(b.offerCode)} → ${show(a.offerCode)}`);
  const person = (e: JsonValue | undefined) => {
    if (e === undefined) return "none";
    const o = e as JsonObject;
    return [o.givenName, o.familyName].filter((x) => typeof x === "string").join(" ") || show(o.id ?? o.email ?? "someone");
  };
  if (JSON.stringify(b.endUser) !== JSON.stringify(a.endUser)) out.push(`end user ${person(b.endUser)} → ${person(a.endUser)}`);
  if (JSON.stringify(b.login) !== JSON.stringify(a.login)) {
    out.push(`login ${show((b.login as JsonObject | undefined)?.value ?? "none")} → ${show((a.login as JsonObject | undefined)?.value ?? "none")}`);
  }
  if (JSON.stringify(b.realizingResource) !== JSON.stringify(a.realizingResource)) out.push("technical resource changed");
  if (JSON.stringify(b.serviceCharacteristics) !== JSON.stringify(a.serviceCharacteristics)) out.push("service characteristics changed");
  return out.length > 0 ? out.join("; ") : "no visible change";
}

function summaryOf(e: TimelineRow): string {
  const d = (e.data ?? {}) as Record<string, JsonValue | undefined>;
  const by = e.actor && e.actor !== "orange" ? ` (by ${e.actor})` : "";
  switch (e.kind) {
    case "request.received": {
      const ids = [d.orangeRef !== undefined ? `reference ${show(d.orangeRef)}` : undefined, d.httpRequestId !== undefined ? `request id ${show(d.httpRequestId)}` : undefined];
      return `Orange sent the request${d.mode !== undefined ? ` (${show(d.mode)} mode)` : ""}: ${ids.filter(Boolean).join(", ") || "no reference"}`;
    }
    case "request.replayed":
      return `Orange sent the same request again${d.httpRequestId !== undefined ? ` (request id ${show(d.httpRequestId)})` : ""}: answered from the stored answer, nothing done twice`;
    case "request.answered":
      if (d.status !== undefined) return `answered ${show(d.status)}: the outcome was not known yet, Orange is to send the request again`;
      return `answered ${show(d.state)}${d.reason !== undefined ? `: ${show(d.reason)}` : ""}`;
    case "request.completed":
      return `carried out${d.useCase !== undefined ? ` (${show(d.useCase)}` : " ("}${d.licences !== undefined ? `${d.useCase !== undefined ? ", " : ""}${show(d.licences)} licence(s)` : ""})${e.fleet_id ? ` in fleet ${e.fleet_id}` : ""}${by}`.replace(" ()", "");
    case "request.failed":
      return `failed: ${show(d.reason ?? "no reason recorded")}${by}`;
    case "request.run-failed":
      return `run ${show(d.run)} failed on a technical error, to be tried again: ${show(d.error)}`;
    case "licence.created":
      return `created by order ${e.request_id ?? "?"}`;
    case "licence.changed":
      return `${d.source === "update" ? `update ${e.request_id ?? "?"}` : `partner-side change${by}`}: ${changes(d.before as JsonObject | undefined, d.after as JsonObject | undefined)}`;
    case "licences.changed":
      return `partner-side change of ${Array.isArray(d.licences) ? d.licences.length : "?"} licence(s)${by}, told to Orange by event ${e.event_id ?? "?"}`;
    case "command.prepared":
      return `command ${show(d.type)} prepared for the partner's application`;
    case "command.attempt":
      return `call ${show(d.attempt)} to the partner's application: ${show(d.outcome)}${d.status !== undefined ? ` (${show(d.status)})` : ""}${d.error !== undefined ? `: ${show(d.error)}` : ""}${d.nextAttemptAt !== undefined ? `; next call at ${show(d.nextAttemptAt)}` : ""}`;
    case "command.parked":
      return `command parked: ${show(d.reason)}`;
    case "command.ended":
      return `command ended by hand: ${show(d.outcome)}${d.reason !== undefined ? ` (${show(d.reason)})` : ""}${by}`;
    case "command.retried":
      return `parked command sent again${by}`;
    case "event.written":
      return `event ${show(d.type)} written for Orange (now ${show(d.state)})`;
    case "event.attempt":
      return `delivery ${show(d.attempt)} to Orange: ${show(d.outcome ?? "interrupted")}${d.status !== undefined ? ` (${show(d.status)})` : ""}${d.error !== undefined ? `: ${show(d.error)}` : ""}`;
    case "event.dead":
      return `event parked (dead): waits for an operator to re-send or discard it`;
    case "event.resent":
      return `event re-sent${by}${d.bulk !== undefined ? " (bulk re-send)" : ""}`;
    case "event.discarded":
      return `event discarded${by}${d.reason !== undefined ? `: ${show(d.reason)}` : ""}`;
    default:
      return e.kind;
  }
}

function entryOut(e: TimelineRow) {
  return compact({
    at: e.at,
    kind: e.kind,
    summary: summaryOf(e),
    actor: e.actor,
    requestId: e.request_id,
    customerId: e.customer_id,
    fleetId: e.fleet_id,
    licenceId: e.licence_id,
    eventId: e.event_id,
    commandId: e.command_id,
    data: e.data,
  });
}

const timelineOut = (t: Timeline) => ({ timeline: t.entries.map(entryOut), timelineTotal: t.total });

// ---------------------------------------------------------------------------------------------
// Records

function customerOut(c: CustomerRow) {
  return compact({
    id: c.id,
    orangeRef: c.orange_ref,
    tradingName: c.trading_name,
    name: c.name,
    organizationCode: c.organization_code,
    fleets: c.fleets,
    createdAt: c.created_at,
    updatedAt: c.updated_at,
  });
}

function fleetOut(f: FleetRow) {
  return compact({
    id: f.id,
    customerId: f.customer_id,
    customerOrangeRef: f.customer_orange_ref,
    customerTradingName: f.customer_trading_name,
    offerCode: f.offer_code,
    licences: f.licences,
    createdAt: f.created_at,
    updatedAt: f.updated_at,
  });
}

function licenceOut(l: LicenceRow) {
  return compact({
    id: l.id,
    fleetId: l.fleet_id,
    customerId: l.customer_id,
    orderId: l.order_id,
    state: l.state,
    externalState: l.external_state,
    offerCode: l.offer_code,
    endUser: l.end_user,
    realizingResource: l.realizing_resource,
    login: l.login,
    serviceCharacteristic: l.service_characteristics,
    createdAt: l.created_at,
    updatedAt: l.updated_at,
    terminatedAt: l.terminated_at,
  });
}

function requestOut(r: RequestRow) {
  return compact({
    id: r.id,
    orangeRef: r.orange_ref,
    idempotencyKey: r.idempotency_key !== r.orange_ref ? r.idempotency_key : undefined,
    state: r.state,
    answerMode: r.answer_mode,
    failureReason: r.failure_reason,
    attempts: r.attempts,
    lastError: r.last_error,
    createdAt: r.created_at,
    completedAt: r.completed_at,
    useCase: r.use_case,
    customerId: r.customer_id,
    fleetId: r.fleet_id,
    quantity: r.quantity,
    licences: r.licences,
  });
}

/** A command as the admin API shows it (its listing and detail, and the records that name it). */
export function commandOut(c: CommandRow) {
  return compact({
    id: c.id,
    requestKind: c.request_kind,
    requestId: c.request_id,
    type: c.type,
    lanes: c.lanes,
    state: c.state,
    attempts: c.attempts,
    nextAttemptAt: c.state === "retrying" ? c.next_attempt_at : undefined,
    lastStatus: c.last_status,
    lastError: c.last_error,
    endedBy: c.ended_by,
    createdAt: c.created_at,
    preparedAt: c.prepared_at,
    finishedAt: c.finished_at,
  });
}

function requestDetailOut(d: RequestDetail) {
  return {
    ...requestOut(d.request),
    ...compact({
      request: d.request.request,
      answer: d.request.response,
      licenceIds: d.request.licence_ids,
      command: d.command && commandOut(d.command),
      events: d.events.map((e) =>
        compact({
          id: e.id,
          type: e.type,
          state: e.state,
          fleetId: e.fleet_id,
          attempts: e.attempts,
          lastStatus: e.last_status,
          lastError: e.last_error,
          createdAt: e.created_at,
          deliveredAt: e.delivered_at,
          deadAt: e.dead_at,
        }),
      ),
    }),
    ...timelineOut(d.timeline),
  };
}

// ---------------------------------------------------------------------------------------------
// The search box

const LINK: Record<FoundRow["kind"], (r: FoundRow) => string> = {
  order: (r) => `${BASE}/orders/${r.id}`,
  update: (r) => `${BASE}/updates/${r.id}`,
  customer: (r) => `${BASE}/customers/${r.id}`,
  // A contact is read with its customer.
  contact: (r) => `${BASE}/customers/${String(r.info.customerId)}`,
  fleet: (r) => `${BASE}/fleets/${r.id}`,
  licence: (r) => `${BASE}/licences/${r.id}`,
  event: (r) => `${BASE}/events/${r.id}`,
  command: (r) => `${BASE}/provisioning/${r.id}`,
};

function labelOf(r: FoundRow): string {
  const i = r.info as Record<string, JsonValue | undefined>;
  const some = (...parts: (JsonValue | undefined)[]) => parts.filter((p) => typeof p === "string" && p !== "").join(" ");
  switch (r.kind) {
    case "order":
      return `order ${some(i.useCase, i.state)}${i.orangeRef ? ` (${show(i.orangeRef)})` : ""}${i.reason ? `: ${show(i.reason)}` : ""}`;
    case "update":
      return `update ${show(i.state)}${i.orangeRef ? ` (${show(i.orangeRef)})` : ""}${i.reason ? `: ${show(i.reason)}` : ""}`;
    case "customer":
      return `customer ${some(i.tradingName) || some(i.name) || show(i.orangeRef)} (${show(i.orangeRef)})`;
    case "contact":
      return `contact ${some(i.givenName, i.familyName) || some(i.email) || r.id} of customer ${show(i.customerId)}`;
    case "fleet":
      return `fleet of ${show(i.offerCode)}, customer ${show(i.customerId)}`;
    case "licence":
      return `licence ${show(i.state)} of ${show(i.offerCode)} in fleet ${show(i.fleetId)}${i.endUser ? `, end user ${some(i.givenName, i.familyName) || show(i.endUser)} (${show(i.endUser)})` : ""}`;
    case "event":
      return `event ${show(i.type)} ${show(i.state)}`;
    case "command":
      return `command ${i.type ? show(i.type) : "(not prepared yet)"} ${show(i.state)} for ${show(i.requestId)}`;
  }
}

// ---------------------------------------------------------------------------------------------

type Paged = { headers(values: Record<string, string>): unknown };

function pagedHeaders(reply: Paged, total: number, count: number) {
  reply.headers({ "x-total-count": String(total), "x-result-count": String(count) });
}

const PAGING =
  "Paginated with offset/limit (default 20, at most 100) and sorted with sort; X-Total-Count: how many match the filters; " +
  "X-Result-Count: how many are in this page. An unknown parameter or sort field is refused (400 naming it).";

export const recordRoutes: FastifyPluginAsyncZod<RecordRoutesOptions> = async (app, opts) => {
  const { records } = opts;
  const tags = ["admin"];
  const security = [{ adminBearer: [] }];

  const capital = (w: string) => `${w[0]!.toUpperCase()}${w.slice(1)}`;

  /** The timeline route of one kind of record: every entry, paged. */
  function timelineRoute(path: string, of: TimelineSubject["of"], what: string) {
    app.get(
      `${BASE}/${path}/:id/timeline`,
      {
        schema: {
          summary: `The timeline of one ${what}, paged`,
          operationId: `get${capital(what)}Timeline`,
          description:
            "Every entry in time order (sort=-at: newest first): what the history recorded, and the events to Orange with " +
            `their delivery attempts. ${PAGING}`,
          tags,
          security,
          params: RecordParamsSchema,
          querystring: TimelineQuerySchema,
          response: { 200: TimelineSchema, ...errors, 404: notFound(what) },
        },
      },
      async (request, reply) => {
        const { offset, limit, sort } = request.query;
        const page = await records.timeline({ of, id: request.params.id }, { offset, limit, newestFirst: sort.descending });
        if (!page) throw new NotFound(`${what} ${JSON.stringify(request.params.id)} does not exist`);
        pagedHeaders(reply, page.total, page.items.length);
        return page.items.map(entryOut) as never;
      },
    );
    rejectOtherMethods(app, `${BASE}/${path}/:id/timeline`, ["GET"]);
  }

  /** The listing and detail routes of one kind of record. */
  function listing(
    path: string,
    what: string,
    s: { query: z.ZodType; list: z.ZodType; detail: z.ZodType; listDescription: string; detailDescription: string },
    list: (query: unknown) => Promise<{ total: number; items: unknown[] }>,
    read: (id: string) => Promise<unknown>,
  ) {
    app.get(
      `${BASE}/${path}`,
      {
        schema: {
          summary: `${capital(what)}s`,
          operationId: `list${capital(what)}s`,
          description: `${s.listDescription} ${PAGING}`,
          tags,
          security,
          querystring: s.query,
          response: { 200: s.list, ...errors },
        },
      },
      async (request, reply) => {
        const page = await list(request.query);
        pagedHeaders(reply, page.total, page.items.length);
        return page.items as never;
      },
    );
    app.get(
      `${BASE}/${path}/:id`,
      {
        schema: {
          summary: `One ${what} with its timeline`,
          operationId: `get${capital(what)}`,
          description: s.detailDescription,
          tags,
          security,
          params: RecordParamsSchema,
          response: { 200: s.detail, ...errors, 404: notFound(what) },
        },
      },
      async (request) => {
        const found = await read(request.params.id);
        if (found === undefined) throw new NotFound(`${what} ${JSON.stringify(request.params.id)} does not exist`);
        return found as never;
      },
    );
    rejectOtherMethods(app, `${BASE}/${path}`, ["GET"]);
    rejectOtherMethods(app, `${BASE}/${path}/:id`, ["GET"]);
  }

  app.get(
    `${BASE}/search`,
    {
      schema: {
        summary: "The search box: any partner id or Orange reference",
        operationId: "search",
        description:
          "q: a partner id (po_ order, upd_ update, cu_ customer, ct_ contact, fl_ fleet, us_ licence, eu_ end user: its " +
          "licences, ev_ event, pc_ command) or an Orange reference (of an order, an update, a customer, a contact; an " +
          "Idempotency-Key too). Every object it names, newest first, each with its kind, a label and where to read it. " +
          "Paginated with offset/limit; X-Total-Count / X-Result-Count as elsewhere.",
        tags,
        security,
        querystring: SearchQuerySchema,
        response: { 200: SearchResultSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { q, offset, limit } = request.query;
      const page = await records.search(q, { offset, limit });
      pagedHeaders(reply, page.total, page.items.length);
      return page.items.map((r) => ({ kind: r.kind, id: r.id, label: labelOf(r), href: LINK[r.kind](r) })) as never;
    },
  );
  rejectOtherMethods(app, `${BASE}/search`, ["GET"]);

  listing(
    "customers",
    "customer",
    {
      query: CustomerListQuerySchema,
      list: CustomerListSchema,
      detail: CustomerDetailSchema,
      listDescription: "Filtered by Orange's reference, a part of the name (trading name or name, whatever the case) or the registration code.",
      detailDescription:
        "The customer, its contacts and fleets, and its timeline: the orders that made or changed it, its fleets' updates, " +
        "partner-side changes and events to Orange.",
    },
    async (query) => {
      const { offset, limit, sort, ...filter } = query as z.output<typeof CustomerListQuerySchema>;
      const page = await records.listCustomers(filter, { offset, limit, sort });
      return { total: page.total, items: page.items.map(customerOut) };
    },
    async (id) => {
      const found = await records.customer(id);
      if (!found) return undefined;
      const c = found.row;
      return {
        ...customerOut(c),
        ...compact({ postalAddress: c.postal_address, characteristic: c.characteristics, contacts: c.contacts, fleetList: c.fleet_list }),
        ...timelineOut(found.timeline),
      };
    },
  );
  timelineRoute("customers", "customer", "customer");

  listing(
    "fleets",
    "fleet",
    {
      query: FleetListQuerySchema,
      list: FleetListSchema,
      detail: FleetDetailSchema,
      listDescription: "Filtered by customer or offer; each with its customer and its number of licences.",
      detailDescription:
        "The fleet, its licences counted by state, and its timeline: its orders, updates and partner-side changes, and its " +
        "events to Orange with their delivery attempts.",
    },
    async (query) => {
      const { offset, limit, sort, ...filter } = query as z.output<typeof FleetListQuerySchema>;
      const page = await records.listFleets(filter, { offset, limit, sort });
      return { total: page.total, items: page.items.map(fleetOut) };
    },
    async (id) => {
      const found = await records.fleet(id);
      if (!found) return undefined;
      return {
        ...fleetOut(found.row),
        ...compact({ characteristic: found.row.characteristics, licencesByState: found.row.by_state }),
        ...timelineOut(found.timeline),
      };
    },
  );
  timelineRoute("fleets", "fleet", "fleet");

  listing(
    "licences",
    "licence",
    {
      query: LicenceListQuerySchema,
      list: LicenceListSchema,
      detail: LicenceDetailSchema,
      listDescription: "Filtered by state, offer, fleet, customer, the order that created them, or the end user's e-mail.",
      detailDescription:
        "The licence as it is, and its history: its creation (its order, what it held), then each later change with what " +
        "it held before and after (state, offer, end user, login, technical resource), from Orange's updates and the " +
        "partner-side changes.",
    },
    async (query) => {
      const { offset, limit, sort, ...filter } = query as z.output<typeof LicenceListQuerySchema>;
      const page = await records.listLicences(filter, { offset, limit, sort });
      return { total: page.total, items: page.items.map(licenceOut) };
    },
    async (id) => {
      const found = await records.licence(id);
      if (!found) return undefined;
      return { ...licenceOut(found.row), ...compact({ history: found.timeline.entries.map(entryOut) }), historyTotal: found.timeline.total };
    },
  );
  timelineRoute("licences", "licence", "licence");

  const requestRoutes = (kind: RequestKind) => {
    const query = kind === "order" ? OrderListQuerySchema : UpdateListQuerySchema;
    listing(
      `${kind}s`,
      kind,
      {
        query,
        list: kind === "order" ? OrderListSchema : UpdateListSchema,
        detail: kind === "order" ? OrderDetailSchema : UpdateDetailSchema,
        listDescription:
          `Orange's ${kind}s, filtered by state, ${kind === "order" ? "use case, customer, fleet, " : "licence named, "}Orange's ` +
          "reference or the date received (from included, to excluded); a failed one with its reason.",
        detailDescription:
          `The ${kind} with the request as received, what Orange was answered, its command to the partner's application ` +
          "(webhook mode), its events to Orange, and its timeline: received (with Orange's request ids), answered, " +
          "carried out or failed, each call to the application, each delivery of its events, operators' actions.",
      },
      async (q) => {
        const { offset, limit, sort, from, to, ...filter } = q as z.output<typeof OrderListQuerySchema> & z.output<typeof UpdateListQuerySchema>;
        const page = await records.listRequests(
          kind,
          { ...filter, from: from === undefined ? undefined : new Date(from), to: to === undefined ? undefined : new Date(to) },
          { offset, limit, sort },
        );
        return { total: page.total, items: page.items.map(requestOut) };
      },
      async (id) => {
        const found = await records.request(kind, id);
        return found && requestDetailOut(found);
      },
    );
    timelineRoute(`${kind}s`, kind, kind);
  };
  requestRoutes("order");
  requestRoutes("update");
};
