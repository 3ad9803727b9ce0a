import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import type { Catalogue } from "../domain/catalogue.js";
import { UnknownCommand, type AttemptRow, type CommandRow, type CommandService } from "../domain/commands.js";
import { CommandStateConflict } from "../domain/lifecycle.js";
import type { AppLicenceData } from "../domain/ports.js";
import { LicenceChangeRejected, type LicenceChangeService, type OperationKind } from "../domain/licence-changes.js";
import { AppError, Conflict, InvalidBodyField, NotFound } from "../errors.js";
import { RESEND_MAX_PER_CALL, type EventOperatorService, type EventRecord, type EventWithAttempts, type HeldKey } from "../events/operator.js";
import { rejectOtherMethods } from "../orange/error-handler.js";
import { compact, renderUserService, toLicenceChangeItem } from "../orange/mapping.js";
import { ErrorBodySchema } from "../orange/schemas.js";
import type { AdminAuthenticator } from "./auth.js";
import { commandOut, recordRoutes } from "./records.js";
import type { Overview, OverviewQueries } from "./overview.js";
import type { RecordQueries } from "../domain/records.js";
import {
  CommandDetailSchema,
  CommandListQuerySchema,
  CommandListSchema,
  CommandParamsSchema,
  CommandResultRequestSchema,
  AdminLicenceChangesRequestSchema,
  AdminLicenceChangesResponseSchema,
  BulkResendRequestSchema,
  BulkResendResponseSchema,
  DiscardRequestSchema,
  EventDetailSchema,
  EventListQuerySchema,
  EventListSchema,
  EventParamsSchema,
  HeldKeyListSchema,
  HeldKeysQuerySchema,
  OverviewQuerySchema,
  OverviewSchema,
} from "./schemas.js";

/**
 * The operators' admin API, under /admin/v1: partner-initiated licence changes (UC5) and the
 * outbox of events to Orange. Its own credential (./auth.ts); errors in Orange's format like
 * every other route.
 */

export interface AdminRoutesOptions {
  authenticate: AdminAuthenticator;
  /** false: log that the admin API is disabled (every route answers 503). */
  enabled: boolean;
  licenceChanges: LicenceChangeService;
  events: EventOperatorService;
  commands: CommandService;
  catalogue: Catalogue;
  /** Customers, fleets, licences, orders and updates with their timelines; the search box. */
  records: RecordQueries;
  /** GET /admin/v1/overview: counts by state, parked events, held fleets, last calls. */
  overview: OverviewQueries;
}

/**
 * Who acts through the admin API, as recorded on a discarded event. There is one admin
 * credential (ADMIN_TOKEN); with several, this would name the one the request used.
 */
const ADMIN_ACTOR = "admin";

const errors = {
  400: ErrorBodySchema.describe("invalid request (codes 20-28)"),
  401: ErrorBodySchema.describe("missing or invalid admin token (codes 40-41)"),
  503: ErrorBodySchema.describe("admin API disabled (ADMIN_TOKEN unset) or store unavailable (code 5)"),
};

const OPERATION_FIELD: Record<OperationKind, string> = {
  endUser: "endUserOperation",
  realizingResource: "realizingResourceOperation",
  right: "rightOperation",
  serviceCharacteristic: "serviceCharacteristicOperation",
};

function toHttpError(err: LicenceChangeRejected): AppError {
  const field =
    err.operation === undefined
      ? `userService[${err.index}].id`
      : `userService[${err.index}].${OPERATION_FIELD[err.operation]}.action`;
  const description = `${field}: ${err.detail}; nothing was changed`;
  if (err.kind === "unknown_licence") return new NotFound(description);
  if (err.kind === "invalid") return new InvalidBodyField(description);
  return new Conflict(description);
}

