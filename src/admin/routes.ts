import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import type { Catalogue } from "../domain/catalogue.js";
import { LicenceChangeRejected, type LicenceChangeService, type OperationKind } from "../domain/licence-changes.js";
import { AppError, Conflict, InvalidBodyField, NotFound } from "../errors.js";
import { RESEND_MAX_PER_CALL, type EventOperatorService, type EventRecord, type EventWithAttempts, type HeldKey } from "../events/operator.js";
import { rejectOtherMethods } from "../orange/error-handler.js";
import { compact, renderUserService, toLicenceChangeItem } from "../orange/mapping.js";
import { ErrorBodySchema } from "../orange/schemas.js";
import type { AdminAuthenticator } from "./auth.js";
import {
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
  catalogue: Catalogue;
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

export const adminRoutes: FastifyPluginAsyncZod<AdminRoutesOptions> = async (app, opts) => {
  if (!opts.enabled) {
    app.log.warn("ADMIN_TOKEN is not set: the admin API (/admin/v1) is disabled and answers 503");
  }

  app.addHook("onRequest", (request, _reply, done) => {
    try {
      opts.authenticate(request);
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  });

  app.post(
    "/admin/v1/licence-changes",
    {
      schema: {
        summary: "Change licences on the partner's initiative (UC5) and tell Orange",
        description:
          "All or nothing, in one transaction: end user (add only when none; modify, swap, delete), realizing " +
          "resource, login (add, modify, reset; a password is never stored nor sent) and service characteristics. " +
          "Writes one updateNotification event per fleet concerned (one for the whole request when the licences " +
          "share a fleet), delivered to Orange in the fleet's order.",
        tags: ["admin"],
        security: [{ adminBearer: [] }],
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
        const outcome = await opts.licenceChanges.applyChanges(cmd);
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
      const outcome = await opts.events.resendMatching(filter);
      return compact({ resent: outcome.resent.length, remaining: outcome.remaining, events: outcome.resent }) as never;
    },
  );

  app.get(
    "/admin/v1/events/:id",
    {
      schema: {
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
    async (request) => eventDetailOut(await opts.events.resend(request.params.id)) as never,
  );

  app.post(
    "/admin/v1/events/:id/discard",
    {
      schema: {
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
      eventDetailOut(await opts.events.discard(request.params.id, ADMIN_ACTOR, request.body.reason)) as never,
  );

  rejectOtherMethods(app, "/admin/v1/licence-changes", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/events", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/events/:id", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/events/:id/resend", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/events/:id/discard", ["POST"]);
  rejectOtherMethods(app, "/admin/v1/events/held", ["GET"]);
  rejectOtherMethods(app, "/admin/v1/events/resend", ["POST"]);
};
