import { isDeepStrictEqual } from "node:util";
import { jsonSchemaTransformObject } from "fastify-type-provider-zod";
import type { ContractExample } from "./contract-examples.js";

/**
 * Turns the document @fastify/swagger builds from the route schemas into one an integrator can
 * use (issue: an OpenAPI document with worked examples, clean schemas and the events):
 *
 * - every operation carries the worked examples of docs/orange-contract.md (replayed against a
 *   real server by test/docs.test.ts), the first request example being what /docs "Try it out"
 *   sends by default, so that it is a real request and not a schema's placeholders;
 * - the events this server POSTs to Orange are described as OpenAPI 3.1 `webhooks`;
 * - the schemas say what an integrator needs: one component per shape (zod's input and output
 *   copies merged when equal), none unused, no `additionalProperties: {}` (the loose request
 *   objects accept unknown fields: said once, in the description) and no regular expression
 *   beside `format: date-time` (a tool would generate a date of year 6400 from it).
 */

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON document walked by key
type Json = any;

const JSON_MEDIA = "application/json";

/** How an example names its source, the worked example of the contract it is. */
export const CONTRACT_EXAMPLE = "docs/orange-contract.md, example ";

interface NamedExample {
  /** The key under /docs' examples list. */
  key: string;
  /** The example's name in docs/orange-contract.md, or, for the admin API, which the contract does not cover, its value. */
  name: string | { value: (book: ExampleBook) => unknown };
  summary: string;
}

const ex = (key: string, name: NamedExample["name"], summary: string): NamedExample => ({ key, name, summary });
const literal = (value: (book: ExampleBook) => unknown) => ({ value });

const UNAUTHORIZED = [ex("missing-credentials", "error-missing-credentials", "No credential presented (code 40)")];
const FORBIDDEN = [ex("outside-allow-list", "error-forbidden", "Caller outside INBOUND_IP_ALLOWLIST (code 50)")];
const UNAVAILABLE = [ex("store-unavailable", "error-unavailable", "PostgreSQL does not answer (code 5)")];
const COMMON_ERRORS = { 401: UNAUTHORIZED, 403: FORBIDDEN, 503: UNAVAILABLE };

interface OperationExamples {
  /** Request bodies; the first is what "Try it out" sends by default. */
  request?: NamedExample[];
  /** Parameter values "Try it out" fills in, taken from the examples too. */
  parameters?: Record<string, (examples: ExampleBook) => unknown>;
  responses: Record<number, NamedExample[]>;
}

type ExampleBook = (name: string) => Json;

const eventId = (book: ExampleBook) => book("uc4-completed-event").id;
/** The contract shows no command (the partner's application is this server's side): an id of their form. */
const COMMAND_ID = "pc_01m8n2ja8p0000h3k2qv";

const customerId = (book: ExampleBook) => book("uc1-response").customer.id;
const fleetId = (book: ExampleBook) => book("suspend-response").userService[0].relatedProductRefId;
const licenceId = (book: ExampleBook) => book("suspend-response").userService[0].id;
const orderId = (book: ExampleBook) => book("uc2-response").id;
/** The contract's updates answered sync carry no partner id: one of their form. */
const UPDATE_ID = "upd_01m8n2j2a40000t7wq5e";

/** A record's detail and timeline: the same id. */
const record = (id: (book: ExampleBook) => unknown): OperationExamples => ({ parameters: { id }, responses: {} });

/** GET /admin/v1/overview on a server where Orange refused the event of the contract's UC4 order. */
function overviewExample(book: ExampleBook): Json {
  const event = book("uc4-completed-event");
  const order = event.resource;
  const fleet = order.orderItem[0].productRef.id;
  const dead = {
    id: event.id,
    api: "productordering",
    type: event.type,
    state: "dead",
    orderingKey: fleet,
    fleetId: fleet,
    orderId: order.id,
    attempts: 1,
    lastError: "HTTP 400",
    lastStatus: 400,
    lastRequestId: "oapi-7f3c2a",
    lastResponseBody: '{"code":24,"message":"Invalid body field","description":"orderItem[0].productRef.characteristic"}',
    createdAt: "2026-11-30T01:54:30.311Z",
    deadAt: "2026-11-30T01:54:30.402Z",
    body: event,
  };
  return {
    at: "2026-11-30T02:10:00.000Z",
    orders: { acknowledged: 0, completed: 2, failed: 1 },
    updates: { acknowledged: 0, completed: 4, failed: 0 },
    events: { pending: 1, delivered: 5, dead: 1, discarded: 0 },
    commands: { queued: 0, sending: 0, waiting: 0, retrying: 0, done: 0, refused: 0, parked: 0 },
    parkedEvents: { total: 1, items: [dead] },
    heldFleets: { total: 1, items: [{ orderingKey: fleet, since: dead.deadAt, waiting: 1, event: dead }] },
    lastCalls: [
      {
        kind: "order",
        id: order.id,
        orangeRef: order.externalReference.id,
        useCase: "UC2",
        state: "completed",
        answerMode: "async",
        receivedAt: "2026-11-30T01:54:29.512Z",
      },
    ],
  };
}

