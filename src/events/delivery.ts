/**
 * The `deliver_events` task: delivers the pending events of one ordering key (a fleet, else an
 * order), one after the other in seq order.
 *
 * - delivered → next event at once; the delivered attempts are recorded together, several in
 *   one statement (at most RECORD_MAX_EVENTS, or RECORD_MAX_DELAY_MS after the oldest answer);
 * - park (4xx other than 401/408/429) → dead with Orange's status, request id and body, and the
 *   run stops: the key is held. Its later events wait behind the dead one (they are not even
 *   read) until an operator re-sends it (it keeps its seq, so it goes first) or discards it, and
 *   that operator action schedules the key again (operator.ts);
 * - retry → next attempt after an exponential backoff with full jitter (at least Orange's
 *   Retry-After); past the attempt or age bound → dead, and the key is held as above; otherwise
 *   the key's job is scheduled at the next attempt and the run stops: later events of the key
 *   wait behind it.
 *
 * Exclusivity: graphile creates a second job for a key whose job is running (add_job on a locked
 * job key), and a job whose worker died is unlocked by the lease sweep (worker.ts) while the
 * worker might still be alive. So each run first takes a session advisory lock on the key, on
 * the very connection that then writes every state change: a run that cannot get it reschedules
 * the key shortly and leaves; a run whose connection died can no longer write anything, and its
 * lock is gone with the connection, so another worker takes over (at-least-once, same event id).
 *
 * An inline run's own event (worker.ts, outbox.ts) comes with its first attempt started by the
 * transaction that wrote it: the run takes the key's lock with CLAIMED_SQL, which reads none of
 * the key's events back and writes nothing while the event is still the key's first, and sends it.
 *
 * Crash between a POST and the statement that records it: the event is still pending, so it is
 * sent again with the same id (at-least-once, as for a crash during the POST). A run's first
 * attempt is started before its POST (an open attempt row, closed as interrupted by the next
 * run); the other attempts of an unrecorded batch leave no row, and the re-send records its own.
 */
import type { JobHelpers, Task } from "graphile-worker";
import type pg from "pg";
import { queryable, type Queryable } from "../db/sql.js";
import { retryDelayMs } from "../lib/backoff.js";
import { addJob } from "./queue.js";
import type { EventLogger } from "./http.js";
import type { DeliveryResult, OrangeEventApi, OrangeEventClient } from "./orange-client.js";
import { type ClaimedEvent, DELIVER_TASK, DELIVERY_LOCK_NAMESPACE, jobKeyOf } from "./outbox.js";

export interface RetryPolicy {
  /** Ceiling of the first backoff; doubles with each attempt. */
  baseMs: number;
  /** Cap of one backoff. */
  maxMs: number;
  /** An event still failing after this many attempts is parked as dead. */
  maxAttempts: number;
  /**
   * An event whose next attempt would come later than this after its creation (or its operator's
   * re-send, or the release of the key it waited in behind a dead event) is parked as dead.
   */
  maxAgeMs: number;
}

export interface DeliveryTaskOptions {
  /** Connections for the key lock and the state writes (the worker's pool). */
  pool: pg.Pool;
  client: Pick<OrangeEventClient, "send">;
  retry: RetryPolicy;
  /** A run stops after this long and reschedules its key at once (keep it well under the lease). */
  runBudgetMs: number;
  /** Delay before a run that found its key busy tries again. */
  busyRetryMs?: number;
  /** The graphile worker pool id, written on each attempt. */
  workerId?: () => string | undefined;
  logger?: EventLogger;
  /** Jitter source (tests). */
  random?: () => number;
  /** Told of every delivery attempt as it ends (metrics). */
  observer?: DeliveryObserver;
}

/** What the metrics count of deliveries (src/metrics.ts). */
export interface DeliveryObserver {
  /** One POST of an event to Orange (the token request included), classified, and how long it took. */
  attempt(outcome: DeliveryResult["outcome"], durationMs: number): void;
}

interface HeadRow {
  id: string;
  api: OrangeEventApi;
  /** The event as stored (a json column: the text written): sent as is, never parsed and re-serialised. */
  json: string;
  type: string;
  attempts: number;
  due: boolean;
  next_attempt_at: Date;
}

/** The key's session advisory lock, held by the run's connection. */
interface KeyLock {
  held: boolean;
}

