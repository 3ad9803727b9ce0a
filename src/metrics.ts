/**
 * The server's metrics in Prometheus' text format (prom-client), served by GET /metrics
 * (src/ops-routes.ts). Three sources:
 *
 * - Counted in this process as things happen: HTTP requests (route pattern, status, duration),
 *   requests that reached their final state (the domain's Telemetry port, told after commit),
 *   delivery attempts to Orange, token requests, calls to the partner's application. Each
 *   process counts its own: sum them across replicas.
 * - Read from PostgreSQL at scrape time: events pending and dead, the oldest pending event, the
 *   keys held behind a dead event, commands by state, the job queue's lag. The same figures for
 *   every replica (take max, not sum). One read-only transaction of indexed statements (each
 *   names its index below), cached `cacheMs` and shared by concurrent scrapes, so a burst of
 *   scrapes costs PostgreSQL one read; when the database does not answer, these gauges are left
 *   out and `partner_metrics_database_up` is 0, everything else still answers.
 * - Read from the process at scrape time: the connection pools, and prom-client's default
 *   process metrics (CPU, memory, event loop, GC; one set per process).
 *
 * Final states that only grow (delivered and discarded events, done and refused commands) are not
 * counted from their tables: a count over them would cost more with every day of history. Their
 * flow is in the counters (delivery attempts, requests finished, calls to the application).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type pg from "pg";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { sql, type Db } from "./db/sql.js";
import type { StreamedListings } from "./domain/licences.js";
import type { Telemetry } from "./domain/ports.js";
import type { InlineLoad } from "./events/worker.js";
import { systemClock, type Clock } from "./lib/clock.js";

/** Event states counted from the table: those an event leaves (pending) or an operator must act on (dead). */
const EVENT_STATES = ["pending", "dead"] as const;
/** Command states counted from the table: the unfinished ones, and parked (an operator may retry it). */
const COMMAND_STATES = ["queued", "sending", "waiting", "retrying", "parked"] as const;
/** The worker's tasks, reported even with nothing due (0), so that an alert sees a series. */
const KNOWN_TASKS = ["deliver_events", "process_order", "process_update", "provision_command"];

const DELIVERY_OUTCOMES = ["delivered", "retry", "park"] as const;
const TOKEN_OUTCOMES = ["issued", "refused", "failed"] as const;
const PROVISIONING_OUTCOMES = ["done", "accepted", "refused", "retry", "rejected"] as const;

/** Requests' route label when no route matched (a 404): one series, whatever the URL. */
export const UNMATCHED_ROUTE = "unmatched";

/** What the database tells at one scrape. */
export interface DatabaseSnapshot {
  events: Record<(typeof EVENT_STATES)[number], number>;
  /** Seconds since the first pending event (in delivery order) that is not held behind a dead one was written; 0 when none. */
  oldestPendingAgeSeconds: number;
  /** Ordering keys (fleets) held by a dead event. */
  heldKeys: number;
  /** Pending events waiting behind a dead event of their key. */
  heldEvents: number;
  commands: Record<(typeof COMMAND_STATES)[number], number>;
  /** When the last command still parked was parked, or null. */
  lastParkedAt: Date | null;
  /** Per task: jobs due and not locked, and the age of the oldest of them (0 when none). */
  queue: { task: string; due: number; lagSeconds: number }[];
}

export interface MetricsOptions {
  /** The API pool: its use is reported, and the database gauges are read through it. */
  db: Db;
  /** How long a database read serves scrapes (default 5 s). */
  cacheMs?: number;
  /** Bound of one database read, connection included (default 2 s). */
  readTimeoutMs?: number;
  /** Time of the cache (tests move it). */
  clock?: Clock;
}