/** The worked examples of each operation, by operationId. */
const OPERATION_EXAMPLES: Record<string, OperationExamples> = {
  ping: { responses: { 200: [ex("ok", "ping-response", "Available")], 401: UNAUTHORIZED } },
  createProductOrder: {
    request: [
      ex("uc2", "uc2-request", "UC2: a first order, a new fleet of three licences, one set up for its end user"),
      ex("uc1", "uc1-request", "UC1: create the customer and its contacts"),
      ex("uc3", "uc3-request", "UC3: two more licences in a fleet"),
      ex("unknown-offer", "failed-order-request", "An order that fails: an offer missing from the catalogue"),
    ],
    responses: {
      201: [
        ex("uc2", "uc2-response", "UC2 completed: the new fleet's id in orderItem[0].productRef.id"),
        ex("uc1", "uc1-response", "UC1 completed: partner ids for the customer and its contacts"),
        ex("uc3", "uc3-response", "UC3 completed: the same fleet"),
        ex("failed", "failed-order-response", "Failed: the reason in note.text, nothing created"),
        ex("acknowledged", "async-order-response", "Asynchronous mode: acknowledged, the outcome follows as an event"),
      ],
      400: [
        ex("invalid-field", "error-invalid-field", "A field breaks its rule (code 24)"),
        ex("missing-field", "error-missing-field", "A required field is absent (code 23)"),
        ex("forms", "error-forms", "A field that takes several forms names them (code 23)"),
        ex("generated-body", "error-generated-body", "A body generated from the schema (code 24)"),
      ],
      ...COMMON_ERRORS,
      409: [ex("conflict", "error-conflict", "The order's reference, already used with another body (code 63)")],
    },
  },
  listUserServices: {
    parameters: {
      productRefId: (book) => book("uc2-response").orderItem[0].productRef.id,
      offset: () => "0",
      limit: () => "1000",
    },
    responses: {
      200: [
        ex("fleet", "fleet-licences", "?productRefId=: the licences of a fleet"),
        ex("ids", "licences-by-ids", "?id=a,b: the licences among those ids that exist"),
      ],
      400: [ex("no-parameter", "error-query", "Neither productRefId nor id (code 28)")],
      ...COMMON_ERRORS,
      404: [ex("unknown-fleet", "error-unknown-fleet", "Unknown fleet (code 60)")],
    },
  },
  getUserService: {
    parameters: { id: (book) => book("licence").id },
    responses: {
      200: [ex("licence", "licence", "One licence")],
      400: [ex("invalid-id", "error-invalid-url", "An id longer than any licence id (code 20)")],
      ...COMMON_ERRORS,
      404: [ex("unknown-licence", "error-unknown-licence", "Unknown licence (code 60)")],
    },
  },
  updateUserServices: {
    request: [
      ex("suspend", "suspend-request", "Suspend a licence"),
      ex("reactivate", "reactivate-request", "Reactivate a suspended licence"),
      ex("delete", "delete-request", "Delete a licence (final)"),
      ex("swap", "swap-request", "Move a licence to another offer"),
      ex("all-or-nothing", "failed-update-request", "Two licences, one of them terminated: the update fails as a whole"),
    ],
    responses: {
      200: [
        ex("suspend", "suspend-response", "Suspended: inactive, externalState suspended"),
        ex("reactivate", "reactivate-response", "Reactivated: active"),
        ex("delete", "delete-response", "Deleted: terminated"),
        ex("swap", "swap-response", "Moved to Caisse Premium"),
        ex("failed", "failed-update-response", "Failed: the reason in note.text, the licences unchanged"),
        ex("acknowledged", "async-update-response", "Asynchronous mode: acknowledged, the outcome follows as an event"),
      ],
      400: [
        ex("invalid-field", "error-update-invalid", "A state that does not exist (code 24)"),
        ex("generated-body", "error-generated-body", "A body generated from the schema (code 24)"),
      ],
      ...COMMON_ERRORS,
      409: [ex("conflict", "error-update-conflict", "The update's reference, already used with another body (code 63)")],
    },
  },
  changeLicences: {
    request: [ex("uc5", "uc5-admin-request", "UC5: a new end user on one licence, a password reset on another")],
    responses: {},
  },
  getOverview: {
    responses: {
      200: [ex("one-parked-event", literal(overviewExample), "One event parked by Orange's 400: its fleet is held, one event waits behind it")],
    },
  },
  getEvent: { parameters: { id: eventId }, responses: {} },
  resendEvent: { parameters: { id: eventId }, responses: {} },
  discardEvent: {
    parameters: { id: eventId },
    request: [
      ex("with-reason", literal(() => ({ reason: "Orange cancelled the order meanwhile: its outcome no longer concerns it" })), "With the reason kept"),
      ex("without-reason", literal(() => ({})), "Without a reason"),
    ],
    responses: {},
  },
  resendEvents: {
    request: [
      ex("every-dead-event", literal(() => ({})), "Every dead event"),
      ex("one-fleet", literal((book) => ({ fleetId: book("uc2-response").orderItem[0].productRef.id })), "The dead events of one fleet"),
    ],
    responses: {},
  },
  getCommand: { parameters: { id: () => COMMAND_ID }, responses: {} },
  search: { parameters: { q: (book) => book("uc2-request").externalReference.id }, responses: {} },
  getCustomer: record(customerId),
  getCustomerTimeline: record(customerId),
  getFleet: record(fleetId),
  getFleetTimeline: record(fleetId),
  getLicence: record(licenceId),
  getLicenceTimeline: record(licenceId),
  getOrder: record(orderId),
  getOrderTimeline: record(orderId),
  getUpdate: record(() => UPDATE_ID),
  getUpdateTimeline: record(() => UPDATE_ID),
  retryCommand: { parameters: { id: () => COMMAND_ID }, responses: {} },
  reportCommandResult: {
    parameters: { id: () => COMMAND_ID },
    request: [
      ex("completed", literal(() => ({ outcome: "completed" })), "The application carried the command out"),
      ex("failed", literal(() => ({ outcome: "failed", reason: "the customer's account is closed on our side" })), "It did not, and says why"),
    ],
    responses: {},
  },
};

