/**
 * The job queue (graphile-worker's tables), as the domain's JobQueue port and for the delivery
 * task's own scheduling: every add_job of the program goes through `addJob`.
 */
import { sql, type Queryable } from "../db/sql.js";
import type { Job, JobQueue } from "../domain/ports.js";

export interface QueuedJob extends Job {
  /** Not before (default: now, or now + delayMs, in the database's clock). */
  runAt?: Date;
  delayMs?: number;
  /**
   * What a job already waiting under the key keeps: `replace` (default) takes the new run time,
   * `preserve_run_at` keeps the waiting one's.
   */
  keyMode?: "replace" | "preserve_run_at";
}

export async function addJob(q: Queryable, job: QueuedJob): Promise<void> {
  await q.query(sql`
    SELECT 1 FROM graphile_worker.add_job(
      ${job.task}::text,
      ${JSON.stringify(job.payload)}::json,
      run_at => coalesce(${job.runAt ?? null}::timestamptz, now() + ${job.delayMs ?? 0}::bigint * interval '1 millisecond'),
      job_key => ${job.key ?? null}::text,
      job_key_mode => ${job.keyMode ?? "replace"}::text
    )`);
}

export const jobQueue: JobQueue = {
  add: (q, job) => addJob(q, job),
  async withoutLiveJob(q, keys, heldLongerThanMs) {
    if (keys.length === 0) return [];
    const rows = await q.query<{ key: string }>(sql`
      SELECT k.key FROM unnest(${keys}::text[]) AS k(key)
       WHERE NOT EXISTS (
         SELECT 1 FROM graphile_worker.jobs j
          WHERE j.key = k.key AND j.attempts < j.max_attempts
            AND (${heldLongerThanMs ?? null}::bigint IS NULL OR j.locked_at IS NULL
                 OR j.locked_at > now() - ${heldLongerThanMs ?? null}::bigint * interval '1 millisecond'))`);
    return rows.map((r) => r.key);
  },
};
