/**
 * The worker's side of the request lifecycle (asynchronous mode): the task that carries out an
 * acknowledged request, and the sweep that makes sure every acknowledged request still has a job
 * that can run, so that none stays `acknowledged` forever.
 */
import type { Queryable } from "../db/sql.js";
import * as commands from "./commands.dal.js";
import { PROVISION_TASK, provisionJob, REQUEST_JOBS, requestJob, technicalFailureReason, type RequestLifecycle } from "./lifecycle.js";
import type { JobQueue, TaskHandler } from "./ports.js";
import * as requests from "./requests.dal.js";

/** Why the sweep counts a failed run: no run of the request can still happen. */
export const LOST_RUN = "its run was lost: its job was gone or out of attempts, or its process stopped before carrying it out";

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

/** The tasks `process_order`, `process_update` and `provision_command`, by name. */
export function createRequestTasks(deps: RequestJobsDeps): Record<string, TaskHandler> {
  const tasks: Record<string, TaskHandler> = {};
  const byKind = new Map(deps.lifecycles.map((l) => [l.kind as string, l]));
  tasks[PROVISION_TASK] = async (payload, context) => {
    const { commandId, kind } = (payload ?? {}) as { commandId?: unknown; kind?: unknown };
    const lifecycle = typeof kind === "string" ? byKind.get(kind) : undefined;
    if (typeof commandId !== "string" || !lifecycle) {
      deps.log?.warn({ task: PROVISION_TASK, payload }, "job without a command id or kind; dropped");
      return;
    }
    try {
      await lifecycle.runCommand(commandId, context.signal);
    } catch (error) {
      const transient = deps.isTransient(error);
      const again = await lifecycle.failedCommandRun(commandId, error, transient);
      deps.log?.[again ? "warn" : "error"](
        { commandId, err: error instanceof Error ? error.message : String(error), transient },
        again ? "running the command failed; it will be tried again" : "running the command kept failing; it was parked",
      );
      if (again) throw error;
    }
  };
  for (const lifecycle of deps.lifecycles) {
    const { task, payloadKey } = REQUEST_JOBS[lifecycle.kind];
    tasks[task] = async (payload, context) => {
      const id = (payload as Record<string, unknown> | null)?.[payloadKey];
      if (typeof id !== "string" || id.length === 0) {
        deps.log?.warn({ task, payload }, `job without ${payloadKey}; dropped`);
        return;
      }
      try {
        await lifecycle.process(id, context?.runAgain);
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
export function createRequestSweep(
  deps: RequestJobsDeps & {
    db: Queryable;
    jobs: JobQueue;
    maxAttempts: number;
    commandMaxAgeMs?: number;
    /** A `sending` command's lease (lifecycle.commandLeaseMs); with commandMaxAgeMs. */
    commandLeaseMs?: number;
    /**
     * Requests acknowledged more recently than this are left alone: one carried out inline (no
     * job, see InlineRunner) is still under way in its process. Default 0.
     */
    graceMs?: number;
  },
) {
  const byKind = new Map(deps.lifecycles.map((l) => [l.kind as string, l]));

  /**
   * Commands that should be moving (queued, retrying and due, sending past their lease) get a job
   * when theirs is gone; those past the age bound (a 202 whose result never came) are parked.
   */
  async function sweepCommands(touched: string[]): Promise<void> {
    if (deps.commandMaxAgeMs === undefined || deps.commandLeaseMs === undefined) return;
    const stalled = await commands.listStalled(deps.db, deps.commandMaxAgeMs, 1000);
    if (stalled.length === 0) return;
    const kinds = new Map<string, string>();
    for (const row of stalled) {
      const lifecycle = byKind.get(row.request_kind);
      if (!lifecycle) continue;
      if (row.expired && (row.state === "waiting" || row.state === "queued")) {
        if (await lifecycle.expireCommand(row.id)) {
          deps.log?.error({ commandId: row.id, state: row.state }, "command past its age bound: parked, its request failed");
          touched.push(`provision:${row.id}`);
        }
        continue;
      }
      if (row.state === "sending") {
        // Past its lease, its runner is presumed dead: its job may still look alive (graphile
        // keeps a dead worker's lock for WORKER_LEASE_MS), so another job takes over at once; the
        // command's row lock and attempt number keep a late runner from sending or settling it twice.
        await deps.jobs.add(deps.db, provisionJob(lifecycle.kind, row.id));
        deps.log?.warn({ commandId: row.id, state: row.state }, "command past its lease (its runner died?); sent again");
        touched.push(`provision:${row.id}`);
        continue;
      }
      kinds.set(provisionJob(lifecycle.kind, row.id).key!, row.request_kind);
    }
    // A job held longer than a command's lease is no runner's any more (a run lasts one call at
    // most): its worker died, say just after it took the job of a command queued or due for its
    // retry, and graphile would keep the lock for WORKER_LEASE_MS.
    for (const key of await deps.jobs.withoutLiveJob(deps.db, [...kinds.keys()], deps.commandLeaseMs)) {
      const id = key.slice("provision:".length);
      await deps.jobs.add(deps.db, provisionJob(byKind.get(kinds.get(key)!)!.kind, id));
      deps.log?.warn({ commandId: id }, "command without a live job; rescheduled");
      touched.push(key);
    }
  }

  return async function sweepRequests(): Promise<string[]> {
    const touched: string[] = [];
    await sweepCommands(touched);
    for (const lifecycle of deps.lifecycles) {
      const kind = lifecycle.kind;
      const pending = await requests.listAcknowledged(deps.db, kind, deps.graceMs ?? 0, 1000);
      if (pending.length === 0) continue;
      const byKey = new Map(pending.map((r) => [requestJob(kind, r.id).key!, r.id]));
      for (const key of await deps.jobs.withoutLiveJob(deps.db, [...byKey.keys()])) {
        const id = byKey.get(key)!;
        const attempts = await requests.recordFailedAttempt(deps.db, kind, id, LOST_RUN);
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
