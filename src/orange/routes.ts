import { Readable } from "node:stream";
import { finished } from "node:stream/promises";
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from "fastify";
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import type { AnswerMode } from "../config.js";
import type { Catalogue } from "../domain/catalogue.js";
import type { FleetListing, FleetPage, LicenceQueries, LicenceRecord } from "../domain/licences.js";
import type { RequestLifecycle } from "../domain/lifecycle.js";
import type { PlaceOrderCommand } from "../domain/orders.js";
import type { UpdateLicencesCommand } from "../domain/updates.js";
import { InvalidBodyField, InvalidQuery, NotAcceptable, NotFound, ResponseSchemaViolation } from "../errors.js";
import { bindLogIds, traceOf } from "../request-context.js";
import type { Authenticator } from "./auth.js";
import { rejectOtherMethods } from "./error-handler.js";
import { acceptsJson } from "./ping.js";
import type { Codecs } from "./codecs.js";
import { renderUserService } from "./mapping.js";
import {
  ErrorBodySchema,
  FLEET_PAGE_MAX_LIMIT,
  IdempotencyHeadersSchema,
  MAX_IDS_PER_QUERY,
  PingResponseSchema,
  ProductOrderRequestSchema,
  ProductOrderResponseSchema,
  UserServiceListSchema,
  UserServiceParamsSchema,
  UserServiceQuerySchema,
  UserServiceSchema,
  UserServiceUpdateRequestSchema,
  UserServiceUpdateResponseSchema,
} from "./schemas.js";

/**
 * The endpoints Orange calls (contract section 1). Handlers stay thin: validate (schemas), decode
 * into a domain command (./codecs.ts), call one use case, send what it answers (already on the
 * wire: the lifecycle renders it through the same codec).
 */

export interface OrangeRoutesOptions {
  orders: RequestLifecycle<PlaceOrderCommand>;
  updates: RequestLifecycle<UpdateLicencesCommand>;
  licences: LicenceQueries;
  codecs: Codecs;
  catalogue: Catalogue;
  orderMaxQuantity: number;
  authenticate: Authenticator;
  pingOpen: boolean;
  /** Contract section 5: sync answers the final state; async answers `acknowledged` and sends an event later. */
  orderingMode: AnswerMode;
  updateMode: AnswerMode;
  /** RESPONSE_VALIDATION: a streamed fleet listing checks each licence against UserServiceSchema. */
  responseValidation?: boolean;
}

const errors = {
  400: ErrorBodySchema.describe("invalid request (codes 20-28)"),
  401: ErrorBodySchema.describe("missing or invalid credentials (codes 40-42)"),
  403: ErrorBodySchema.describe("source address not allowed (code 50)"),
  503: ErrorBodySchema.describe("store unavailable, retry later (code 5)"),
};

