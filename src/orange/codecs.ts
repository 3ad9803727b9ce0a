/**
 * One codec per Orange operation: Orange's wire into a domain command, a domain outcome into
 * Orange's wire (the sync answer, the acknowledgement, the event's resource). The routes decode
 * what Orange sends; the request lifecycle (src/domain/lifecycle.ts) reads stored requests back
 * and renders outcomes through the same codec, so the wire is known here only.
 *
 * A stored request passed the schema when it was received; it is parsed with the schema again
 * when it is read back (not cast), so a stored request that no longer fits is an error, not a
 * silent misreading.
 */
import type { Catalogue } from "../domain/catalogue.js";
import type { AppliedLicenceChange } from "../domain/licence-changes.js";
import type { OrderOutcome, PlaceOrderCommand } from "../domain/orders.js";
import type { RequestCodec } from "../domain/ports.js";
import type { UpdateLicencesCommand, UpdateOutcome } from "../domain/updates.js";
import type { JsonValue } from "../lib/json.js";
import {
  renderChangeNotification,
  renderOrder,
  renderOrderAcknowledgement,
  renderUpdate,
  renderUpdateAcknowledgement,
  toPlaceOrderCommand,
  toUpdateCommand,
  type RenderContext,
} from "./mapping.js";
import {
  ExternalReferenceFieldSchema,
  ProductOrderRequestSchema,
  UserServiceUpdateRequestSchema,
  type ProductOrderRequest,
  type UserServiceUpdateRequest,
} from "./schemas.js";

export interface OrangeCodec<W, C, O> extends RequestCodec<C, O> {
  /** What a route received (already validated by its schema) as the command. */
  fromWire(body: W, idempotencyKeyHeader: string | undefined): C;
}

/**
 * Requests known to fit their schema: the validated bodies of routes and the stored ones parsed
 * again. `failed` answers a stored request that no longer fits with what can still be read of it
 * (Orange's reference): a request that could not be carried out must still be reported.
 */
function parsedBy<W>(schema: { parse(value: unknown): W }, standIn: (externalReference: unknown) => W) {
  const known = new WeakMap<object, W>();
  return {
    remember(body: W): void {
      if (typeof body === "object" && body !== null) known.set(body, body);
    },
    parse(request: JsonValue): W {
      if (typeof request === "object" && request !== null) {
        const seen = known.get(request);
        if (seen !== undefined) return seen;
        const parsed = schema.parse(request);
        known.set(request, parsed);
        return parsed;
      }
      return schema.parse(request);
    },
    failed(request: JsonValue): W {
      try {
        return this.parse(request);
      } catch {
        const ref = typeof request === "object" && request !== null && !Array.isArray(request) ? request.externalReference : undefined;
        return standIn(ExternalReferenceFieldSchema.safeParse(ref).data);
      }
    },
  };
}

export function createOrderCodec(ctx: RenderContext): OrangeCodec<ProductOrderRequest, PlaceOrderCommand, OrderOutcome> {
  const requests = parsedBy(ProductOrderRequestSchema, (externalReference) => ({ externalReference }) as ProductOrderRequest);
  return {
    fromWire(body, header) {
      requests.remember(body);
      return toPlaceOrderCommand(body, header);
    },
    // The idempotency key played its part when the order was received.
    decode: (request) => toPlaceOrderCommand(requests.parse(request), undefined),
    answer: (request, outcome) =>
      renderOrder(outcome.state === "failed" ? requests.failed(request) : requests.parse(request), outcome, ctx) as unknown as JsonValue,
    acknowledgement: (request, id) => renderOrderAcknowledgement(requests.parse(request), id, ctx) as unknown as JsonValue,
  };
}

export function createUpdateCodec(
  ctx: RenderContext,
): OrangeCodec<UserServiceUpdateRequest, UpdateLicencesCommand, UpdateOutcome> {
  const requests = parsedBy(
    UserServiceUpdateRequestSchema,
    (externalReference) => ({ externalReference, userService: [] }) as unknown as UserServiceUpdateRequest,
  );
  return {
    fromWire(body, header) {
      requests.remember(body);
      return toUpdateCommand(body, header);
    },
    decode: (request) => toUpdateCommand(requests.parse(request), undefined),
    answer: (request, outcome) =>
      renderUpdate(outcome.state === "failed" ? requests.failed(request) : requests.parse(request), outcome, ctx) as unknown as JsonValue,
    acknowledgement: (request) => renderUpdateAcknowledgement(requests.parse(request)) as unknown as JsonValue,
  };
}

/** UC5: the changes of one fleet as the resource of their updateNotification. */
export function licenceChangeNotification(changes: AppliedLicenceChange[]): JsonValue {
  return renderChangeNotification(changes) as unknown as JsonValue;
}

export function createCodecs(deps: { catalogue: Catalogue; partnerName: string }) {
  const ctx: RenderContext = { catalogue: deps.catalogue, partnerName: deps.partnerName };
  return { order: createOrderCodec(ctx), update: createUpdateCodec(ctx) };
}

export type Codecs = ReturnType<typeof createCodecs>;
