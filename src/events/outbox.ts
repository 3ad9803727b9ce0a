/**
 * The transactional outbox: an event to Orange is written in the transaction of the change it
 * reports, together with the job that will deliver it. Commit → both exist; rollback → neither.
 *
 * One graphile-worker job per ordering key (`deliver:<key>`), not one per event: graphile's named
 * queues do not keep order across retries (a failed job gets a later run_at and the next job of
 * the queue overtakes it), so the job only says "this key has work" and the delivery task
 * (delivery.ts) reads the key's pending events in seq order.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { prepared, sql, type Sql, type Tx } from "../db/sql.js";
import type { Announcement, Outbox } from "../domain/ports.js";
import type { Clock } from "../lib/clock.js";
import type { IdGenerator } from "../lib/ids.js";
import type { OrangeEvent, OrangeEventApi } from "./orange-client.js";

export const DELIVER_TASK = "deliver_events";

/** Advisory-lock namespaces (two-int form, separate from the single-bigint keys of migrations). */
export const ENQUEUE_LOCK_NAMESPACE = 0x4f42_0001;
export const DELIVERY_LOCK_NAMESPACE = 0x4f42_0002;

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

/**
 * Set by the worker around a run of another task (worker.ts): what that run's transactions
 * committed for delivery, by ordering key (filled in once the transaction has committed).
 */
export interface RunDeliveries {
  /** The key's delivery job; null: none was added, the run delivers the key itself (`inline`). */
  keys: Map<string, string | null>;
  /**
   * The run delivers its events itself, without a job (an inline run, worker.ts): its
   * transactions add none. If the process stops first, the worker's sweep gives the key a job.
   */
  inline: boolean;
  /**
   * An inline run's first event of each key, its first attempt already started by the
   * transaction that wrote it (filled in once that transaction has committed): the run sends it
   * without reading it back (delivery.ts, CLAIMED_SQL).
   */
  claims?: Map<string, ClaimedEvent>;
  /** The worker pool id an inline run's attempts are written with. */
  workerId?: string;
}

/**
 * An event whose first attempt the transaction that wrote it started (an open attempt row,
 * numbered 1), as that transaction wrote it: sent as is.
 */
export interface ClaimedEvent {
  id: string;
  api: OrangeEventApi;
  type: string;
  /** The body as written to its json column, byte for byte. */
  json: string;
  /** The run's transactions wrote more events of its key after it. */
  more: boolean;
}

export const committedDeliveryJobs = new AsyncLocalStorage<RunDeliveries>();

/** The ordering keys each transaction in progress has scheduled (dropped with the transaction). */
const scheduledKeys = new WeakMap<Tx, Set<string>>();

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
  // An update none of whose licences exists has no fleet: it is ordered on its own.
  const orderingKey = event.fleetId ?? event.orderId ?? event.updateId;
  if (orderingKey === undefined) throw new Error("an outbox event needs a fleetId, an orderId or an updateId (its ordering key)");
  const id = ids.next("ev");
  const body: OrangeEvent = { id, type: event.type, time: clock.now().toISOString(), resource: event.resource };
  const json = JSON.stringify(body);

  // The key needs scheduling once per transaction: after this transaction's first event of the
  // key, a job of the key exists that no worker can claim before the commit (the row this
  // transaction inserted, or the one it locked), and it reads every event of the key then.
  let scheduled = scheduledKeys.get(tx);
  if (!scheduled) scheduledKeys.set(tx, (scheduled = new Set()));
  const run = committedDeliveryJobs.getStore();
  const schedule = !scheduled.has(orderingKey) && run?.inline !== true;

  // One statement (one round trip instead of three): the key lock, then the row, whose seq (nextval) is drawn only once the lock is
  // held (the INSERT reads FROM the lock), then the job, added once the row is written.
  // A job of the key waiting to run (not claimed, no failed run) already covers this event: it is
  // locked FOR UPDATE until the commit (graphile's claim skips locked rows, so it cannot run before
  // this event is visible), and add_job, the costliest part of the statement (a PL/pgSQL function
  // of five statements and a NOTIFY), is skipped. Its run time stays as it is, as preserve_run_at
  // keeps it (a job in graphile's own backoff after a failed run is left to add_job, which resets it).
  // Otherwise add_job, with preserve_run_at: when the key's job is waiting for a retry of an
  // earlier event, the new event waits behind it instead of pulling the job forward. When the
  // key's job is running, graphile creates a second one; delivery.ts makes sure the two never
  // deliver at once.
  // add_job is called a second time when the first call returned no job: a worker claimed the
  // key's job between add_job's "clear the key of a running job" and its upsert, whose
  // ON CONFLICT then skips the (now running) job and inserts nothing; that run may already have
  // read the key's events, so without a new job this event would wait for the sweep. The second
  // call finds the job running and creates a new one. (A claim in progress when `waiting` reads
  // the row makes it wait, then see the row claimed: add_job.)
  // Prepared once per connection: parsing and planning this statement anew cost about as much as
  // running it (a backlog is written one event per statement).
  const statement = () =>
    prepared(sql`
    WITH ${writeEvent(id, event, orderingKey, json)}, waiting AS MATERIALIZED (
      SELECT j.id FROM graphile_worker._private_jobs j
       WHERE ${schedule}::boolean AND j.key = ${jobKeyOf(orderingKey)}::text
         AND j.locked_at IS NULL AND j.attempts = 0
         FOR UPDATE OF j
    )
    SELECT CASE WHEN ${schedule}::boolean THEN coalesce(
      (SELECT id FROM waiting),
      (graphile_worker.add_job(
        ${DELIVER_TASK}::text,
        json_build_object('orderingKey', inserted.ordering_key),
        job_key => ${jobKeyOf(orderingKey)}::text,
        job_key_mode => 'preserve_run_at'
      )).id,
      (graphile_worker.add_job(
        ${DELIVER_TASK}::text,
        json_build_object('orderingKey', inserted.ordering_key),
        job_key => ${jobKeyOf(orderingKey)}::text,
        job_key_mode => 'preserve_run_at'
      )).id
    ) END AS job_id FROM inserted`);
  if (run?.inline) {
    // A run that delivers its own events needs no job, hence nothing of the answer: the statement
    // goes out without being waited for (answered with the transaction's next statement or its
    // COMMIT, whose failure it fails).
    // The run's first event of the key also gets its first attempt started here, in this
    // transaction (the statement the delivery would otherwise begin with: its commit, its reading
    // back of the event and its row lock are saved). Whether it is still the key's first pending
    // event once committed, the delivery checks under the key's lock before sending it.
    const claim = run.claims !== undefined && !scheduled.has(orderingKey) && !run.claims.has(orderingKey);
    scheduled.add(orderingKey);
    await tx.executeLater(claim ? claimedEventStatement(id, event, orderingKey, json, run.workerId) : statement());
    tx.afterCommit(() => {
      run.keys.set(orderingKey, null);
      const claimed = run.claims?.get(orderingKey);
      if (claim && claimed === undefined) run.claims!.set(orderingKey, { id, api: event.api, type: event.type, json, more: false });
      else if (claimed !== undefined && claimed.id !== id) claimed.more = true;
    });
    return { id, orderingKey, body };
  }
  scheduled.add(orderingKey);
  if (!run) {
    // No run waits to deliver the key at once, so nothing of the answer (the job's id) is needed:
    // the statement goes out without being waited for, as an inline run's does. A transaction that
    // writes many events sends them in one stream instead of one round trip each; its COMMIT's
    // answer comes after theirs, and any failure among them fails it.
    await tx.executeLater(statement());
    return { id, orderingKey, body };
  }
  const written = await tx.query<{ job_id: string | number | null }>(statement());
  if (written.length !== 1) throw new Error(`outbox event ${id} was not written (${written.length} rows)`);
  const jobId = written[0]!.job_id;
  if (jobId !== null) tx.afterCommit(() => run.keys.set(orderingKey, String(jobId)));
  return { id, orderingKey, body };
}

