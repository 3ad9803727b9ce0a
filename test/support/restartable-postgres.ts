/**
 * A PostgreSQL of a test's own (own data folder, own port), apart from the run's shared one, that
 * the test can stop and start again on the same folder and port: a database restart or outage as
 * the server sees it (refused connections, then the same database back with its data).
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEmbeddedPostgres, type EmbeddedPostgresServer } from "../../src/db/embedded.js";
import { freePort } from "../../src/simulator/self-host.js";

export interface RestartablePostgres {
  /** Connection URL of the application database; the same across restarts. */
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  /** Whether the server is running (between start() and stop()). */
  readonly up: boolean;
  /** Fast shutdown: open sessions are terminated (57P01), new connections refused until start(). */
  stop(): Promise<void>;
  /** Starts it again on the same folder and port. */
  start(): Promise<void>;
  /** Stops it for `ms`, then starts it again; `during` runs while it is down. */
  outage<T>(ms: number, during?: () => Promise<T>): Promise<T | undefined>;
  /** Stops it and removes its folder. */
  close(): Promise<void>;
}

export async function startRestartablePostgres(opts: { log?: (msg: string) => void } = {}): Promise<RestartablePostgres> {
  const root = mkdtempSync(join(tmpdir(), "orange-outage-pg-"));
  // As root, PostgreSQL runs as its own system user, which must be able to enter the folder.
  chmodSync(root, 0o755);
  const dataDir = join(root, "data");
  const port = await freePort();
  const launch = () => startEmbeddedPostgres({ dataDir, port, ...(opts.log ? { log: opts.log } : {}) });
  let server: EmbeddedPostgresServer | undefined = await launch();
  const url = server.url;

  const pg: RestartablePostgres = {
    url,
    port,
    dataDir,
    get up() {
      return server !== undefined;
    },
    async stop() {
      const current = server;
      server = undefined;
      await current?.stop();
    },
    async start() {
      if (server) return;
      server = await launch();
    },
    async outage(ms, during) {
      await pg.stop();
      const deadline = Date.now() + ms;
      try {
        const result = during ? await during() : undefined;
        const left = deadline - Date.now();
        if (left > 0) await new Promise((resolve) => setTimeout(resolve, left));
        return result;
      } finally {
        await pg.start();
      }
    },
    async close() {
      await pg.stop();
      rmSync(root, { recursive: true, force: true });
    },
  };
  return pg;
}
