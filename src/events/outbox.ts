/**
 * The transactional outbox: an event to Orange is written in the transaction of the change it
 * reports, together with the job that will deliver it. Commit → both exist; rollback → neither.
 *
 * One graphile-worker job per ordering key (`deliver:<key>`), not one per event: graphile's named
 * queues do not keep order across retries (a failed job gets a later run_at and the next job of
 * the queue overtakes it), so the job only says "this key has work" and the delivery task
 * (delivery.ts) reads the key's pending events in seq order.
 */
import type { Tx } from "../db/prisma.js";
import type { Prisma } from "../generated/prisma/client.js";
import type { Clock } from "../domain/clock.js";
import type { IdGenerator } from "../domain/ids.js";
import type { OrangeEvent, OrangeEventApi } from "./orange-client.js";

export const DELIVER_TASK = "deliver_events";

/** Advisory-lock namespaces (two-int form, separate from the single-bigint keys of migrations). */
export const ENQUEUE_LOCK_NAMESPACE = 0x4f42_0001;
export const DELIVERY_LOCK_NAMESPACE = 0x4f42_0002;

export interface DeliverEventsPayload {
  orderingKey: string;
}

export interface NewEvent {
  api: OrangeEventApi;
  /** completedStateNotification | failedStateNotification | updateNotification */
  type: string;
  /** Already in Orange's wire format (JSON-serialisable). */
  resource: unknown;
  fleetId?: string;
  orderId?: string;
  updateId?: string;
}

export interface EnqueuedEvent {
  id: string;
  orderingKey: string;
  body: OrangeEvent;
}

export function jobKeyOf(orderingKey: string): string {
  return `deliver:${orderingKey}`;
}

/**
 * Writes the event and schedules its delivery inside the caller's transaction `tx`.
 *
 * Per-key order = seq order = commit order: a transaction-scoped advisory lock on the ordering
 * key, taken before the row gets its seq, makes a second transaction of the same fleet wait
 * until the first commits or rolls back, so the worker never sees seq 11 committed while seq 10
 * is still on its way.
 */
export async function enqueueEvent(tx: Tx, event: NewEvent, clock: Clock, ids: IdGenerator): Promise<EnqueuedEvent> {
  const orderingKey = event.fleetId ?? event.orderId;
  if (orderingKey === undefined) throw new Error("an outbox event needs a fleetId or an orderId (its ordering key)");
  const id = ids.next("ev");
  const body: OrangeEvent = { id, type: event.type, time: clock.now().toISOString(), resource: event.resource };

  await tx.$executeRaw`SELECT 1 FROM pg_advisory_xact_lock(${ENQUEUE_LOCK_NAMESPACE}::int, hashtext(${orderingKey}))`;
  await tx.outboxEvent.create({
    data: {
      id,
      api: event.api,
      type: event.type,
      orderingKey,
      fleetId: event.fleetId ?? null,
      orderId: event.orderId ?? null,
      updateId: event.updateId ?? null,
      body: body as unknown as Prisma.InputJsonValue,
    },
    select: { id: true },
  });
  // preserve_run_at: when the key's job is waiting for a retry of an earlier event, the new
  // event waits behind it instead of pulling the job forward. When the key's job is running,
  // graphile creates a second one; delivery.ts makes sure the two never deliver at once.
  await tx.$executeRaw`SELECT 1 FROM graphile_worker.add_job(
    ${DELIVER_TASK}::text,
    json_build_object('orderingKey', ${orderingKey}::text),
    job_key => ${jobKeyOf(orderingKey)}::text,
    job_key_mode => 'preserve_run_at'
  )`;
  return { id, orderingKey, body };
}