/**
 * An inline run's first event of its key: the key lock and the row (as `enqueueEvent`'s, without
 * a job), and its first attempt started, numbered 1 (a new event has no attempt yet).
 */
function claimedEventStatement(id: string, event: NewEvent, orderingKey: string, json: string, workerId: string | undefined) {
  return prepared(sql`
    WITH ${writeEvent(id, event, orderingKey, json)}
    INSERT INTO event_delivery_attempt (event_id, attempt, worker_id, started_at)
    SELECT id, 1, ${workerId ?? null}::text, clock_timestamp() FROM inserted`);
}

/**
 * What every statement that writes an event begins with: the key's lock, then the row, whose seq
 * (nextval) is drawn only once the lock is held (the INSERT reads FROM the lock). The CTEs
 * `locked` and `inserted (id, ordering_key)`.
 */
function writeEvent(id: string, event: NewEvent, orderingKey: string, json: string): Sql {
  return sql`locked AS (
      SELECT 1 AS ok FROM pg_advisory_xact_lock(${ENQUEUE_LOCK_NAMESPACE}::int, hashtext(${orderingKey}::text))
    ), inserted AS (
      INSERT INTO outbox_event (id, api, type, ordering_key, fleet_id, order_id, update_id, body)
      SELECT ${id}::text, ${event.api}::text, ${event.type}::text, ${orderingKey}::text, ${event.fleetId ?? null}::text,
             ${event.orderId ?? null}::text, ${event.updateId ?? null}::text, ${json}::json
        FROM locked
      RETURNING id, ordering_key
    )`;
}

/** What each announcement of the domain is on Orange's side: which API, which event type. */
export function toEvent(a: Announcement): NewEvent {
  switch (a.about) {
    case "order":
      return {
        api: "productordering",
        type: a.state === "completed" ? "completedStateNotification" : "failedStateNotification",
        resource: a.resource,
        fleetId: a.fleetId,
        orderId: a.orderId,
      };
    case "update":
      return { api: "userservice", type: "updateNotification", resource: a.resource, fleetId: a.fleetId, updateId: a.updateId };
    case "licence-change":
      return { api: "userservice", type: "updateNotification", resource: a.resource, fleetId: a.fleetId };
  }
}

/** The domain's Outbox port: an announcement becomes an Orange event in the caller's transaction. */
export function createOutbox(deps: { clock: Clock; ids: IdGenerator }): Outbox {
  return {
    async announce(tx, announcement) {
      const { id } = await enqueueEvent(tx, toEvent(announcement), deps.clock, deps.ids);
      return { id };
    },
  };
}