type NoRow = { [K in keyof HeadRow]: null };

/** On every row of the heads statement: the key lock, and the dead event holding the key, if any. */
interface KeyRow {
  locked: boolean;
  held_by: string | null;
}

/** Pending events of a key read at once. */
const PREFETCH = 64;

/**
 * Delivered attempts recorded together, at most: a crash re-sends at most this many events that
 * were delivered but not yet recorded (and leaves no row of those attempts).
 */
const RECORD_MAX_EVENTS = 16;

/**
 * Delivered attempts are recorded once the oldest of them is this old when an answer comes: an
 * answer is recorded at most this long, plus one POST, after it came.
 */
const RECORD_MAX_DELAY_MS = 250;

/** A delivered attempt not yet recorded. */
interface Delivered {
  head: HeadRow;
  attempt: number;
  /** Its attempt row, when the run started one (the batch's first event). */
  attemptId: string | null;
  /** performance.now() when the POST started, and when its answer came. */
  sentAt: number;
  answeredAt: number;
  result: DeliveryResult;
}

/** "No dead event in the key": every seq is below it. */
const MAX_BIGINT = "9223372036854775807";

/**
 * A key's next pending events, the first of them claimed for an attempt if it is due, and the
 * key's first dead event (the events behind it are held). Exported for its plan's test.
 */
export const HEADS_SQL = `WITH lock AS MATERIALIZED (
   SELECT CASE WHEN $5::boolean THEN pg_try_advisory_lock($4::int, hashtext($1)) ELSE true END AS locked
 ),
 -- The key's events of one state, in seq order, are read as one range of the (ordering_key,
 -- state, seq) index, written as row comparisons that only this index can serve. Written
 -- as "ordering_key = $1 AND state = 'pending' ORDER BY seq", PostgreSQL chose the
 -- (state, seq) index whenever its statistics said few events were pending (analysed
 -- while the outbox was quiet): every run of a burst then read every pending event of
 -- every key (5,000 index entries, 2–3 ms, for the 10 of its key).
 -- The key's equality, redundant with the ranges, is there for the estimates: a range bounded
 -- by parameters is 0.5 % of the outbox in a generic plan, against one row in a custom plan
 -- that knows the key, so that with events of their real size (fewer per page, each fetch
 -- costlier) the generic plan looked four times costlier and PostgreSQL planned the statement
 -- anew at each call (0.4 ms, twice its run). With the equality both estimate the key's events.
 dead AS MATERIALIZED (
   SELECT id, seq FROM outbox_event
    WHERE (SELECT locked FROM lock)
      AND ordering_key = $1
      AND (ordering_key, state, seq) > ($1, 'dead', -1) AND (ordering_key, state) <= ($1, 'dead')
    ORDER BY ordering_key, state, seq
    LIMIT 1
 ),
 heads AS MATERIALIZED (
   SELECT id, api, body::text AS json, body->>'type' AS type, attempts, seq,
          next_attempt_at <= clock_timestamp() AS due, next_attempt_at
     FROM outbox_event
    WHERE (SELECT locked FROM lock)
      AND ordering_key = $1
      AND (ordering_key, state, seq) > ($1, 'pending', -1)
      AND (ordering_key, state, seq) < ($1, 'pending', coalesce((SELECT seq FROM dead), ${MAX_BIGINT}))
    ORDER BY ordering_key, state, seq
    LIMIT ${PREFETCH}
 ),
 first AS (SELECT id, attempts FROM heads WHERE due AND seq = (SELECT min(seq) FROM heads)),
 ${START_SQL({ id: "(SELECT id FROM first)", attempts: "(SELECT attempts FROM first)", workerId: "$2", error: "$3" })},
 -- Its commit does not wait for the disk either: a database crash may lose the attempt it
 -- started, and the event, still pending, is sent again with the same id.
 async AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS sc)
 SELECT l.locked, (SELECT id FROM dead) AS held_by, h.id, h.api, h.json, h.type, h.attempts, h.due, h.next_attempt_at,
        (SELECT id FROM att) AS attempt_id, (SELECT attempt FROM att) AS attempt, (SELECT sc FROM async) AS sc
   FROM lock l LEFT JOIN heads h ON true
  ORDER BY h.seq`;

