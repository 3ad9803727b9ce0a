/**
 * The real server (`src/main.ts` under tsx) as a child process on a real loopback port, with a
 * clean environment: what runs in production, for tests that break things around it (database
 * outages, signals) and watch it survive. Its whole output is kept and can be searched.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { request } from "undici";
import type { MockGateway } from "../../src/simulator/gateway.js";
import { freePort } from "../../src/simulator/self-host.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const ENTRY = fileURLToPath(new URL("../../src/main.ts", import.meta.url));

export interface ServerProcess {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** Orange's bearer token (INBOUND_BEARER_TOKEN). */
  readonly token: string;
  readonly child: ChildProcess;
  /** Still running (no exit seen). */
  alive(): boolean;
  /** How it ended, once it did. */
  exit(): { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** Everything it wrote on stdout and stderr so far. */
  output(): string;
  /** Its stdout/stderr lines that are pino JSON records, parsed. */
  records(): Array<Record<string, unknown> & { level: number; msg?: string }>;
  /**
   * Polls `probe` until it returns something other than undefined/false; fails at once if the
   * server exits meanwhile, and after `timeoutMs` with the end of the server's output.
   */
  waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number): Promise<T>;
  /** SIGTERM, then SIGKILL after `killAfterMs` (default 30 s); resolves with how it ended. */
  stop(killAfterMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface ServerProcessOptions {
  /** Settings on top of the defaults below (a clean environment: nothing else leaks in from the test runner). */
  env: Record<string, string>;
  /** Extra node options before the entry point, e.g. `["--import", "<module>"]` to load a fault injector. */
  nodeArgs?: string[];
  /** Wait until this path answers 200 (default `/health/ready`: listening and the database answers). */
  readyPath?: string;
  startTimeoutMs?: number;
}

/**
 * The settings that point a server at the mock gateway (`ORANGE_*`) for event delivery, as a
 * worker (ROLE all or worker) needs them.
 */
export function gatewayEnv(gateway: MockGateway): Record<string, string> {
  return {
    ORANGE_EVENT_BASE_URL: gateway.url,
    ORANGE_TOKEN_URL: gateway.tokenUrl,
    ORANGE_CLIENT_ID: gateway.clientId,
    ORANGE_CLIENT_SECRET: gateway.clientSecret,
    ORANGE_OFFER: "mba2",
  };
}

export async function startServerProcess(options: ServerProcessOptions): Promise<ServerProcess> {
  const port = await freePort();
  const token = randomBytes(18).toString("base64url");
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TMPDIR: process.env.TMPDIR,
    NODE_ENV: "production",
    HOST: "127.0.0.1",
    PORT: String(port),
    LOG_LEVEL: "warn",
    INBOUND_BEARER_TOKEN: token,
    RESPONSE_VALIDATION: "true",
    WORKER_POLL_INTERVAL_MS: "100",
    ...options.env,
  };
  const child = spawn(process.execPath, ["--import", "tsx", ...(options.nodeArgs ?? []), ENTRY], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  const chunks: string[] = [];
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => chunks.push(chunk));
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => chunks.push(chunk));
  let ended: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = once(child, "exit").then(([code, signal]) => {
    ended = { code: code as number | null, signal: signal as NodeJS.Signals | null };
    return ended;
  });

  const output = () => chunks.join("");
  const server: ServerProcess = {
    url: `http://127.0.0.1:${port}`,
    token,
    child,
    alive: () => ended === undefined,
    exit: () => ended,
    output,
    records() {
      return output()
        .split("\n")
        .filter((line) => line.startsWith("{"))
        .flatMap((line) => {
          try {
            return [JSON.parse(line) as Record<string, unknown> & { level: number; msg?: string }];
          } catch {
            return [];
          }
        });
    },
    async waitFor(what, probe, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (ended) throw new Error(`the server exited (${JSON.stringify(ended)}) while waiting for ${what}:\n${output()}`);
        const value = await probe();
        if (value !== undefined && value !== false) return value;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the server's last output:\n${output().slice(-4_000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop(killAfterMs = 30_000) {
      if (ended) return ended;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };

  const readyPath = options.readyPath ?? "/health/ready";
  const timeoutMs = options.startTimeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (ended) throw new Error(`the server exited (${ended.code ?? ended.signal}) before ${readyPath} answered 200:\n${output()}`);
    if (Date.now() > deadline) {
      await server.stop(5_000);
      throw new Error(`${readyPath} did not answer 200 within ${timeoutMs} ms:\n${output()}`);
    }
    try {
      const res = await request(`${server.url}${readyPath}`, { headersTimeout: 2_000, bodyTimeout: 2_000 });
      await res.body.dump();
      if (res.statusCode === 200) return server;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