export const orangeRoutes: FastifyPluginAsyncZod<OrangeRoutesOptions> = async (app, opts) => {
  // A callback hook, not an async one: it runs on every call, /ping included, and a promise per
  // request is measurable there.
  app.addHook("onRequest", (request, _reply, done) => {
    try {
      // An open /ping skips authentication only: content negotiation applies to every route.
      if (!(request.routeOptions.config.public === true && opts.pingOpen)) opts.authenticate(request);
      if (!acceptsJson(request.headers.accept)) {
        throw new NotAcceptable(`this API answers application/json only (Accept: ${request.headers.accept})`);
      }
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  });

  app.get(
    "/ping",
    {
      config: { public: true },
      logLevel: "warn",
      schema: {
        operationId: "ping",
        summary: "Availability check",
        description: "Cheap: no database round trip.",
        tags: ["availability"],
        response: {
          200: PingResponseSchema,
          401: ErrorBodySchema.describe("missing or invalid credentials, when PING_REQUIRES_AUTH=true (codes 40-41)"),
        },
      },
    },
    async () => ({ status: "ok" as const }),
  );
  rejectOtherMethods(app, "/ping", ["GET"]);

  app.post(
    "/productordering/v2/productOrder",
    {
      schema: {
        operationId: "createProductOrder",
        summary: "Create a customer (UC1), a fleet with N licences (UC2) or add N licences to a fleet (UC3)",
        description:
          "Idempotent on Orange's order reference (externalReference of type orange) or the Idempotency-Key header: " +
          "a retry answers the stored result and creates nothing; the same reference with another body answers 409.",
        tags: ["productOrdering"],
        headers: IdempotencyHeadersSchema,
        body: ProductOrderRequestSchema,
        response: {
          201: ProductOrderResponseSchema.describe(
            "the order, completed or failed (with the reason in note.text); in asynchronous mode acknowledged " +
              "with its id, the final order then comes as a completedStateNotification or failedStateNotification event",
          ),
          ...errors,
          409: ErrorBodySchema.describe("order reference already used with another body (code 63)"),
        },
      },
    },
    async (request, reply) => {
      const cmd = { ...opts.codecs.order.fromWire(request.body, headerValue(request.headers["idempotency-key"])), trace: traceOf(request) };
      bindLogIds(request, { orderRef: cmd.idempotencyKey, fleetId: cmd.item?.fleetId });
      if (cmd.item && cmd.item.quantity > opts.orderMaxQuantity) {
        throw new InvalidBodyField(
          `orderItem[0].productRef.userServiceQuantity must be <= ${opts.orderMaxQuantity} (got ${cmd.item.quantity})`,
        );
      }
      const result = await opts.orders.receive(cmd, opts.orderingMode);
      const answer = result.response as { orderItem?: { productRef?: { id?: string } }[] };
      bindLogIds(request, { orderId: result.requestId, fleetId: answer.orderItem?.[0]?.productRef?.id });
      return reply.code(201).header("idempotent-replayed", String(result.replayed)).send(result.response as never);
    },
  );
  rejectOtherMethods(app, "/productordering/v2/productOrder", ["POST"]);

  // Each licence of a fleet listing is checked here, as the serializer checks every other answer.
  const renderListed = opts.responseValidation
    ? (l: LicenceRecord, log: FastifyBaseLogger) => {
        const out = renderUserService(l, opts.catalogue);
        const result = UserServiceSchema.safeParse(out);
        if (!result.success) {
          log.error({ licenceId: l.id, issues: result.error.issues }, "response breaks its schema");
          throw new ResponseSchemaViolation(JSON.stringify(result.error.issues));
        }
        return out;
      }
    : (l: LicenceRecord) => renderUserService(l, opts.catalogue);

  /**
   * A fleet listing from one consistent read (LicenceQueries.readFleet). Its bytes are those of
   * the whole array rendered with JSON.stringify; a page read at once goes as one string, a
   * larger one is streamed a piece at a time as the client takes them.
   */
  async function listFleet(request: FastifyRequest, reply: FastifyReply, fleetId: string, page: FleetPage) {
    const render = (records: LicenceRecord[]) => renderPieces(records, (l) => renderListed(l, request.log));
    let started = false;
    const found = await opts.licences
      .readFleet(fleetId, page, async (listing) => {
        // The first chunk is read and rendered before anything is sent: up to there, a failure
        // (database unreachable: 503) still gets its own status and Orange's error body.
        const first = await listing.chunks.next();
        const whole = first.done || first.value.length >= listing.count;
        // A page read at once is rendered as before streaming (one JSON.stringify, one string).
        const text = whole ? JSON.stringify(first.done ? [] : first.value.map((l) => renderListed(l, request.log))) : undefined;
        const pieces = whole ? [] : render(first.value!);
        void reply
          .header("x-total-count", String(listing.total))
          .header("x-result-count", String(listing.count))
          .type("application/json; charset=utf-8");
        if (text !== undefined) {
          await listing.chunks.return();
          reply.send(text);
          return;
        }
        // At most 4 pieces wait in the stream: the rest stays in the database until the client reads.
        const body = Readable.from(jsonArray(pieces, listing.chunks, render), { objectMode: true, highWaterMark: 4 });
        started = true;
        reply.send(body);
        // The transaction (and its connection) lasts until the body has been handed to the
        // socket, or destroyed (by Fastify when the client goes away, which stops the chunks).
        // A failure after the first byte cuts the answer short; Fastify logs it.
        await finished(body).catch(() => undefined);
      })
      .catch((err: unknown) => {
        // Once the answer has started it can only be cut short (the end of the transaction
        // failed: its connection lost, or past DATABASE_TRANSACTION_TIMEOUT_MS): no second answer.
        if (!started) throw err;
        request.log.error({ err }, "fleet listing failed after its answer started");
        return { value: undefined };
      });
    if (found === null) throw new NotFound(`fleet (productRefId) ${JSON.stringify(fleetId)} does not exist`);
    return reply;
  }

  app.get(
    "/userservice/v2/userService",
    {
      schema: {
        operationId: "listUserServices",
        summary: "Licences of a fleet (productRefId) or licences by ids (id=a,b,c)",
        description:
          "By fleet: the licences in creation order, the whole fleet unless offset/limit ask for a page " +
          `(limit at most ${FLEET_PAGE_MAX_LIMIT}), from one consistent read of the fleet and streamed as the client ` +
          "reads it. X-Total-Count: licences in the fleet; X-Result-Count: licences in this answer.",
        tags: ["userService"],
        querystring: UserServiceQuerySchema,
        response: {
          200: UserServiceListSchema,
          ...errors,
          404: ErrorBodySchema.describe("unknown fleet, or none of the ids exists (code 60)"),
        },
      },
    },
    async (request, reply) => {
      const { productRefId, id, offset, limit } = request.query;
      bindLogIds(request, { fleetId: productRefId });
      if ((productRefId === undefined) === (id === undefined)) {
        throw new InvalidQuery("exactly one of productRefId (a fleet id) or id (comma-separated licence ids) is required");
      }
      if (productRefId !== undefined) return listFleet(request, reply, productRefId, { offset: offset ?? 0, limit });
      if (offset !== undefined || limit !== undefined) {
        throw new InvalidQuery("offset and limit page a fleet listing (productRefId); they do not apply to id");
      }
      const ids = [...new Set(id!.split(",").map((s) => s.trim()).filter((s) => s.length > 0))];
      if (ids.length === 0) throw new InvalidQuery("id must list at least one licence id");
      if (ids.length > MAX_IDS_PER_QUERY) {
        throw new InvalidQuery(`id must list at most ${MAX_IDS_PER_QUERY} licence ids (got ${ids.length})`);
      }
      const list = await opts.licences.listByIds(ids);
      if (list.length === 0) throw new NotFound(`no licence with id ${ids.join(", ")}`);
      return list.map((l) => renderUserService(l, opts.catalogue));
    },
  );
  rejectOtherMethods(app, "/userservice/v2/userService", ["GET"]);

  app.get(
    "/userservice/v2/userService/:id",
    {
      schema: {
        operationId: "getUserService",
        summary: "One licence",
        tags: ["userService"],
        params: UserServiceParamsSchema,
        response: { 200: UserServiceSchema, ...errors, 404: ErrorBodySchema.describe("unknown licence (code 60)") },
      },
    },
    async (request) => {
      bindLogIds(request, { licenceId: request.params.id });
      const licence = await opts.licences.getById(request.params.id);
      if (!licence) throw new NotFound(`licence ${JSON.stringify(request.params.id)} does not exist`);
      return renderUserService(licence, opts.catalogue);
    },
  );
  rejectOtherMethods(app, "/userservice/v2/userService/:id", ["GET"]);

  app.post(
    "/userservice/v2/userService/update",
    {
      schema: {
        operationId: "updateUserServices",
        summary: "Suspend, reactivate, delete licences or move them to another offer",
        description:
          "All or nothing: one licence that cannot change fails the whole list (state failed, reason in note.text) " +
          "and nothing changes. Idempotent on the Orange externalReference or the Idempotency-Key header.",
        tags: ["userService"],
        headers: IdempotencyHeadersSchema,
        body: UserServiceUpdateRequestSchema,
        response: {
          200: UserServiceUpdateResponseSchema.describe(
            "completed or failed with the licences after the change; in asynchronous mode acknowledged, the result " +
              "then comes as an updateNotification event",
          ),
          ...errors,
          409: ErrorBodySchema.describe("update reference already used with another body (code 63)"),
        },
      },
    },
    async (request, reply) => {
      const cmd = { ...opts.codecs.update.fromWire(request.body, headerValue(request.headers["idempotency-key"])), trace: traceOf(request) };
      bindLogIds(request, { updateRef: cmd.idempotencyKey });
      const result = await opts.updates.receive(cmd, opts.updateMode);
      bindLogIds(request, { updateId: result.requestId });
      return reply.code(200).header("idempotent-replayed", String(result.replayed)).send(result.response as never);
    },
  );
  rejectOtherMethods(app, "/userservice/v2/userService/update", ["POST"]);
};

/**
 * Licences per piece of a streamed answer: one JSON.stringify and one write each, about 70 kB,
 * under the ~128 kB above which V8 allocates a string in its large-object space (freed only by a
 * full collection).
 */
const PIECE_LICENCES = 250;

/**
 * The bytes JSON.stringify gives for the whole array, as pieces: those of `first` (already
 * rendered, not empty), then those of each chunk of `rest`, rendered when the stream asks for more.
 */
async function* jsonArray(
  first: string[],
  rest: FleetListing["chunks"],
  render: (records: LicenceRecord[]) => string[],
): AsyncGenerator<string> {
  try {
    yield* first;
    for (let next = await rest.next(); !next.done; next = await rest.next()) {
      const pieces = render(next.value);
      if (pieces.length === 0) continue;
      pieces[0] = `,${pieces[0]!.slice(1)}`;
      yield* pieces;
    }
  } finally {
    // Ends the chunks when the body is destroyed before the last one.
    await rest.return();
  }
  yield "]";
}

/**
 * A chunk of licences as pieces of the JSON array's text without its closing bracket: the first
 * piece starts with "[" (jsonArray turns it into the "," of a later chunk), the others with ",".
 */
function renderPieces(records: LicenceRecord[], render: (l: LicenceRecord) => unknown): string[] {
  const pieces: string[] = [];
  for (let i = 0; i < records.length; i += PIECE_LICENCES) {
    const text = JSON.stringify(records.slice(i, i + PIECE_LICENCES).map(render));
    pieces.push(i === 0 ? text.slice(0, -1) : `,${text.slice(1, -1)}`);
  }
  return pieces;
}

function headerValue(value: string | string[] | undefined): string | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  return v === undefined || v.trim() === "" ? undefined : v.trim();
}

declare module "fastify" {
  interface FastifyContextConfig {
    /** Route reachable without credentials when PING_REQUIRES_AUTH is off. */
    public?: boolean;
  }
}