/**
 * An inline run's claimed event (outbox.ts, `claimedEventStatement`), before it is sent: the key's
 * lock, and its open first attempt, if the event is still what it was when written (pending, no
 * attempt made) and the key's first pending event, with no dead one before it. Otherwise (an
 * earlier event of the key committed meanwhile, or another run delivered it) that attempt, never
 * made, is taken back if still open: the next read starts the right one. Read-only in the common
 * case, so its commit costs nothing: no transaction id, no row lock (the key's lock is enough:
 * every run that writes the event's state holds it).
 */
export const CLAIMED_SQL = `WITH lock AS MATERIALIZED (
   SELECT pg_try_advisory_lock($3::int, hashtext($1)) AS locked
 ),
 -- The key's first pending event and its first dead one, each one entry of the (ordering_key,
 -- state, seq) index, read as HEADS_SQL reads them. Written as "no pending or dead event of the
 -- key before this one" (NOT EXISTS), the plan was two sequential scans of the outbox: 2 to 10 ms
 -- a call under load, growing with the outbox (test/delivery-plan.test.ts).
 first AS MATERIALIZED (
   SELECT id, seq, attempts FROM outbox_event
    WHERE (SELECT locked FROM lock)
      AND (ordering_key, state, seq) > ($1, 'pending', -1) AND (ordering_key, state) <= ($1, 'pending')
    ORDER BY ordering_key, state, seq
    LIMIT 1
 ),
 dead AS MATERIALIZED (
   SELECT seq FROM outbox_event
    WHERE (SELECT locked FROM lock)
      AND (ordering_key, state, seq) > ($1, 'dead', -1) AND (ordering_key, state) <= ($1, 'dead')
    ORDER BY ordering_key, state, seq
    LIMIT 1
 ),
 mine AS MATERIALIZED (
   SELECT a.id FROM event_delivery_attempt a
    WHERE a.event_id = $2 AND a.attempt = 1 AND a.finished_at IS NULL
      AND (SELECT id FROM first) = $2 AND (SELECT attempts FROM first) = 0
      AND coalesce((SELECT seq FROM dead) > (SELECT seq FROM first), true)
 ),
 taken_back AS (
   DELETE FROM event_delivery_attempt a
    WHERE a.event_id = $2 AND a.attempt = 1 AND a.finished_at IS NULL AND NOT EXISTS (SELECT 1 FROM mine)
   RETURNING 1
 )
 -- taken_back, unreferenced, runs all the same (a data-modifying CTE always does).
 SELECT (SELECT locked FROM lock) AS locked, (SELECT id FROM mine) AS attempt_id`;

/**
 * An open attempt found by a run that holds the key: its worker stopped or died during it, or (an
 * attempt begun by the transaction that wrote an inline run's event) another run took the key
 * before that run could send it. Either way it may or may not have reached Orange.
 */
const INTERRUPTED = "interrupted: the worker stopped or died during the attempt, or never sent it";

/** The `deliver_events` task, and the delivery of an inline run's claimed event (outbox.ts). */
export type DeliverEventsTask = Task & {
  deliverClaimed(orderingKey: string, claim: ClaimedEvent, abortSignal?: AbortSignal): Promise<void>;
};