export interface Metrics {
  readonly contentType: string;
  /** The whole exposition: read the database if the cache is stale, then render. */
  render(): Promise<string>;
  /** The domain's port: requests that reached their final state. */
  readonly telemetry: Telemetry;
  /** One HTTP request answered: `route` is the route's pattern (UNMATCHED_ROUTE for a 404). */
  httpRequest(method: string, route: string, status: number, seconds: number): void;
  /** An answer sent before Fastify's routing (the open GET /ping): counted as its route would be. */
  countFastPath<T extends { handle(req: IncomingMessage, res: ServerResponse): boolean }>(fastPath: T, route: string): T;
  /** src/events: one delivery attempt. */
  readonly delivery: { attempt(outcome: (typeof DELIVERY_OUTCOMES)[number], durationMs: number): void };
  /** src/events: one token request. */
  tokenRequest(outcome: (typeof TOKEN_OUTCOMES)[number]): void;
  /** src/provisioning: one call to the partner's application. */
  provisioningAttempt(outcome: (typeof PROVISIONING_OUTCOMES)[number], durationMs: number): void;
  /** Reports a connection pool (the API's is watched from the start; the worker's once it runs). */
  watchPool(name: string, pool: () => pg.Pool | undefined): void;
  /** Reports the inline runs of this process's worker (ROLE=all), once it runs. */
  watchInline(load: () => InlineLoad | undefined): void;
  /** Reports the streamed fleet listings of this process's HTTP API. */
  watchFleetListings(load: () => StreamedListings): void;
}

let processRegistry: Registry | undefined;

/** prom-client's process metrics, once per process whatever the number of Metrics (tests build many). */
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