/** The events (contract section 6), by webhook name: schema component and examples. */
const WEBHOOKS: Record<string, { schema: string; path: string; summary: string; examples: NamedExample[] }> = {
  completedStateNotification: {
    schema: "CompletedStateNotification",
    path: "productordering",
    summary: "UC4: an asynchronous order completed",
    examples: [ex("uc4-completed", "uc4-completed-event", "The order acknowledged in asynchronous mode, completed")],
  },
  failedStateNotification: {
    schema: "FailedStateNotification",
    path: "productordering",
    summary: "UC4: an asynchronous order failed",
    examples: [ex("uc4-failed", "uc4-failed-event", "An order acknowledged in asynchronous mode, failed")],
  },
  updateNotification: {
    schema: "UpdateNotification",
    path: "userservice",
    summary: "UC6: an asynchronous update carried out; UC5: licences changed by the partner",
    examples: [
      ex("uc6", "uc6-event", "UC6: the update acknowledged in asynchronous mode, completed"),
      ex("uc5", "uc5-event", "UC5: the partner changed an end user and reset a password"),
    ],
  },
};

const TAGS = [
  { name: "availability", description: "Whether the partner's server answers." },
  { name: "productOrdering", description: "Orange's orders: a customer (UC1), a new fleet of licences (UC2), more licences in a fleet (UC3)." },
  { name: "userService", description: "The licences: consult them, suspend, reactivate, delete, move them to another offer." },
  {
    name: "events",
    description:
      "What this server POSTs to Orange's gateway (webhooks): the outcome of an asynchronous order (UC4) or update (UC6), " +
      "and the changes the partner makes (UC5).",
  },
  { name: "admin", description: "The operators' API (ADMIN_TOKEN) and the routes the partner's application calls (APP_TOKEN)." },
];

/** Relative: the server that serves the document, wherever it runs (npm start: http://localhost:8080). */
const SERVERS = [{ url: "/", description: "The server that serves this document (what /docs \"Try it out\" calls)" }];