function eventOut(e: EventRecord) {
  return compact({
    id: e.id,
    api: e.api,
    type: e.type,
    state: e.state,
    orderingKey: e.orderingKey,
    fleetId: e.fleetId,
    orderId: e.orderId,
    updateId: e.updateId,
    attempts: e.attempts,
    nextAttemptAt: e.state === "pending" ? e.nextAttemptAt : undefined,
    lastError: e.lastError,
    lastStatus: e.lastStatus,
    lastRequestId: e.lastRequestId,
    lastResponseBody: e.lastResponseBody,
    createdAt: e.createdAt,
    deliveredAt: e.deliveredAt,
    deadAt: e.deadAt,
    resentAt: e.resentAt,
    discardedAt: e.discardedAt,
    discardedBy: e.discardedBy,
    discardReason: e.discardReason,
    releasedAt: e.releasedAt,
    body: e.body,
  });
}

function heldKeyOut(h: HeldKey) {
  return compact({ orderingKey: h.orderingKey, since: h.since, waiting: h.waiting, event: eventOut(h.event) });
}

function eventDetailOut(e: EventWithAttempts) {
  return compact({
    ...eventOut(e),
    heldBy: e.heldBy,
    deliveryAttempts: e.deliveryAttempts.map((a) =>
      compact({
        attempt: a.attempt,
        workerId: a.workerId,
        startedAt: a.startedAt,
        finishedAt: a.finishedAt,
        outcome: a.outcome,
        status: a.status,
        requestId: a.requestId,
        responseBody: a.responseBody,
        error: a.error,
      }),
    ),
  });
}


function commandDetailOut(c: CommandRow & { attempts_list: AttemptRow[] }) {
  return {
    ...commandOut(c),
    ...compact({ body: c.body === null ? undefined : (JSON.parse(c.body) as unknown), result: c.result }),
    attemptList: c.attempts_list.map((a) =>
      compact({
        attempt: a.attempt,
        startedAt: a.started_at,
        finishedAt: a.finished_at,
        outcome: a.outcome,
        status: a.status,
        error: a.error,
        responseBody: a.response_body,
        durationMs: a.duration_ms,
      }),
    ),
  };
}

const REQUEST_STATES = ["acknowledged", "completed", "failed"] as const;
const EVENT_STATES = ["pending", "delivered", "dead", "discarded"] as const;
const COMMAND_STATES = ["queued", "sending", "waiting", "retrying", "done", "refused", "parked"] as const;

function overviewOut(o: Overview) {
  const counts = (what: Overview["counts"][number]["what"], states: readonly string[]) =>
    Object.fromEntries(states.map((s) => [s, o.counts.find((c) => c.what === what && c.state === s)?.n ?? 0]));
  const p = o.oldestPendingEvent;
  return {
    at: o.at.toISOString(),
    orders: counts("orders", REQUEST_STATES),
    updates: counts("updates", REQUEST_STATES),
    events: counts("events", EVENT_STATES),
    commands: counts("commands", COMMAND_STATES),
    ...compact({
      oldestPendingEvent: p && {
        id: p.id,
        type: p.type,
        orderingKey: p.ordering_key,
        fleetId: p.fleet_id,
        orderId: p.order_id,
        updateId: p.update_id,
        attempts: p.attempts,
        createdAt: p.created_at,
        nextAttemptAt: p.next_attempt_at,
        ageSeconds: p.age_seconds,
        lastStatus: p.last_status,
        lastError: p.last_error,
      },
    }),
    parkedEvents: { total: o.parkedEvents.total, ...compact({ items: o.parkedEvents.items.map(eventOut) }) },
    heldFleets: { total: o.heldFleets.total, ...compact({ items: o.heldFleets.items.map(heldKeyOut) }) },
    ...compact({ lastCalls: o.lastCalls.map((c) =>
      compact({
        kind: c.kind,
        id: c.id,
        orangeRef: c.orange_ref,
        useCase: c.use_case,
        state: c.state,
        failureReason: c.failure_reason,
        answerMode: c.answer_mode,
        receivedAt: c.received_at,
      }),
    ) }),
  };
}

