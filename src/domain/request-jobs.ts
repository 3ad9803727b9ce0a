/**
 * The worker's side of the request lifecycle (asynchronous mode): the task that carries out an
 * acknowledged request, and the sweep that makes sure every acknowledged request still has a job
 * that can run, so that none stays `acknowledged` forever.
 */
import type { Queryable } from "../db/sql.js";
import { REQUEST_JOBS, requestJob, technicalFailureReason, type RequestLifecycle } from "./lifecycle.js";
import type { JobQueue, TaskHandler } from "./ports.js";
import * as requests from "./requests.dal.js";

export interface RequestJobsLogger {
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface RequestJobsDeps {
  lifecycles: RequestLifecycle[];
  /** Whether an error is worth another run as it is (database out of reach, conflict). */
  isTransient(error: unknown): boolean;
  log?: RequestJobsLogger;
}

/** The tasks `process_order` and `process_update`, by name. */
export function createRequestTasks(deps: RequestJobsDeps): Record<string, TaskHandler> {
  const tasks: Record<string, TaskHandler> = {};
  for (const lifecycle of deps.lifecycles) {
    const { task, payloadKey } = REQUEST_JOBS[lifecycle.kind];
    tasks[task] = async (payload) => {
      const id = (payload as Record<string, unknown> | null)?.[payloadKey];
      if (typeof id !== "string" || id.length === 0) {
        deps.log?.warn({ task, payload }, `job without ${payloadKey}; dropped`);
        return;
      }
      try {
        await lifecycle.process(id);
      } catch (error) {
        const transient = deps.isTransient(error);
        const again = await lifecycle.failedRun(id, error, transient);
        deps.log?.[again ? "warn" : "error"](
          { [payloadKey]: id, err: error instanceof Error ? error.message : String(error), transient },
          again ? "carrying out the request failed; it will be tried again" : "carrying out the request kept failing; it ended failed",
        );
        if (again) throw error;
      }
    };
  }
  return tasks;
}

/**
 * An acknowledged request whose job is gone (removed) or gave up (graphile's own attempts,
 * exhausted by days of database outage) gets its job again, counted as a failed attempt: past
 * `maxAttempts` it ends `failed` instead. The keys of the requests re-armed or given up on.
 */
export function createRequestSweep(deps: RequestJobsDeps & { db: Queryable; jobs: JobQueue; maxAttempts: number }) {
  return async function sweepRequests(): Promise<string[]> {
    const touched: string[] = [];
    for (const lifecycle of deps.lifecycles) {
      const kind = lifecycle.kind;
      const pending = await requests.listAcknowledged(deps.db, kind, 0, 1000);
      if (pending.length === 0) continue;
      const byKey = new Map(pending.map((r) => [requestJob(kind, r.id).key!, r.id]));
      for (const key of await deps.jobs.withoutLiveJob(deps.db, [...byKey.keys()])) {
        const id = byKey.get(key)!;
        const attempts = await requests.recordFailedAttempt(deps.db, kind, id, "its job was gone or out of attempts");
        if (attempts === undefined) continue; // finished meanwhile
        if (attempts >= deps.maxAttempts) {
          await lifecycle.giveUp(id, technicalFailureReason(kind, id));
          deps.log?.error({ request: key, attempts }, "acknowledged request without a live job, out of attempts; it ended failed");
        } else {
          await deps.jobs.add(deps.db, requestJob(kind, id));
          deps.log?.warn({ request: key, attempts }, "acknowledged request had no live job (gone or out of attempts); rescheduled");
        }
        touched.push(key);
      }
    }
    return touched;
  };
}
