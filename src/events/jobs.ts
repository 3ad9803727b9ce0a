/**
 * Background work of the asynchronous modes (contract section 5): an order or an update stored
 * as `acknowledged` is carried out by a graphile-worker job added in the transaction that stored
 * it. Commit → the request and its job both exist; rollback → neither.
 */
import type { Tx } from "../db/prisma.js";

export const PROCESS_ORDER_TASK = "process_order";
export const PROCESS_UPDATE_TASK = "process_update";

export interface ProcessOrderPayload {
  orderId: string;
}

export interface ProcessUpdatePayload {
  updateId: string;
}

/** What the worker runs for those tasks (built by src/orange/jobs.ts, which owns the wire format). */
export interface AsyncJobs {
  processOrder(orderId: string): Promise<void>;
  processUpdate(updateId: string): Promise<void>;
}

/**
 * The job key makes a second add for the same request replace the first instead of doubling it;
 * the job itself is idempotent anyway (it does nothing once the request left `acknowledged`).
 */
export async function scheduleOrderJob(tx: Tx, orderId: string): Promise<void> {
  await tx.$executeRaw`SELECT 1 FROM graphile_worker.add_job(
    ${PROCESS_ORDER_TASK}::text,
    json_build_object('orderId', ${orderId}::text),
    job_key => ${`order:${orderId}`}::text
  )`;
}

export async function scheduleUpdateJob(tx: Tx, updateId: string): Promise<void> {
  await tx.$executeRaw`SELECT 1 FROM graphile_worker.add_job(
    ${PROCESS_UPDATE_TASK}::text,
    json_build_object('updateId', ${updateId}::text),
    job_key => ${`update:${updateId}`}::text
  )`;
}