const DESCRIPTION =
  "The API Orange's IT calls on the partner: availability, product orders (UC1-UC3), licence consultation and " +
  "updates; and, as webhooks, the events the partner sends to Orange. Wire contract: Orange Business Applications 2.2, " +
  "as docs/orange-contract.md describes it, whose worked examples are the examples of each operation here.\n\n" +
  "Requests may carry fields this document does not list: they are accepted and kept with the stored request, never " +
  "echoed. Every error has the body {code, message, description}; the description names the field, the rule and the " +
  "value received.";

/** The document's last step, for @fastify/swagger's `transformObject`. */
export function createOpenApiFinisher(examples: () => ReadonlyMap<string, ContractExample>) {
  return (input: Parameters<typeof jsonSchemaTransformObject>[0]): Json => {
    const doc: Json = jsonSchemaTransformObject(input);
    doc.info.description = DESCRIPTION;
    doc.webhooks = webhooks();
    mergeInputCopies(doc);
    dropUnusedSchemas(doc);
    cleanSchemas(doc);
    addExamples(doc, bookOf(examples()));
    addResponseHeaders(doc);
    return {
      openapi: doc.openapi,
      info: doc.info,
      servers: SERVERS,
      tags: TAGS,
      security: doc.security,
      paths: doc.paths,
      webhooks: doc.webhooks,
      components: doc.components,
    };
  };
}

function bookOf(examples: ReadonlyMap<string, ContractExample>): ExampleBook {
  return (name) => {
    const found = examples.get(name);
    if (!found) throw new Error(`docs/orange-contract.md has no example ${name}, which the OpenAPI document shows`);
    return structuredClone(found.value);
  };
}

function webhooks(): Json {
  return Object.fromEntries(
    Object.entries(WEBHOOKS).map(([name, hook]) => [
      name,
      {
        post: {
          operationId: name,
          summary: hook.summary,
          description:
            `POSTed to {ORANGE_EVENT_BASE_URL}/{ORANGE_OFFER}/${hook.path}/v2/event with an OAuth 2.0 client-credentials ` +
            "token, one event per call. Events of one fleet arrive in the order they were written; an event may arrive " +
            "twice, with the same id (at least once).",
          tags: ["events"],
          security: [{ orangeOAuth: [] }],
          requestBody: { required: true, content: { [JSON_MEDIA]: { schema: { $ref: `#/components/schemas/${hook.schema}` } } } },
          responses: {
            "201": { description: "Delivered (any 2xx counts)" },
            "401": { description: "The token was refused: the event is sent once more with a new token" },
            "4XX": { description: "Any other client error: the event is parked for an operator (admin API), its fleet's later events wait" },
            "5XX": { description: "Retried with exponential backoff, as are 408, 429, timeouts and connection errors" },
          },
        },
      },
    ]),
  );
}

// ---------------------------------------------------------------------------------------------
// Schemas

const REF = "#/components/schemas/";

/** Every `$ref` under a node. */
function refsIn(node: Json, out = new Set<string>()): Set<string> {
  if (Array.isArray(node)) node.forEach((n) => refsIn(n, out));
  else if (node !== null && typeof node === "object") {
    for (const [key, value] of Object.entries(node)) {
      if (key === "$ref" && typeof value === "string" && value.startsWith(REF)) out.add(value.slice(REF.length));
      else refsIn(value, out);
    }
  }
  return out;
}

function renameRefs(node: Json, rename: ReadonlyMap<string, string>): void {
  if (Array.isArray(node)) node.forEach((n) => renameRefs(n, rename));
  else if (node !== null && typeof node === "object") {
    for (const [key, value] of Object.entries(node)) {
      if (key === "$ref" && typeof value === "string" && value.startsWith(REF)) {
        const to = rename.get(value.slice(REF.length));
        if (to !== undefined) node[key] = REF + to;
      } else renameRefs(value, rename);
    }
  }
}

/**
 * fastify-type-provider-zod writes each registered schema twice, as read (`XInput`) and as
 * written (`X`). Where both copies are the same shape (referring to copies that are the same
 * too), the input one goes: the greatest set of pairs equal under that assumption.
 */
function mergeInputCopies(doc: Json): void {
  const schemas: Record<string, Json> = doc.components.schemas;
  const same = new Map<string, string>();
  for (const name of Object.keys(schemas)) {
    if (name.endsWith("Input") && schemas[name.slice(0, -"Input".length)] !== undefined) same.set(name, name.slice(0, -"Input".length));
  }
  for (let changed = true; changed; ) {
    changed = false;
    for (const [input, output] of same) {
      const renamed = structuredClone(schemas[input]);
      renameRefs(renamed, same);
      if (!isDeepStrictEqual(renamed, schemas[output])) {
        same.delete(input);
        changed = true;
      }
    }
  }
  for (const input of same.keys()) delete schemas[input];
  renameRefs(doc.paths, same);
  renameRefs(doc.webhooks, same);
  renameRefs(schemas, same);
}

