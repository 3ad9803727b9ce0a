/**
 * `npm run simulate` without `--target`: this repository's own server, started as a child process
 * (`src/main.ts` under tsx) on its embedded PostgreSQL, configured to send its events to the
 * simulator's mock gateway. The only place of the simulator that knows about our server: through
 * its entry point and environment variables, never its modules.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { request } from "undici";
import type { MockGateway } from "./gateway.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const ENTRY = fileURLToPath(new URL("../main.ts", import.meta.url));
/** The server's default catalogue: the self-hosted server sells these codes, the simulator orders them. */
export const DEFAULT_CATALOGUE = fileURLToPath(new URL("../../config/catalogue.json", import.meta.url));

/** What the report says of the self-hosted server's version: this package's name and version. */
export async function selfHostedVersion(): Promise<{ version: string; source: string }> {
  const pkg = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { name?: string; version?: string };
  return { version: `${pkg.name ?? "this repository"} ${pkg.version ?? "(no version)"}`, source: "this repository's server, self-hosted" };
}

export interface SelfHostedServer {
  url: string;
  token: string;
  child: ChildProcess;
  /** The server's output, for a report when it failed to start or died. */
  output(): string;
  stop(): Promise<void>;
}

export interface SelfHostOptions {
  gateway: MockGateway;
  modes: { ordering: "sync" | "async"; update: "sync" | "async" };
  /** The embedded database's directory; one directory can serve successive servers. */
  dataDir: string;
  /** Orange offer of the event URLs (mba2 | mba2-beta). */
  offer: string;
  /** Where the server listens (127.0.0.1); default a free port. */
  port?: number;
  /** More settings, e.g. PROVISIONING_* for a webhook run; they win over the ones set here. */
  env?: Record<string, string>;
  startTimeoutMs?: number;
}

/**
 * The kernel's ephemeral range: where `listen(0)` and every outbound connection take their port.
 * Linux says it in /proc; elsewhere the IANA range (macOS, Windows).
 */
async function ephemeralRange(): Promise<{ low: number; high: number }> {
  try {
    const [low, high] = (await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8")).trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high) && low! > 0 && high! >= low!) return { low: low!, high: high! };
  } catch {
    // Not Linux.
  }
  return { low: 49152, high: 65535 };
}

function tryListen(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", () => resolve(undefined));
    srv.listen({ port, host: "127.0.0.1", exclusive: true }, () => {
      const address = srv.address();
      srv.close(() => resolve(typeof address === "object" && address ? address.port : undefined));
    });
  });
}

/**
 * A TCP port free on loopback right now (the simulator's, the tests' and the benchmark's), for a
 * listener started a moment later. Picked at random below the ephemeral range: a port that
 * `listen(0)` had given could be given again, or taken by any outbound connection, before its
 * listener binds it (EADDRINUSE). Port 0's answer only when that range is too low to leave room.
 */
export async function freePort(): Promise<number> {
  const { low } = await ephemeralRange();
  const floor = Math.max(10_000, low - 16_384);
  for (let i = 0; low - floor >= 1_000 && i < 50; i++) {
    const port = await tryListen(floor + randomInt(low - floor));
    if (port !== undefined) return port;
  }
  const port = await tryListen(0);
  if (port === undefined) throw new Error("no free TCP port on 127.0.0.1");
  return port;
}

export async function startSelfHostedServer(options: SelfHostOptions): Promise<SelfHostedServer> {
  const port = options.port ?? (await freePort());
  const token = randomBytes(18).toString("base64url");
  const { gateway } = options;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: "production",
    HOST: "127.0.0.1",
    PORT: String(port),
    LOG_LEVEL: process.env.SIMULATE_SERVER_LOG_LEVEL ?? "warn",
    DATABASE_URL: "",
    DATA_DIR: options.dataDir,
    EMBEDDED_PG_PORT: String(await freePort()),
    INBOUND_BEARER_TOKEN: token,
    RESPONSE_VALIDATION: "true",
    ORDERING_MODE: options.modes.ordering,
    UPDATE_MODE: options.modes.update,
    ROLE: "all",
    ORANGE_EVENT_BASE_URL: gateway.url,
    ORANGE_TOKEN_URL: gateway.tokenUrl,
    ORANGE_CLIENT_ID: gateway.clientId,
    ORANGE_CLIENT_SECRET: gateway.clientSecret,
    ORANGE_OFFER: options.offer,
    // The simulator's default offer codes are this file's: a CATALOGUE_FILE of the caller's must not differ.
    CATALOGUE_FILE: DEFAULT_CATALOGUE,
    // Events within tens of milliseconds, not the production poll interval.
    WORKER_POLL_INTERVAL_MS: "100",
    // A run is a server of its own: none of the caller's PROVISIONING_* unless given below.
    PROVISIONING_MODE: "none",
    ...options.env,
  };
  const child = spawn(process.execPath, ["--import", "tsx", ENTRY], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = once(child, "exit").then(() => true);

  const server: SelfHostedServer = {
    url: `http://127.0.0.1:${port}`,
    token,
    child,
    output: () => output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };

  const deadline = Date.now() + (options.startTimeoutMs ?? 120_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the server exited (${child.exitCode ?? child.signalCode}) before answering /ping:\n${output}`);
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`the server did not answer /ping within ${options.startTimeoutMs ?? 120_000} ms:\n${output}`);
    }
    try {
      const res = await request(`${server.url}/ping`, { headers: { accept: "application/json" } });
      await res.body.dump();
      if (res.statusCode === 200) return server;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}
