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

export type RequestKind = "order" | "update";

const REQUEST_JOBS: Record<RequestKind, { task: string; payloadKey: string }> = {
  order: { task: PROCESS_ORDER_TASK, payloadKey: "orderId" },
  update: { task: PROCESS_UPDATE_TASK, payloadKey: "updateId" },
};

/** `order:<id>` / `update:<id>`: one job per request. */
export function requestJobKey(kind: RequestKind, id: string): string {
  return `${kind}:${id}`;
}

/**
 * The add_job of a request's job, as a query for a pg connection (the worker's sweep) or a Prisma
 * transaction (scheduleRequestJob). The job key makes a second add for the same request replace
 * the first instead of doubling it; the job itself is idempotent anyway (it does nothing once the
 * request left `acknowledged`).
 */
export function requestJobQuery(kind: RequestKind, id: string): { text: string; values: string[] } {
  const { task, payloadKey } = REQUEST_JOBS[kind];
  return {
    text: "SELECT 1 FROM graphile_worker.add_job($1::text, json_build_object($2::text, $3::text), job_key => $4::text)",
    values: [task, payloadKey, id, requestJobKey(kind, id)],
  };
}

/** Adds the request's job in the transaction that stores it acknowledged. */
export async function scheduleRequestJob(tx: Tx, kind: RequestKind, id: string): Promise<void> {
  const { text, values } = requestJobQuery(kind, id);
  await tx.$executeRawUnsafe(text, ...values);
}