function dropUnusedSchemas(doc: Json): void {
  const schemas: Record<string, Json> = doc.components.schemas;
  const used = new Set<string>();
  const queue = [...refsIn(doc.paths), ...refsIn(doc.webhooks)];
  while (queue.length > 0) {
    const name = queue.pop()!;
    if (used.has(name)) continue;
    used.add(name);
    queue.push(...refsIn(schemas[name]));
  }
  for (const name of Object.keys(schemas)) if (!used.has(name)) delete schemas[name];
  doc.components.schemas = Object.fromEntries(Object.entries(schemas).sort(([a], [b]) => a.localeCompare(b)));
}

/** Drops `additionalProperties: {}` (allowed anyway) and the pattern beside a date-time format. */
function cleanSchemas(node: Json): void {
  if (Array.isArray(node)) node.forEach(cleanSchemas);
  else if (node !== null && typeof node === "object") {
    const ap = node.additionalProperties;
    if (ap !== null && typeof ap === "object" && !Array.isArray(ap) && Object.keys(ap).length === 0) delete node.additionalProperties;
    if (node.format === "date-time" && typeof node.pattern === "string") delete node.pattern;
    Object.values(node).forEach(cleanSchemas);
  }
}

// ---------------------------------------------------------------------------------------------
// Examples

function examplesObject(list: NamedExample[], book: ExampleBook): Json {
  return Object.fromEntries(
    list.map((e) => [
      e.key,
      typeof e.name === "string"
        ? { summary: e.summary, description: `${CONTRACT_EXAMPLE}${e.name}`, value: book(e.name) }
        : { summary: e.summary, value: e.name.value(book) },
    ]),
  );
}

function addExamples(doc: Json, book: ExampleBook): void {
  const operations = new Map<string, Json>();
  for (const item of Object.values<Json>(doc.paths)) {
    for (const operation of Object.values<Json>(item)) if (operation.operationId) operations.set(operation.operationId, operation);
  }
  for (const [operationId, spec] of Object.entries(OPERATION_EXAMPLES)) {
    const operation = operations.get(operationId);
    if (!operation) throw new Error(`no operation ${operationId} for its examples`);
    if (spec.request) {
      const media = operation.requestBody?.content?.[JSON_MEDIA];
      if (!media) throw new Error(`${operationId} has no JSON body for its examples`);
      media.examples = examplesObject(spec.request, book);
    }
    for (const [name, value] of Object.entries(spec.parameters ?? {})) {
      const parameter = (operation.parameters ?? []).find((p: Json) => p.name === name);
      if (!parameter) throw new Error(`${operationId} has no parameter ${name} for its example`);
      parameter.example = value(book);
    }
    for (const [status, list] of Object.entries(spec.responses)) {
      const media = operation.responses?.[status]?.content?.[JSON_MEDIA];
      if (!media) throw new Error(`${operationId} has no JSON answer ${status} for its examples`);
      media.examples = examplesObject(list, book);
    }
  }
  for (const [name, hook] of Object.entries(WEBHOOKS)) {
    doc.webhooks[name].post.requestBody.content[JSON_MEDIA].examples = examplesObject(hook.examples, book);
  }
}

/** Headers of some answers, by operationId and status (the route schemas describe bodies only). */
const RESPONSE_HEADERS: Record<string, Record<number, Record<string, Json>>> = {
  listUserServices: {
    200: {
      "X-Total-Count": {
        description: "Licences in the fleet (with productRefId), whatever the page",
        schema: { type: "integer", minimum: 0 },
        example: 2500,
      },
      "X-Result-Count": {
        description: "Licences in this answer (with productRefId): the page offset/limit asked for, or the whole fleet",
        schema: { type: "integer", minimum: 0 },
        example: 1000,
      },
    },
  },
};

function addResponseHeaders(doc: Json): void {
  for (const item of Object.values<Json>(doc.paths)) {
    for (const operation of Object.values<Json>(item)) {
      for (const [status, headers] of Object.entries(RESPONSE_HEADERS[operation.operationId] ?? {})) {
        const response = operation.responses?.[status];
        if (!response) throw new Error(`${operation.operationId} has no answer ${status} for its headers`);
        response.headers = { ...response.headers, ...headers };
      }
    }
  }
}