export const adminRoutes: FastifyPluginAsyncZod<AdminRoutesOptions> = async (app, opts) => {
  if (!opts.enabled) {
    app.log.warn("ADMIN_TOKEN is not set: the admin API (/admin/v1) is disabled and answers 503");
  }

  app.addHook("onRequest", (request, _reply, done) => {
    try {
      request.caller = opts.authenticate(request);
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  });

  app.get(
    "/admin/v1/overview",
    {
      schema: {
        operationId: "getOverview",
        summary: "What an operator on call reads first",
        description:
          "Orders, updates, events to Orange and commands to the partner's application counted by state (every state " +
          "present, 0 when none); the oldest pending event no dead event holds (what delivery is late on); the dead " +
          "events (last parked first) and the fleets they hold (held longest first), each with its total and its first 10 " +
          "(the events listings page through the rest); the last 10 orders and updates Orange sent. The console's first page.",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        querystring: OverviewQuerySchema,
        response: { 200: OverviewSchema, ...errors },
      },
    },
    async () => overviewOut(await opts.overview.read()) as never,
  );

  app.post(
    "/admin/v1/licence-changes",
    {
      // The partner's application reports its own changes here, with APP_TOKEN.
      config: { application: true },
      schema: {
        operationId: "changeLicences",
        summary: "Change licences on the partner's initiative (UC5) and tell Orange",
        description:
          "All or nothing, in one transaction: end user (add only when none; modify, swap, delete), realizing " +
          "resource, login (add, modify, reset; a password is never stored nor sent) and service characteristics. " +
          "Writes one updateNotification event per fleet concerned (one for the whole request when the licences " +
          "share a fleet), delivered to Orange in the fleet's order.",
        tags: ["admin"],
        security: [{ adminBearer: [] }, { appBearer: [] }],
        body: AdminLicenceChangesRequestSchema,
        response: {
          200: AdminLicenceChangesResponseSchema,
          ...errors,
          404: ErrorBodySchema.describe("unknown licence (code 60); nothing changed"),
          409: ErrorBodySchema.describe("an operation does not fit the licence (code 63); nothing changed"),
        },
      },
    },
    async (request) => {
      const cmd = { changes: request.body.userService.map(toLicenceChangeItem) };
      try {
        const outcome = await opts.licenceChanges.applyChanges(cmd, request.caller ?? ADMIN_ACTOR);
        return {
          userService: outcome.licences.map((l) => renderUserService(l, opts.catalogue)),
          events: outcome.events,
        };
      } catch (err) {
        if (err instanceof LicenceChangeRejected) throw toHttpError(err);
        throw err;
      }
    },
  );

  app.get(
    "/admin/v1/events",
    {
      schema: {
        operationId: "listEvents",
        summary: "Events to Orange (the outbox)",
        description:
          "Filtered by state, type, fleet or order; paginated with offset/limit (default 20, at most 100) and sorted " +
          "with sort (default -createdAt). X-Total-Count: events matching the filters; X-Result-Count: events in this page. " +
          "An unknown parameter is refused (400 naming it).",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        querystring: EventListQuerySchema,
        response: { 200: EventListSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { offset, limit, sort, ...filter } = request.query;
      const page = await opts.events.list(filter, { offset, limit, sort });
      return reply
        .header("x-total-count", String(page.total))
        .header("x-result-count", String(page.items.length))
        .send(page.items.map(eventOut) as never);
    },
  );

  app.get(
    "/admin/v1/events/held",
    {
      schema: {
        operationId: "listHeldFleets",
        summary: "Ordering keys (fleets) held by a dead event",
        description:
          "A dead event holds the later events of its ordering key (one fleet's events arrive in the order they were " +
          "written): they wait until an operator re-sends it (it goes first) or discards it. One entry per held key, " +
          "held longest first: the dead event holding it, how many events wait behind it, since when. Paginated with " +
          "offset/limit (default 20, at most 100); X-Total-Count: held keys; X-Result-Count: keys in this page.",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        querystring: HeldKeysQuerySchema,
        response: { 200: HeldKeyListSchema, ...errors },
      },
    },
    async (request, reply) => {
      const page = await opts.events.held(request.query);
      return reply
        .header("x-total-count", String(page.total))
        .header("x-result-count", String(page.items.length))
        .send(page.items.map(heldKeyOut) as never);
    },
  );

  app.post(
    "/admin/v1/events/resend",
    {
      schema: {
        operationId: "resendEvents",
        summary: "Re-send the dead events matching a filter",
        description:
          "The filters of the events listing (type, fleetId, orderId; state may only be dead, the default), in a JSON " +
          `body ({}: every dead event). In one transaction, at most ${RESEND_MAX_PER_CALL} events, oldest first, ` +
          "go back to pending as with a single re-send; remaining says how many dead events still match (call again).",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        body: BulkResendRequestSchema,
        response: { 200: BulkResendResponseSchema, ...errors },
      },
    },
    async (request) => {
      const { state: _dead, ...filter } = request.body;
      const outcome = await opts.events.resendMatching(filter, request.caller ?? ADMIN_ACTOR);
      return compact({ resent: outcome.resent.length, remaining: outcome.remaining, events: outcome.resent }) as never;
    },
  );

  app.get(
    "/admin/v1/events/:id",
    {
      schema: {
        operationId: "getEvent",
        summary: "One event with its delivery attempts",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        params: EventParamsSchema,
        response: { 200: EventDetailSchema, ...errors, 404: ErrorBodySchema.describe("unknown event (code 60)") },
      },
    },
    async (request) => {
      const event = await opts.events.get(request.params.id);
      if (!event) throw new NotFound(`event ${JSON.stringify(request.params.id)} does not exist`);
      return eventDetailOut(event) as never;
    },
  );

  app.post(
    "/admin/v1/events/:id/resend",
    {
      schema: {
        operationId: "resendEvent",
        summary: "Re-send a parked (dead) event",
        description:
          "The event goes back to pending with a fresh retry budget, due now, under the same event id; its earlier " +
          "attempts stay in its history. It keeps its place: it is delivered before its fleet's later events, which " +
          "waited behind it.",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        params: EventParamsSchema,
        response: {
          200: EventDetailSchema,
          ...errors,
          404: ErrorBodySchema.describe("unknown event (code 60)"),
          409: ErrorBodySchema.describe("the event is not dead (code 63)"),
        },
      },
    },
    async (request) => eventDetailOut(await opts.events.resend(request.params.id, request.caller ?? ADMIN_ACTOR)) as never,
  );

  app.post(
    "/admin/v1/events/:id/discard",
    {
      schema: {
        operationId: "discardEvent",
        summary: "Discard a dead event: it is never delivered, and its fleet's later events go out",
        description:
          "Final state discarded, recording who (the admin credential), when and the optional reason; the event keeps " +
          "its delivery history. The later events of its ordering key, which waited behind it, are then delivered " +
          "(unless another dead event holds them).",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        params: EventParamsSchema,
        body: DiscardRequestSchema,
        response: {
          200: EventDetailSchema,
          ...errors,
          404: ErrorBodySchema.describe("unknown event (code 60)"),
          409: ErrorBodySchema.describe("the event is not dead (code 63)"),
        },
      },
    },
    async (request) =>
      eventDetailOut(await opts.events.discard(request.params.id, request.caller ?? ADMIN_ACTOR, request.body.reason)) as never,
  );

  const commandOf = async (id: string, work: () => Promise<CommandRow>) => {
    try {
      return commandDetailOut({ ...(await work()), attempts_list: [] });
    } catch (err) {
      if (err instanceof UnknownCommand) throw new NotFound(err.message);
      if (err instanceof CommandStateConflict) throw new Conflict(err.message);
      throw err;
    }
  };

  app.get(
    "/admin/v1/provisioning",
    {
      schema: {
        operationId: "listCommands",
        summary: "Commands to the partner's application",
        description:
          "PROVISIONING_MODE=webhook: one command per order or update, newest first; filtered by state (parked ones need " +
          "an operator), type, request or fleet; paginated with offset/limit. X-Total-Count / X-Result-Count as elsewhere.",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        querystring: CommandListQuerySchema,
        response: { 200: CommandListSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { offset, limit, fleetId, ...filter } = request.query;
      const page = await opts.commands.list({ ...filter, lane: fleetId === undefined ? undefined : `fleet:${fleetId}` }, { offset, limit });
      return reply
        .header("x-total-count", String(page.total))
        .header("x-result-count", String(page.items.length))
        .send(page.items.map(commandOut) as never);
    },
  );

  app.get(
    "/admin/v1/provisioning/:id",
    {
      schema: {
        operationId: "getCommand",
        summary: "One command with its body and its attempts",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        params: CommandParamsSchema,
        response: { 200: CommandDetailSchema, ...errors, 404: ErrorBodySchema.describe("unknown command (code 60)") },
      },
    },
    async (request) => {
      const command = await opts.commands.get(request.params.id);
      if (!command) throw new NotFound(`command ${JSON.stringify(request.params.id)} does not exist`);
      return commandDetailOut(command) as never;
    },
  );

  app.post(
    "/admin/v1/provisioning/:id/result",
    {
      config: { application: true },
      schema: {
        operationId: "reportCommandResult",
        summary: "The outcome of a command: the application's late result (after its 202), or an operator's, by hand",
        description:
          "completed: the order or update is applied (with what the application tells of the licences) and Orange gets " +
          "its outcome; failed: it ends failed with the reason. For a command sent and not finished (waiting, sending, " +
          "retrying); 409 otherwise. The application calls it with APP_TOKEN, operators with ADMIN_TOKEN.",
        tags: ["admin"],
        security: [{ adminBearer: [] }, { appBearer: [] }],
        params: CommandParamsSchema,
        body: CommandResultRequestSchema,
        response: {
          200: CommandDetailSchema,
          ...errors,
          404: ErrorBodySchema.describe("unknown command (code 60)"),
          409: ErrorBodySchema.describe("the command is not waiting for a result (code 63)"),
        },
      },
    },
    async (request) => {
      const { id } = request.params;
      const body = request.body;
      const result =
        body.outcome === "completed"
          ? { outcome: "completed" as const, licences: body.licences as AppLicenceData[] | undefined }
          : { outcome: "failed" as const, reason: body.reason! };
      await commandOf(id, () => opts.commands.end(id, result, request.caller ?? ADMIN_ACTOR));
      return commandDetailOut((await opts.commands.get(id))!) as never;
    },
  );

  app.post(
    "/admin/v1/provisioning/:id/retry",
    {
      schema: {
        operationId: "retryCommand",
        summary: "Send a parked command again",
        description:
          "Its request, which ended failed, is carried out again with the same command (same webhook-id and body) and a fresh " +
          "retry budget; its outcome then reaches Orange as an event. 409 when later commands of the same fleet went on " +
          "meanwhile (it would reach the application out of order).",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
        params: CommandParamsSchema,
        response: {
          200: CommandDetailSchema,
          ...errors,
          404: ErrorBodySchema.describe("unknown command (code 60)"),
          409: ErrorBodySchema.describe("the command is not parked, or later commands of its fleet went on (code 63)"),
        },
      },
    },
    async (request) => {
      const { id } = request.params;
      await commandOf(id, () => opts.commands.retry(id, request.caller ?? ADMIN_ACTOR));
      return commandDetailOut((await opts.commands.get(id))!) as never;
    },
  );

  // In this plugin's context: behind the same authentication.
  await app.register(recordRoutes, { records: opts.records });

  rejectOtherMethods(app, "/admin/v1/overview", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/licence-changes", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/provisioning", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/provisioning/:id", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/provisioning/:id/result", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/provisioning/:id/retry", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/events", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/events/:id", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/events/:id/resend", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/events/:id/discard", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/events/held", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/events/resend", ["POST"]);
};