export function createDeliverEventsTask(options: DeliveryTaskOptions): DeliverEventsTask {
  const { pool, retry, logger } = options;
  const random = options.random ?? Math.random;
  const busyRetryMs = options.busyRetryMs ?? 500;

  const task: Task = async (payload: unknown, helpers: JobHelpers) => {
    const orderingKey = (payload as { orderingKey?: unknown } | null)?.orderingKey;
    if (typeof orderingKey !== "string" || orderingKey.length === 0) {
      logger?.warn({ jobId: helpers.job.id, payload }, "deliver_events job without an ordering key; dropped");
      return;
    }
    await runKey(orderingKey, helpers.abortSignal);
  };
  return Object.assign(task, {
    deliverClaimed: (orderingKey: string, claim: ClaimedEvent, abortSignal?: AbortSignal) => runKey(orderingKey, abortSignal, claim),
  });

  async function runKey(orderingKey: string, abortSignal: AbortSignal = new AbortController().signal, claim?: ClaimedEvent): Promise<void> {
    const conn = await pool.connect();
    const lock: KeyLock = { held: false };
    let broken = false;
    try {
      try {
        await deliverKey(conn, orderingKey, abortSignal, lock, claim);
      } finally {
        if (lock.held) {
          await conn.query("SELECT pg_advisory_unlock($1::int, hashtext($2))", [DELIVERY_LOCK_NAMESPACE, orderingKey]).catch(() => {
            // The lock must not outlive the run on a pooled connection: drop the connection.
            broken = true;
          });
        }
      }
    } catch (err) {
      broken = true;
      throw err;
    } finally {
      conn.release(broken);
    }
  }

  /**
   * Statements: the first read, which also takes the key lock and starts the first event's
   * attempt (for an inline run's claimed event, CLAIMED_SQL instead), then one statement per
   * batch of delivered events (up to RECORD_MAX_EVENTS; the last one releases the lock when the
   * key is drained), none per event: per event, only its POST. A
   * failure costs one more (the failed attempt and its retry or park). An event committed after
   * the run's job was claimed has its own job (add_job on a running job's key creates one), so a
   * run need not look again once its batch was not full.
   */
  async function deliverKey(conn: pg.PoolClient, orderingKey: string, abortSignal: AbortSignal, lock: KeyLock, claim?: ClaimedEvent): Promise<void> {
    const startedAt = performance.now();
    const mustStop = () => abortSignal.aborted || performance.now() - startedAt > options.runBudgetMs;
    for (;;) {
      if (mustStop()) {
        // Shutting down, or long enough: hand the rest of the key to the next free worker.
        await schedule(conn, orderingKey, { delayMs: 0 });
        return;
      }
      let batch: (HeadRow & Started)[];
      /** The batch holds every pending event of the key this run knows of. */
      let whole: boolean;
      if (claim !== undefined) {
        // An inline run's event, its first attempt started by the transaction that wrote it: sent
        // as written, once the key's lock is taken and the event found still the key's first.
        const claimed = claim;
        claim = undefined;
        const { rows } = await conn.query<{ locked: boolean; attempt_id: string | null }>({
          name: "outbox_claimed",
          text: CLAIMED_SQL,
          values: [orderingKey, claimed.id, DELIVERY_LOCK_NAMESPACE],
        });
        if (!rows[0]?.locked) {
          await schedule(conn, orderingKey, { delayMs: busyRetryMs });
          return;
        }
        lock.held = true;
        // No longer the key's first pending event: the key's events are read as any run's are.
        if (rows[0].attempt_id === null) continue;
        const head = { id: claimed.id, api: claimed.api, json: claimed.json, type: claimed.type, attempts: 0, due: true, next_attempt_at: new Date() };
        batch = [{ ...head, attempt_id: rows[0].attempt_id, attempt: 1 }];
        whole = !claimed.more;
      } else {
        // The key's next pending events, the first of them claimed for an attempt if it is due. Only
        // those before the key's first dead event, if any: the events behind it are held (one index
        // probe in the same statement, no extra round trip).
        const { rows } = await conn.query<KeyRow & (HeadRow | NoRow) & Started>({
          name: "outbox_heads",
          text: HEADS_SQL,
          values: [orderingKey, options.workerId?.() ?? null, INTERRUPTED, DELIVERY_LOCK_NAMESPACE, !lock.held],
        });
        if (!rows[0]?.locked) {
          // Another run delivers this key right now; it goes on while events are pending, and
          // this retry covers an event it may have just missed.
          await schedule(conn, orderingKey, { delayMs: busyRetryMs });
          return;
        }
        lock.held = true;
        batch = rows.filter((r): r is HeadRow & KeyRow & Started => r.id !== null);
        if (batch.length === 0) {
          // Nothing to send; when a dead event holds the key, its operator action schedules it again.
          const heldBy = rows[0]?.held_by;
          if (heldBy) logger?.debug({ orderingKey, heldBy }, "events wait behind a dead event until an operator re-sends or discards it");
          return;
        }
        whole = batch.length < PREFETCH;
      }
      const first = batch[0]!;
      if (!first.due) {
        await schedule(conn, orderingKey, { at: first.next_attempt_at });
        return;
      }
      // undefined: the first event is no longer pending as read (this statement's snapshot predates
      // the lock, so a previous run may have just settled it): read again.
      if (first.attempt_id === null || first.attempt === null) continue;
      // Each event of the batch is sent once its predecessor is delivered (a 2xx); the delivered
      // ones are recorded together, several in one statement (see `recordDelivered`), and an
      // attempt that is not delivered is recorded at once by `finish` and ends the run.
      const unrecorded: Delivered[] = [];
      for (let i = 0; ; i++) {
        const head = batch[i]!;
        // The first event's attempt row was started by the read above (so that a crash during its
        // POST leaves a trace: an open attempt, closed as interrupted by the next run). The others
        // get theirs when recorded: their predecessor was the key's first pending event, so no
        // earlier run can have left an open attempt on them (it would have been the head).
        const attemptId = i === 0 ? first.attempt_id : null;
        const attempt = i === 0 ? first.attempt : head.attempts + 1;
        let result: DeliveryResult;
        const sentAt = performance.now();
        try {
          result = await options.client.send(head.api, { id: head.id, type: head.type, json: head.json }, abortSignal);
        } catch (err) {
          result = { outcome: "retry", error: `delivery failed: ${err instanceof Error ? err.message : String(err)}` };
        }
        const answeredAt = performance.now();
        options.observer?.attempt(result.outcome, answeredAt - sentAt);
        const following = batch[i + 1];
        // The key is drained: the statement that records the last event releases it.
        const drained = following === undefined && whole;
        if (result.outcome !== "delivered") {
          if (unrecorded.length > 0) await recordDelivered(conn, orderingKey, unrecorded.splice(0), undefined);
          const aborted = abortSignal.aborted && result.outcome === "retry";
          const done = await finish(conn, head, attempt, attemptId, sentAt, result, aborted, drained ? orderingKey : undefined);
          if (done.unlocked) lock.held = false;
          const fields = { eventId: head.id, orderingKey, attempt, outcome: result.outcome, status: result.status, requestId: result.requestId, state: done.state };
          if (done.state === "dead") {
            // The key is held: nothing of it is read or sent until an operator re-sends or discards
            // this event (the task's finally releases the key lock, if this finish did not).
            logger?.warn(
              { ...fields, error: done.error },
              "event parked as dead; the later events of its key wait until an operator re-sends or discards it",
            );
            return;
          }
          logger?.info({ ...fields, error: result.error, nextAttemptAt: done.nextAttemptAt }, "event delivery will be retried");
          await schedule(conn, orderingKey, { at: done.nextAttemptAt });
          return;
        }
        unrecorded.push({ head, attempt, attemptId, sentAt, answeredAt, result });
        const next = following?.due && !mustStop() ? following : undefined;
        if (next === undefined || unrecorded.length >= RECORD_MAX_EVENTS || answeredAt - unrecorded[0]!.answeredAt >= RECORD_MAX_DELAY_MS) {
          const unlocked = await recordDelivered(conn, orderingKey, unrecorded.splice(0), drained ? orderingKey : undefined);
          if (unlocked) lock.held = false;
        }
        if (drained) return;
        // End of batch, next one not due, or budget: read again (the loop's top checks the budget).
        if (next === undefined) break;
      }
    }
  }

  /**
   * Records delivered attempts, in send order, in one statement: each event delivered (its
   * delivered_at the instant its answer came, on the database's clock: the statement's time less
   * the time elapsed since), its attempt row closed or, when the run did not start one, written
   * whole. When `unlockKey` is set the same statement releases the key lock (the key is drained).
   * Until this statement commits, a crash leaves these events pending: they are sent again, with
   * the same ids (at-least-once), and the attempts that were not recorded leave no row. Its commit
   * does not wait for the disk (synchronous_commit off, for this statement only): a database
   * crash may lose the last of these records, with the same outcome, never an event.
   */
  async function recordDelivered(conn: pg.PoolClient, orderingKey: string, items: Delivered[], unlockKey: string | undefined): Promise<boolean> {
    const now = performance.now();
    // Parameters $1 to $8, one value per item: the items' id, attempt id, attempt, ms since sent, ms since answered, status, request id, body.
    const columns: ((d: Delivered) => unknown)[] = [
      (d) => d.head.id,
      (d) => d.attemptId,
      (d) => d.attempt,
      (d) => now - d.sentAt,
      (d) => now - d.answeredAt,
      (d) => d.result.status ?? null,
      (d) => d.result.requestId ?? null,
      (d) => d.result.body ?? null,
    ];
    const one = items.length === 1;
    const { rows } = await conn.query<{ recorded: number; unlocked: boolean | null }>({
      name: one ? "outbox_attempt_delivered" : "outbox_attempts_delivered",
      text: RECORD_DELIVERED_SQL[one ? "one" : "many"],
      values: [
        ...columns.map((column) => (one ? column(items[0]!) : items.map(column))),
        options.workerId?.() ?? null,
        unlockKey ?? null,
        DELIVERY_LOCK_NAMESPACE,
      ],
    });
    const row = rows[0]!;
    if (row.recorded !== items.length) {
      throw new Error(`${items.length - row.recorded} delivered event(s) of ${orderingKey} left the pending state during their delivery`);
    }
    if (logger) {
      for (const d of items) {
        logger.debug(
          { eventId: d.head.id, orderingKey, attempt: d.attempt, outcome: d.result.outcome, status: d.result.status, requestId: d.result.requestId },
          "event delivered",
        );
      }
    }
    return row.unlocked === true;
  }

  async function finish(
    conn: pg.PoolClient,
    head: HeadRow,
    attempt: number,
    attemptId: string | null,
    sentAt: number,
    result: DeliveryResult,
    aborted: boolean,
    unlockKey: string | undefined,
  ): Promise<{
    state: "delivered" | "dead" | "pending";
    nextAttemptAt: Date;
    error: string | null;
    unlocked: boolean;
  }> {
    const error = aborted ? `aborted: the worker was stopping (${result.error ?? "no answer"})` : (result.error ?? null);
    // The delay is drawn here (jitter); whether the event is parked instead (attempts, age) is
    // decided by the statement below, in one place. Aborted by a stopping worker: not Orange's
    // doing; the next worker tries at once, and neither bound applies.
    const delayMs = result.outcome === "retry" && !aborted ? retryDelayMs(retry, attempt, result.retryAfterMs, random) : 0;
    const maxAttempts = aborted ? null : retry.maxAttempts;
    const maxAgeMs = aborted ? null : retry.maxAgeMs;
    const { rows } = await conn.query<{
      state: "delivered" | "dead" | "pending";
      next_attempt_at: Date;
      last_error: string | null;
      unlocked: boolean | null;
    }>({
      name: "outbox_attempt_finish",
      text: `WITH t AS (SELECT clock_timestamp() AS now),
       decided AS (
         SELECT e.id,
                CASE
                  WHEN $2::text = 'delivered' THEN 'delivered'
                  WHEN $2::text = 'park' THEN 'dead'
                  WHEN $3::int IS NOT NULL AND $15::int >= $3::int THEN 'dead'
                  WHEN $5::bigint IS NOT NULL
                   AND t.now + $4::bigint * interval '1 millisecond' > greatest(e.created_at, e.resent_at, e.released_at) + $5::bigint * interval '1 millisecond' THEN 'dead'
                  ELSE 'pending'
                END::"OutboxState" AS state,
                t.now
           FROM outbox_event e, t
          -- The primary key only (the state as text: see START_SQL).
          WHERE e.id = $1 AND e.state::text = 'pending'
       ),
       ev AS (
         UPDATE outbox_event e
            SET state = d.state,
                attempts = $15::int,
                delivered_at = CASE WHEN d.state = 'delivered' THEN d.now END,
                dead_at = CASE WHEN d.state = 'dead' THEN d.now END,
                next_attempt_at = CASE WHEN d.state = 'pending' THEN d.now + $4::bigint * interval '1 millisecond' ELSE e.next_attempt_at END,
                last_status = $6,
                last_request_id = $7,
                last_response_body = $8,
                last_error = CASE
                  WHEN d.state = 'dead' AND $2::text = 'retry'
                    THEN 'gave up after ' || $15::int || ' attempts: ' || coalesce($9, 'no answer')
                  ELSE $9
                END
           FROM decided d
          WHERE e.id = d.id
         RETURNING e.state, e.next_attempt_at, e.last_error
       ),
       closed AS (
         -- The attempt ends at the instant the event's state changes (its dead_at, its delivered_at): a
         -- timeline shows the attempt, then what it led to.
         UPDATE event_delivery_attempt
            SET finished_at = (SELECT now FROM t), outcome = $2::"DeliveryAttemptOutcome",
                status = $6, request_id = $7, response_body = $8, error = $9
          WHERE id = $10
       ),
       -- An attempt the run did not start a row for (not the first of its batch): written whole.
       opened AS (
         INSERT INTO event_delivery_attempt (event_id, attempt, worker_id, started_at, finished_at, outcome, status, request_id, response_body, error)
         SELECT $1, ${nextAttemptOf("$1")}, $11::text,
                least(t.now - $12::float8 * interval '1 millisecond', t.now), t.now, $2::"DeliveryAttemptOutcome", $6, $7, $8, $9
           FROM t
          WHERE $10::bigint IS NULL AND EXISTS (SELECT 1 FROM ev)
       ),
       unlock AS MATERIALIZED (
         SELECT CASE WHEN $13::text IS NOT NULL THEN pg_advisory_unlock($14::int, hashtext($13)) END AS unlocked
       )
       SELECT state, next_attempt_at, last_error, (SELECT unlocked FROM unlock) AS unlocked
         FROM ev`,
      values: [
        head.id,
        result.outcome,
        maxAttempts,
        delayMs,
        maxAgeMs,
        result.status ?? null,
        result.requestId ?? null,
        result.body ?? null,
        error,
        attemptId,
        options.workerId?.() ?? null,
        performance.now() - sentAt,
        unlockKey ?? null,
        DELIVERY_LOCK_NAMESPACE,
        attempt,
      ],
    });
    const row = rows[0];
    if (!row) throw new Error(`outbox event ${head.id} left the pending state during its delivery`);
    return {
      state: row.state,
      nextAttemptAt: row.next_attempt_at,
      error: row.last_error,
      unlocked: row.unlocked === true,
    };
  }
}

