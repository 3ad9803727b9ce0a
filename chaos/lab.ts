/**
 * What every experiment of the fault suite works with: one embedded PostgreSQL for the run (a
 * database of its own per experiment, cloned from a migrated template), the real server as child
 * processes, the mock of Orange's gateway behind a fault proxy, an HTTP client that records every
 * answer, and the tally an experiment's checks fill in.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { request } from "undici";
import { applyMigrations } from "../src/db/migrate.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { startRestartablePostgres, type RestartablePostgres } from "../test/support/restartable-postgres.js";
import { startServerProcess, type ServerProcess } from "../test/support/server-process.js";
import { startFaultProxy, type FaultProxy } from "./fault-proxy.js";

const TEMPLATE = "chaos_template";
const TOKEN_PATH = "/oauth/v3/token";

/** Settings of every server started here: short timeouts and retries, so that a run takes minutes. */
export const BASE_ENV: Record<string, string> = {
  ROLE: "all",
  DATABASE_CONNECT_TIMEOUT_MS: "1500",
  DATABASE_POOL_MAX: "6",
  WORKER_CONCURRENCY: "4",
  WORKER_POLL_INTERVAL_MS: "100",
  WORKER_SWEEP_INTERVAL_MS: "500",
  // A killed worker's jobs are taken back after the lease (at least 6 × the event timeout).
  ORANGE_EVENT_TIMEOUT_MS: "1000",
  WORKER_LEASE_MS: "6000",
  EVENT_RETRY_BASE_MS: "200",
  EVENT_RETRY_MAX_MS: "1000",
};

export interface Run {
  pg: RestartablePostgres;
  close(): Promise<void>;
}

