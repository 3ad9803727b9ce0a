import type { Db } from "../db/prisma.js";
import type { Catalogue } from "../domain/catalogue.js";
import { systemClock, type Clock } from "../lib/clock.js";
import { createIdGenerator, type IdGenerator } from "../lib/ids.js";
import { createLicenceService, type UpdateWire } from "../domain/licences.js";
import { createOrderService, type OrderWire } from "../domain/orders.js";
import type { AsyncJobs } from "../events/jobs.js";
import { renderOrder, renderUpdate, toPlaceOrderCommand, toUpdateCommand, type RenderContext } from "./mapping.js";
import type { ProductOrderRequest, UserServiceUpdateRequest } from "./schemas.js";

/**
 * The worker's side of the asynchronous modes: the stored Orange request (already validated when
 * it was acknowledged, kept raw) is mapped to the same domain command as in sync mode, and the
 * outcome is rendered exactly as the sync answer, to become the event's `resource`.
 */

export function orderWire(ctx: RenderContext): OrderWire {
  return {
    // The idempotency key played its part when the order was acknowledged.
    toCommand: (request) => toPlaceOrderCommand(request as unknown as ProductOrderRequest, undefined),
    render: (request, outcome) => renderOrder(request as unknown as ProductOrderRequest, outcome, ctx),
  };
}

export function updateWire(ctx: RenderContext): UpdateWire {
  return {
    toCommand: (request) => toUpdateCommand(request as unknown as UserServiceUpdateRequest, undefined),
    render: (request, outcome) => renderUpdate(request as unknown as UserServiceUpdateRequest, outcome, ctx),
  };
}

export interface AsyncJobsDeps {
  db: Db;
  catalogue: Catalogue;
  partnerName: string;
  transactionTimeoutMs: number;
  clock?: Clock;
  ids?: IdGenerator;
}

/** The `process_order` / `process_update` tasks' work, for src/events/worker.ts. */
export function createAsyncJobs(deps: AsyncJobsDeps): AsyncJobs {
  const services = {
    db: deps.db,
    catalogue: deps.catalogue,
    clock: deps.clock ?? systemClock,
    ids: deps.ids ?? createIdGenerator(),
    transactionTimeoutMs: deps.transactionTimeoutMs,
  };
  const orders = createOrderService(services);
  const licences = createLicenceService(services);
  const ctx: RenderContext = { catalogue: deps.catalogue, partnerName: deps.partnerName };
  const orderAdapter = orderWire(ctx);
  const updateAdapter = updateWire(ctx);
  return {
    async processOrder(orderId) {
      await orders.processOrder(orderId, orderAdapter);
    },
    async processUpdate(updateId) {
      await licences.processUpdate(updateId, updateAdapter);
    },
  };
}