/** One delivered event's values, as parameters $1 to $8 (why: recordDeliveredSql). */
const ONE_ITEM = "(VALUES ($1::text, $2::bigint, $3::int, $4::float8, $5::float8, $6::int, $7::text, $8::text))";
/** Several delivered events' values, one array per column. */
const MANY_ITEMS = "unnest($1::text[], $2::bigint[], $3::int[], $4::float8[], $5::float8[], $6::int[], $7::text[], $8::text[])";

/**
 * `recordDelivered`'s statement. `one` records a single event with scalar parameters: a batch's
 * arrays (`many`) are `unnest` for the planner, which assumes 100 rows of them in a generic plan
 * and one in a custom plan of a one-item batch; the generic plan then always looked costlier, and
 * PostgreSQL planned the statement anew at each call (0.4 ms, three times its run, for the one
 * event an inline run records: measured with pg_stat_statements' plans under load). With scalar
 * parameters both plans are alike, and the generic one is kept.
 */
function recordDeliveredSql(single: boolean): string {
  return `WITH t AS (SELECT clock_timestamp() AS now),
       items AS (
         SELECT i.*, t.now - i.answered_ago * interval '1 millisecond' AS delivered_at,
                t.now - i.started_ago * interval '1 millisecond' AS started_at
           FROM ${single ? ONE_ITEM : MANY_ITEMS} AS i(id, attempt_id, attempt, started_ago, answered_ago, status, request_id, body), t
       ),
       ev AS (
         UPDATE outbox_event e
            SET state = 'delivered', attempts = i.attempt, delivered_at = i.delivered_at, dead_at = NULL,
                last_status = i.status, last_request_id = i.request_id, last_response_body = i.body, last_error = NULL
           FROM items i
          -- Probes of the primary key only: with \`state = 'pending'\` as an index condition, a generic
          -- plan ANDs in the state index, whose pending entries (thousands, dead ones included) it reads.
          WHERE e.id = ${single ? "$1::text" : "ANY($1::text[])"} AND e.id = i.id AND e.state::text = 'pending'
         RETURNING e.id
       ),
       closed AS (
         UPDATE event_delivery_attempt a
            SET finished_at = greatest(a.started_at, i.delivered_at), outcome = 'delivered',
                status = i.status, request_id = i.request_id, response_body = i.body, error = NULL
           FROM items i
          WHERE a.id = ${single ? "$2::bigint" : "ANY($2::bigint[])"} AND a.id = i.attempt_id AND i.id IN (SELECT id FROM ev)
         RETURNING 1
       ),
       opened AS (
         INSERT INTO event_delivery_attempt (event_id, attempt, worker_id, started_at, finished_at, outcome, status, request_id, response_body)
         SELECT i.id, ${nextAttemptOf("i.id")}, $9::text,
                i.started_at, i.delivered_at, 'delivered', i.status, i.request_id, i.body
           FROM items i
          WHERE i.attempt_id IS NULL AND i.id IN (SELECT id FROM ev)
         RETURNING 1
       ),
       -- Released once every write above is done (an unreferenced CTE would run after it): the
       -- lock is free only for the commit's duration before the records are visible (a next run
       -- then waits for them on the first event's FOR UPDATE).
       unlock AS MATERIALIZED (
         SELECT CASE WHEN $10::text IS NOT NULL AND (SELECT count(*) FROM ev) + (SELECT count(*) FROM closed) + (SELECT count(*) FROM opened) >= 0
                     THEN pg_advisory_unlock($11::int, hashtext($10)) END AS unlocked
       ),
       -- This statement's commit does not wait for its WAL to reach the disk: a database crash may
       -- lose it, which leaves these events pending, sent again with the same ids (at-least-once,
       -- as for a worker crash before it), never an event lost.
       async AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS sc)
       SELECT (SELECT count(*) FROM ev)::int AS recorded, (SELECT unlocked FROM unlock) AS unlocked, (SELECT sc FROM async) AS sc`;
}