export async function startRun(): Promise<Run> {
  const pgServer = await startRestartablePostgres();
  await admin(pgServer.url, `CREATE DATABASE ${TEMPLATE}`);
  await applyMigrations(withDatabase(pgServer.url, TEMPLATE));
  return { pg: pgServer, close: () => pgServer.close() };
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

async function admin(url: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

/** One HTTP exchange of Orange's side (or of an operator), whatever came back. */
export interface Call {
  label: string;
  method: string;
  path: string;
  status?: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body?: any;
  text?: string;
  headers?: Record<string, string | string[] | undefined>;
  /** Transport failure, or no answer within the call's timeout. */
  error?: string;
  timedOut?: boolean;
  startedAt: number;
  endedAt: number;
}

export interface Tally {
  /** What was broken, for the table. */
  faults: string[];
  accepted: number;
  lost: number;
  duplicated: number;
  /** 5xx answers nobody asked for. */
  unexpected5xx: number;
  /** 503 answers the experiment provoked (database down): counted apart. */
  expected503: number;
  /** Requests still acknowledged, events still pending, calls never answered, after a bounded wait. */
  stuck: number;
  /** Server processes that ended without being told to. */
  crashes: number;
  /** Any other broken expectation, in words. */
  failures: string[];
  /** Figures worth reading beside the verdict (re-deliveries, attempts, faults answered). */
  notes: string[];
}

export function emptyTally(): Tally {
  return { faults: [], accepted: 0, lost: 0, duplicated: 0, unexpected5xx: 0, expected503: 0, stuck: 0, crashes: 0, failures: [], notes: [] };
}

/** The context of one experiment: its database, gateway, servers and tally. */
export class Experiment {
  readonly tally = emptyTally();
  readonly servers: ServerProcess[] = [];
  readonly calls: Call[] = [];
  private readonly killed = new Set<ServerProcess>();
  private readonly stopping = new Set<ServerProcess>();
  private pool: pg.Pool | undefined;
  private closers: Array<() => Promise<unknown>> = [];
  dbUrl = "";
  gateway!: MockGateway;
  /** In front of the gateway: the server's ORANGE_* settings point here. */
  orange!: FaultProxy;

  constructor(
    readonly run: Run,
    readonly id: string,
  ) {}

  async setUp(): Promise<void> {
    const name = `chaos_${this.id}_${randomBytes(3).toString("hex")}`;
    await admin(this.run.pg.url, `CREATE DATABASE ${name} TEMPLATE ${TEMPLATE}`);
    this.dbUrl = withDatabase(this.run.pg.url, name);
    this.gateway = await startMockGateway({ offer: "mba2" });
    this.orange = await startFaultProxy(this.gateway.url, (path) => path !== TOKEN_PATH);
    this.closers.push(() => this.gateway.close(), () => this.orange.close());
  }

  /** Stops everything this experiment started (servers first), whatever happened. */
  async tearDown(): Promise<void> {
    for (const s of this.servers) if (s.alive()) await this.stop(s);
    for (const s of this.servers) {
      if (/unhandled|uncaught|"level":60/i.test(s.output())) this.fail("a server logged a fatal or unhandled error");
    }
    await this.pool?.end().catch(() => undefined);
    for (const close of this.closers.splice(0).reverse()) await close().catch(() => undefined);
  }

  onTearDown(close: () => Promise<unknown>): void {
    this.closers.push(close);
  }

  /** The settings that send events to the gateway through the fault proxy. */
  orangeEnv(): Record<string, string> {
    return {
      ORANGE_EVENT_BASE_URL: this.orange.url,
      ORANGE_TOKEN_URL: `${this.orange.url}${TOKEN_PATH}`,
      ORANGE_CLIENT_ID: this.gateway.clientId,
      ORANGE_CLIENT_SECRET: this.gateway.clientSecret,
      ORANGE_OFFER: "mba2",
    };
  }

  async startServer(env: Record<string, string>): Promise<ServerProcess> {
    const server = await startServerProcess({
      env: { DATABASE_URL: this.dbUrl, ...BASE_ENV, ...this.orangeEnv(), ...env },
      startTimeoutMs: 90_000,
    });
    this.servers.push(server);
    // A server that dies by itself is a crash, whenever it happens.
    server.child.once("exit", () => {
      if (!this.killed.has(server) && !this.stopping.has(server)) this.tally.crashes++;
    });
    return server;
  }

  /** kill -9; resolves once the process is gone. */
  async kill9(server: ServerProcess): Promise<void> {
    this.killed.add(server);
    const exited = new Promise((resolve) => server.child.once("exit", resolve));
    if (server.alive()) server.child.kill("SIGKILL");
    if (server.alive()) await exited;
  }

  async stop(server: ServerProcess): Promise<void> {
    this.stopping.add(server);
    const ended = await server.stop(15_000);
    if (ended.code !== 0) this.fail(`a server stopped with SIGTERM exited ${ended.code ?? ended.signal}`);
  }

  /** A query on the experiment's database, read apart from the server (its own pool). */
  async query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<R[]> {
    if (!this.pool) {
      this.pool = new pg.Pool({ connectionString: this.dbUrl, max: 3 });
      // An idle connection cut by a database stop is not this script's failure.
      this.pool.on("error", () => undefined);
    }
    return (await this.pool.query<R>(text, values)).rows;
  }

  /** Drops the read pool (before the database is stopped on purpose). */
  async dropPool(): Promise<void> {
    const pool = this.pool;
    this.pool = undefined;
    await pool?.end().catch(() => undefined);
  }

  /** An HTTP call with Orange's token, recorded whatever its outcome. */
  async call(server: ServerProcess, method: string, path: string, body?: unknown, opts: { label?: string; timeoutMs?: number; headers?: Record<string, string> } = {}): Promise<Call> {
    const call: Call = { label: opts.label ?? `${method} ${path}`, method, path, startedAt: Date.now(), endedAt: 0 };
    const timeoutMs = opts.timeoutMs ?? 15_000;
    try {
      const res = await request(`${server.url}${path}`, {
        method: method as "POST",
        headers: {
          authorization: `Bearer ${server.token}`,
          accept: "application/json",
          ...(body === undefined ? {} : { "content-type": "application/json" }),
          ...opts.headers,
        },
        body: body === undefined ? null : typeof body === "string" ? body : JSON.stringify(body),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      call.status = res.statusCode;
      call.headers = res.headers;
      call.text = await res.body.text();
      try {
        call.body = JSON.parse(call.text);
      } catch {
        call.body = call.text;
      }
    } catch (err) {
      call.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      call.timedOut = /Timeout/i.test(call.error);
    }
    call.endedAt = Date.now();
    this.calls.push(call);
    return call;
  }

  fail(message: string): void {
    if (!this.tally.failures.includes(message)) this.tally.failures.push(message);
  }

  note(message: string): void {
    this.tally.notes.push(message);
  }

  /** Checks a condition; a false one is a failure. */
  expect(ok: boolean, message: string): boolean {
    if (!ok) this.fail(message);
    return ok;
  }

  /**
   * Polls `probe` until it returns something other than undefined/false; undefined past
   * `timeoutMs` (the caller decides what that means: usually work left stuck).
   */
  async waitFor<T>(probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, everyMs = 200): Promise<T | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      // A probe that throws (the database coming back, say) has not seen it yet.
      const value = await Promise.resolve()
        .then(probe)
        .catch(() => undefined);
      if (value !== undefined && value !== false) return value;
      if (Date.now() > deadline) return undefined;
      await sleep(everyMs);
    }
  }

  /** Counts the 5xx answers of `calls`: those `expected` says were provoked apart from the others. */
  count5xx(calls: readonly { status?: number; retryAfter?: string; startedAt: number; endedAt: number }[], expected: (c: { status?: number; retryAfter?: string; startedAt: number; endedAt: number }) => boolean = () => false): void {
    for (const c of calls) {
      if (c.status === undefined || c.status < 500) continue;
      if (expected(c)) this.tally.expected503++;
      else this.tally.unexpected5xx++;
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function uniqueRef(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}