export function createMetrics(options: MetricsOptions): Metrics {
  const { db } = options;
  const cacheMs = options.cacheMs ?? 5_000;
  const readTimeoutMs = options.readTimeoutMs ?? 2_000;
  const clock = options.clock ?? systemClock;
  const registry = new Registry();
  const registers = [registry];

  // --- counted as things happen ----------------------------------------------------------------

  const http = new Histogram({
    name: "partner_http_request_duration_seconds",
    help: "HTTP requests answered, by method, route pattern and status, and how long they took (its _count is the number of requests)",
    labelNames: ["method", "route", "status_code"] as const,
    registers,
  });
  const finished = new Counter({
    name: "partner_requests_finished_total",
    help: "Orders and updates that reached their final state, by kind, use case (UC1-UC3; update) and state",
    labelNames: ["kind", "use_case", "state"] as const,
    registers,
  });
  for (const state of ["completed", "failed"]) {
    for (const useCase of ["UC1", "UC2", "UC3"]) finished.inc({ kind: "order", use_case: useCase, state }, 0);
    finished.inc({ kind: "update", use_case: "update", state }, 0);
  }
  const acknowledged = new Counter({
    name: "partner_requests_acknowledged_total",
    help: "Orders and updates answered acknowledged (async), by kind and how they are carried out: inline (at once, by this process) or queued (a job, for any worker)",
    labelNames: ["kind", "run"] as const,
    registers,
  });
  for (const kind of ["order", "update"]) for (const run of ["inline", "queued"]) acknowledged.inc({ kind, run }, 0);
  const deliveries = new Histogram({
    name: "partner_event_delivery_duration_seconds",
    help: "Delivery attempts of events to Orange by outcome (delivered, retry, park), and how long each took (its _count is the number of attempts)",
    labelNames: ["outcome"] as const,
    registers,
  });
  for (const outcome of DELIVERY_OUTCOMES) deliveries.zero({ outcome });
  const tokens = new Counter({
    name: "partner_token_requests_total",
    help: "OAuth token requests to Orange by outcome: issued, refused (not worth retrying: check the credentials), failed (network, timeout, 5xx, 408, 429)",
    labelNames: ["outcome"] as const,
    registers,
  });
  for (const outcome of TOKEN_OUTCOMES) tokens.inc({ outcome }, 0);
  const provisioning = new Histogram({
    name: "partner_provisioning_attempt_duration_seconds",
    help: "Calls to the partner's application (PROVISIONING_MODE=webhook) by outcome (done, accepted, refused, retry, rejected), and how long each took",
    labelNames: ["outcome"] as const,
    registers,
  });
  for (const outcome of PROVISIONING_OUTCOMES) provisioning.zero({ outcome });

  // --- read from the process at scrape time ----------------------------------------------------

  const pools = new Map<string, () => pg.Pool | undefined>([["api", () => db.pool]]);
  const poolGauge = (name: string, help: string, read: (p: pg.Pool) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["pool"] as const,
      registers,
      collect() {
        this.reset();
        for (const [pool, get] of pools) {
          const p = get();
          if (p) this.set({ pool }, read(p));
        }
      },
    });
  poolGauge("partner_db_pool_connections", "Connections open in the pool (api: the HTTP requests'; worker: the job runner's)", (p) => p.totalCount);
  poolGauge("partner_db_pool_idle_connections", "Connections of the pool open and not in use", (p) => p.idleCount);
  poolGauge("partner_db_pool_waiting_clients", "Callers waiting for a connection of the pool (all in use)", (p) => p.waitingCount);
  poolGauge("partner_db_pool_max_connections", "Most connections the pool opens", (p) => p.options.max ?? 10);
  /** Work of this process under way and waiting for its turn, read at each scrape once watched. */
  const loadGauge = (name: string, help: string, read: () => { running: number; waiting: number } | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ["state"] as const,
      registers,
      collect() {
        const load = read();
        this.reset();
        if (load) for (const state of ["running", "waiting"] as const) this.set({ state }, load[state]);
      },
    });
  let inlineLoad: () => InlineLoad | undefined = () => undefined;
  loadGauge(
    "partner_inline_runs",
    "Acknowledged requests carried out by this process (ROLE=all): running, and waiting for a slot (their acknowledgements held until they start, 2 s at most: backpressure)",
    () => inlineLoad(),
  );
  let fleetListings: () => StreamedListings | undefined = () => undefined;
  loadGauge(
    "partner_fleet_listings_streamed",
    "Fleet listings of more than 10,000 licences: being sent (FLEET_STREAMS_MAX at most, each holding a pooled connection), and waiting for their turn before their first byte",
    () => fleetListings(),
  );

  // --- read from PostgreSQL at scrape time, cached ---------------------------------------------

  const reads = new Counter({
    name: "partner_metrics_database_reads_total",
    help: "Reads of the database-derived gauges (one per cache period whatever the number of scrapes), by outcome (ok, error)",
    labelNames: ["outcome"] as const,
    registers,
    // Rendered once this scrape's read (if any) has ended: the figure includes it.
    async collect() {
      await snapshot();
    },
  });
  reads.inc({ outcome: "ok" }, 0);
  reads.inc({ outcome: "error" }, 0);

  let cached: { at: number; snapshot: DatabaseSnapshot | undefined } | undefined;
  let inflight: Promise<DatabaseSnapshot | undefined> | undefined;

  /** The cached snapshot, or one read shared by every scrape that asks meanwhile; undefined when the database did not answer. */
  function snapshot(): Promise<DatabaseSnapshot | undefined> {
    if (cached && clock.now().getTime() - cached.at < cacheMs) return Promise.resolve(cached.snapshot);
    inflight ??= withTimeout(readDatabase(db, readTimeoutMs), readTimeoutMs)
      .then(
        (s) => {
          reads.inc({ outcome: "ok" });
          return s;
        },
        () => {
          // An outage is cached too: a burst of scrapes must not each wait for the connect timeout.
          reads.inc({ outcome: "error" });
          return undefined;
        },
      )
      .then((s) => {
        cached = { at: clock.now().getTime(), snapshot: s };
        return s;
      })
      .finally(() => {
        inflight = undefined;
      });
    return inflight;
  }

  /** A gauge set from the snapshot at each scrape; absent (no sample) when the database did not answer. */
  function fromDatabase<L extends string>(
    name: string,
    help: string,
    labelNames: readonly L[],
    fill: (gauge: Gauge<L>, s: DatabaseSnapshot) => void,
  ): Gauge<L> {
    return new Gauge<L>({
      name,
      help,
      labelNames,
      registers,
      async collect() {
        const s = await snapshot();
        if (labelNames.length > 0) this.reset();
        if (s) fill(this, s);
        else if (labelNames.length === 0) (this as Gauge).remove();
      },
    });
  }

  new Gauge({
    name: "partner_metrics_database_up",
    help: "1 when the last read of the database-derived gauges succeeded; 0: PostgreSQL did not answer, those gauges are absent",
    registers,
    async collect() {
      this.set((await snapshot()) ? 1 : 0);
    },
  });
  fromDatabase("partner_events", "Events to Orange by state: pending (to send, retrying, or held behind a dead one) and dead (parked: an operator must re-send or discard them)", ["state"], (g, s) => {
    for (const state of EVENT_STATES) g.set({ state }, s.events[state]);
  });
  fromDatabase(
    "partner_event_oldest_pending_age_seconds",
    "Age of the first pending event in delivery order that is not held behind a dead one (0: none): how late Orange is told",
    [],
    (g, s) => g.set(s.oldestPendingAgeSeconds),
  );
  fromDatabase("partner_event_keys_held", "Ordering keys (fleets) held by a dead event: their later events wait until an operator re-sends or discards it", [], (g, s) =>
    g.set(s.heldKeys),
  );
  fromDatabase("partner_events_held", "Pending events waiting behind a dead event of their fleet", [], (g, s) => g.set(s.heldEvents));
  fromDatabase(
    "partner_provisioning_commands",
    "Commands to the partner's application by state: the unfinished ones (queued, sending, waiting, retrying) and parked (not carried out within the bounds)",
    ["state"],
    (g, s) => {
      for (const state of COMMAND_STATES) g.set({ state }, s.commands[state]);
    },
  );
  fromDatabase(
    "partner_provisioning_last_parked_timestamp_seconds",
    "When the most recently parked command (still parked) was parked, Unix time; 0: none",
    [],
    (g, s) => g.set(s.lastParkedAt ? s.lastParkedAt.getTime() / 1000 : 0),
  );
  fromDatabase("partner_job_queue_due_jobs", "Jobs due and not locked (waiting for a free worker), per task", ["task"], (g, s) => {
    for (const q of s.queue) g.set({ task: q.task }, q.due);
  });
  fromDatabase(
    "partner_job_queue_lag_seconds",
    "Age of the oldest job that is due and not locked, per task (0: none waits): how far behind the workers are",
    ["task"],
    (g, s) => {
      for (const q of s.queue) g.set({ task: q.task }, q.lagSeconds);
    },
  );

  // The process metrics beside this instance's (the same objects, registered in both).
  const exposed = Registry.merge([processMetrics(), registry]);
  return {
    contentType: exposed.contentType,
    render: () => exposed.metrics(),
    telemetry: {
      requestFinished: (f) => finished.inc({ kind: f.kind, use_case: f.useCase, state: f.state }),
      requestAcknowledged: (a) => acknowledged.inc({ kind: a.kind, run: a.run }),
    },
    httpRequest(method, route, status, seconds) {
      http.observe({ method, route, status_code: String(status) }, seconds);
    },
    countFastPath(fastPath, route) {
      // Pre-bound: the fast path is the server's cheapest answer, its count must stay cheap too.
      const ok = http.labels({ method: "GET", route, status_code: "200" });
      return {
        ...fastPath,
        handle(req: IncomingMessage, res: ServerResponse) {
          const startedAt = performance.now();
          if (!fastPath.handle(req, res)) return false;
          ok.observe((performance.now() - startedAt) / 1000);
          return true;
        },
      };
    },
    delivery: { attempt: (outcome, durationMs) => deliveries.observe({ outcome }, durationMs / 1000) },
    tokenRequest: (outcome) => tokens.inc({ outcome }),
    provisioningAttempt: (outcome, durationMs) => provisioning.observe({ outcome }, durationMs / 1000),
    watchPool(name, pool) {
      pools.set(name, pool);
    },
    watchInline(load) {
      inlineLoad = load;
    },
    watchFleetListings(load) {
      fleetListings = load;
    },
  };
}