export const RECORD_DELIVERED_SQL = { one: recordDeliveredSql(true), many: recordDeliveredSql(false) };

/** What a statement that starts an attempt returns: null when the event changed under us. */
interface Started {
  attempt_id: string | null;
  attempt: number | null;
}

/**
 * CTEs that start an attempt of a pending event (whose attempts column is still `attempts`):
 * records the attempt row and yields `att (id, attempt)`. The attempts column itself is written
 * when the attempt finishes; an attempt left open by a worker that stopped or died is closed here
 * as a retry and counted. Attempt rows are numbered over the event's whole life: an operator's
 * re-send of a dead event restarts the attempts column (a fresh retry budget), not the history.
 */
/** The number of an event's next attempt row: one more than its last, whoever wrote it. */
function nextAttemptOf(eventId: string): string {
  return `(SELECT coalesce(max(a.attempt), 0) + 1 FROM event_delivery_attempt a WHERE a.event_id = ${eventId})`;
}

function START_SQL(p: { id: string; attempts: string; workerId: string; error: string; condition?: string }): string {
  // FOR UPDATE: the row's latest version is checked, not the statement's snapshot, which may
  // predate the key lock (taken in the same statement) and the commit of a previous run's finish.
  // The state is compared as text so that only the primary key can find the row: compared as it
  // is, PostgreSQL looked the event up through the (state, seq) index whenever its statistics
  // said few events were pending, reading every pending event of every key to find this one.
  return `claimed AS (
    SELECT id, attempts FROM outbox_event
     WHERE id = ${p.id}::text AND state::text = 'pending' AND attempts = ${p.attempts}::int AND ${p.condition ?? "TRUE"}
       FOR UPDATE
  ),
  interrupted AS (
    UPDATE event_delivery_attempt
       SET finished_at = clock_timestamp(), outcome = 'retry', error = ${p.error}::text
     WHERE event_id = (SELECT id FROM claimed) AND finished_at IS NULL
    RETURNING 1
  ),
  recounted AS (
    UPDATE outbox_event SET attempts = attempts + (SELECT count(*) FROM interrupted)
     WHERE id = (SELECT id FROM claimed) AND EXISTS (SELECT 1 FROM interrupted)
  ),
  att AS (
    INSERT INTO event_delivery_attempt (event_id, attempt, worker_id, started_at)
    SELECT c.id, ${nextAttemptOf("c.id")},
           ${p.workerId}::text, clock_timestamp()
      FROM claimed c
    RETURNING id, (SELECT attempts + 1 + (SELECT count(*) FROM interrupted) FROM claimed)::int AS attempt
  )`;
}

/** (Re)schedules the key's job; replaces the run time of a waiting job of the key, if any. */
export async function schedule(
  conn: Queryable | pg.Pool | pg.PoolClient,
  orderingKey: string,
  when: { at: Date } | { delayMs: number },
  mode: "replace" | "preserve_run_at" = "replace",
): Promise<void> {
  const q = "execute" in conn ? conn : queryable(conn);
  await addJob(q, {
    task: DELIVER_TASK,
    payload: { orderingKey },
    key: jobKeyOf(orderingKey),
    ...("at" in when ? { runAt: when.at } : { delayMs: when.delayMs }),
    keyMode: mode,
  });
}