/** `promise`, or a rejection once `ms` passed (waiting for a connection included); the promise is left to end on its own. */
async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  promise.catch(() => {});
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The database-derived gauges, in one read-only snapshot. Each statement is bounded by what is
 * not final (pending and dead events, unfinished and parked commands, due jobs), never by history.
 */
export async function readDatabase(db: Db, timeoutMs: number): Promise<DatabaseSnapshot> {
  return db.transaction(
    async (tx) => {
      // outbox_event (state, seq): two index ranges, index-only.
      const events = await tx.query<{ state: string; n: number }>(sql`
        SELECT state::text AS state, count(*) AS n FROM outbox_event WHERE state IN ('pending', 'dead') GROUP BY state`);
      // outbox_event (state, seq) in seq order, stopping at the first event not held; each held
      // one skipped costs a probe of (ordering_key, state, seq).
      const [oldest] = await tx.query<{ age: number }>(sql`
        SELECT greatest(extract(epoch FROM now() - e.created_at), 0)::float8 AS age
          FROM outbox_event e
         WHERE e.state = 'pending'
           AND NOT EXISTS (SELECT 1 FROM outbox_event d WHERE d.ordering_key = e.ordering_key AND d.state = 'dead' AND d.seq < e.seq)
         ORDER BY e.seq
         LIMIT 1`);
      // The dead events through (state, seq), then per held key a range of (ordering_key, state, seq).
      const [held] = await tx.query<{ keys: number; waiting: number }>(sql`
        WITH heads AS (
          SELECT DISTINCT ON (ordering_key) ordering_key, seq FROM outbox_event WHERE state = 'dead' ORDER BY ordering_key, seq
        )
        SELECT count(*) AS keys,
               coalesce(sum((SELECT count(*) FROM outbox_event p
                              WHERE p.ordering_key = h.ordering_key AND p.state = 'pending' AND p.seq > h.seq)), 0)::int8 AS waiting
          FROM heads h`);
      // provisioning_command (state, seq): one range per state listed.
      const commands = await tx.query<{ state: string; n: number; last_parked_at: Date | null }>(sql`
        SELECT state::text AS state, count(*) AS n, max(finished_at) FILTER (WHERE state = 'parked') AS last_parked_at
          FROM provisioning_command
         WHERE state IN ('queued', 'sending', 'waiting', 'retrying', 'parked')
         GROUP BY state`);
      // graphile-worker's jobs_main_index: partial on the available jobs (not locked, attempts
      // left), (priority, run_at) INCLUDE (task_id), index-only. Its private table, because the
      // public view hides is_available (the index's predicate); graphile-worker is pinned (0.18.0).
      const queue = await tx.query<{ task: string; due: number; lag: number }>(sql`
        SELECT t.identifier AS task, count(*) AS due, greatest(extract(epoch FROM now() - min(j.run_at)), 0)::float8 AS lag
          FROM graphile_worker._private_jobs j
          JOIN graphile_worker._private_tasks t ON t.id = j.task_id
         WHERE j.is_available = true AND j.run_at <= now()
         GROUP BY t.identifier`);
      const count = <S extends string>(states: readonly S[], rows: { state: string; n: number }[]) =>
        Object.fromEntries(states.map((state) => [state, rows.find((r) => r.state === state)?.n ?? 0])) as Record<S, number>;
      const tasks = new Map(KNOWN_TASKS.map((task) => [task, { task, due: 0, lagSeconds: 0 }]));
      for (const q of queue) tasks.set(q.task, { task: q.task, due: q.due, lagSeconds: q.lag });
      return {
        events: count(EVENT_STATES, events),
        oldestPendingAgeSeconds: oldest?.age ?? 0,
        heldKeys: held?.keys ?? 0,
        heldEvents: held?.waiting ?? 0,
        commands: count(COMMAND_STATES, commands),
        lastParkedAt: commands.find((c) => c.state === "parked")?.last_parked_at ?? null,
        queue: [...tasks.values()],
      };
    },
    { readOnlySnapshot: true, timeoutMs },
  );
}
