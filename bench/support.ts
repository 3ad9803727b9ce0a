// Helpers of `npm run bench` (bench/run.ts): child processes, HTTP on 127.0.0.1, statistics,
// resident-memory sampling and the result table. Nothing here touches anything but loopback.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import http from "node:http";
import { setTimeout as delay } from "node:timers/promises";

export { freePort } from "../src/simulator/self-host.js";

export const LOOPBACK = "127.0.0.1";

// ---------------------------------------------------------------------------------------------
// Child processes

/** A child process whose output is kept (last lines) to explain a failure. */
export class Child {
  private tail: string[] = [];
  readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    readonly proc: ChildProcess,
  ) {
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString("utf8").split(/\r?\n/)) {
        if (line.trim() === "") continue;
        this.tail.push(line);
      }
      if (this.tail.length > 60) this.tail.splice(0, this.tail.length - 60);
    };
    proc.stdout?.on("data", keep);
    proc.stderr?.on("data", keep);
    this.exited = once(proc, "exit").then(() => undefined);
  }

  static start(name: string, command: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): Child {
    const proc = spawn(command, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"] });
    return new Child(name, proc);
  }

  get pid(): number {
    if (this.proc.pid === undefined) throw new Error(`${this.name} has no pid (spawn failed)`);
    return this.proc.pid;
  }

  get hasExited(): boolean {
    return this.proc.exitCode !== null || this.proc.signalCode !== null;
  }

  output(): string {
    return this.tail.length > 0 ? this.tail.join("\n") : "(no output)";
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves once the process is gone. */
  async stop(graceMs = 20_000): Promise<void> {
    if (this.hasExited) return;
    this.proc.kill("SIGTERM");
    const timer = new AbortController();
    const inTime = await Promise.race([
      this.exited.then(() => true),
      delay(graceMs, false, { signal: timer.signal }).catch(() => false),
    ]);
    timer.abort();
    if (!inTime && !this.hasExited) {
      console.error(`${this.name} (pid ${this.pid}) did not stop within ${graceMs} ms after SIGTERM; killing it`);
      this.proc.kill("SIGKILL");
      await this.exited;
    }
  }
}

/** Polls `url` until it answers 200, the child dies or `timeoutMs` passes. */
export async function waitUntilAnswers(url: string, child: Child, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.hasExited) {
      throw new Error(`${child.name} exited (code ${child.proc.exitCode}, signal ${child.proc.signalCode}) before answering ${url}:\n${child.output()}`);
    }
    try {
      const res = await request("GET", url, { timeoutMs: 2_000 });
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      throw new Error(`${child.name} did not answer 200 on ${url} within ${timeoutMs} ms:\n${child.output()}`);
    }
    await delay(200);
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP client (node:http, one keep-alive connection: the client adds as little as possible)

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** From the request being written to the last byte of the answer. */
  ms: number;
}

export function request(
  method: string,
  url: string,
  opts: { headers?: Record<string, string>; body?: string; timeoutMs?: number } = {},
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...opts.headers };
    if (opts.body !== undefined) headers["content-length"] = Buffer.byteLength(opts.body);
    const started = performance.now();
    const req = http.request(url, { method, headers, agent, timeout: opts.timeoutMs ?? 120_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks),
          ms: performance.now() - started,
        }),
      );
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${url}: no answer within ${opts.timeoutMs ?? 120_000} ms`)));
    req.on("error", reject);
    req.end(opts.body);
  });
}

export interface DownloadResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** Bytes of the body. */
  bytes: number;
  /** The body, when asked for (`keep`); otherwise only its first and last bytes are kept. */
  body?: Buffer;
  head: string;
  tail: string;
  /** From the request being written to the last byte of the answer. */
  ms: number;
}

/**
 * A GET on a connection of its own (concurrent downloads do not queue behind the shared
 * keep-alive socket) that counts the body instead of keeping it, unless `keep`: eight 28 MB
 * answers held in this process would compete for memory and CPU with the server being measured.
 */
export function download(
  url: string,
  opts: { headers?: Record<string, string>; keep?: boolean; timeoutMs?: number } = {},
): Promise<DownloadResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.request(url, { method: "GET", headers: opts.headers, agent: false, timeout: opts.timeoutMs ?? 300_000 }, (res) => {
      const kept: Buffer[] = [];
      let bytes = 0;
      let head = "";
      let last: Buffer = Buffer.alloc(0);
      res.on("data", (c: Buffer) => {
        if (head.length < 64) head += c.subarray(0, 64 - head.length).toString("latin1");
        bytes += c.length;
        // The last 64 bytes, whatever the size of the last chunks.
        last = c.length >= 64 ? c.subarray(c.length - 64) : Buffer.concat([last, c]).subarray(-64);
        if (opts.keep) kept.push(c);
      });
      res.on("error", reject);
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          bytes,
          body: opts.keep ? Buffer.concat(kept) : undefined,
          head,
          tail: last.toString("latin1"),
          ms: performance.now() - started,
        }),
      );
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${url}: no answer within ${opts.timeoutMs ?? 300_000} ms`)));
    req.on("error", reject);
    req.end();
  });
}

export function closeHttpClient(): void {
  agent.destroy();
}

// ---------------------------------------------------------------------------------------------
// Statistics

export function median(values: number[]): number {
  return percentile(values, 50);
}

/** Nearest-rank percentile. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = performance.now();
  const value = await fn();
  return { ms: performance.now() - started, value };
}

// ---------------------------------------------------------------------------------------------
// Resident memory of a child (Linux /proc)

export interface MemoryReading {
  /** Current resident set, kB. */
  rssKb: number;
  /** Peak resident set since the process started (VmHWM), kB. */
  hwmKb: number;
}

export function readMemory(pid: number): MemoryReading | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return undefined; // exited, or no /proc
  }
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, "m").exec(status)?.[1] ?? Number.NaN);
  return { rssKb: field("VmRSS"), hwmKb: field("VmHWM") };
}

let clockTicks: number | undefined;

/** CPU time (user + system) a process has used so far, in ms (Linux /proc), or NaN. */
export function readCpuMs(pid: number): number {
  try {
    clockTicks ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    // Fields after the command name (which may hold spaces), from field 3 on: utime is 14, stime 15.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks;
  } catch {
    return Number.NaN;
  }
}

/** Like readCpuMs, plus the CPU of its children that exited and were waited for (cutime + cstime). */
export function readCpuMsWithReapedChildren(pid: number): number {
  try {
    clockTicks ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * 1000) / clockTicks;
  } catch {
    return Number.NaN;
  }
}

/** Samples a process's resident memory every `everyMs` and keeps the peak. */
export class RssSampler {
  private timer: NodeJS.Timeout;
  peakRssKb = 0;
  peakHwmKb = 0;
  samples = 0;
  /** Highest sampled RSS (kB) of each phase named with phase(). */
  readonly phasePeaksKb: Record<string, number> = {};
  private current = "start";

  constructor(
    private readonly pid: number,
    everyMs = 100,
  ) {
    this.timer = setInterval(() => this.sample(), everyMs);
    this.timer.unref();
    this.sample();
  }

  sample(): MemoryReading | undefined {
    const m = readMemory(this.pid);
    if (!m) return undefined;
    this.samples++;
    if (Number.isFinite(m.rssKb)) {
      this.peakRssKb = Math.max(this.peakRssKb, m.rssKb);
      this.phasePeaksKb[this.current] = Math.max(this.phasePeaksKb[this.current] ?? 0, m.rssKb);
    }
    if (Number.isFinite(m.hwmKb)) this.peakHwmKb = Math.max(this.peakHwmKb, m.hwmKb);
    return m;
  }

  /** Starts a new phase; returns the sampled peak of the one that ends, in MB. */
  phase(name: string): number {
    this.sample();
    const ended = (this.phasePeaksKb[this.current] ?? Number.NaN) / 1024;
    this.current = name;
    this.sample();
    return ended;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** The larger of the kernel's high-water mark and the sampled peak, in MB. */
  peakMb(): number {
    return Math.max(this.peakRssKb, this.peakHwmKb) / 1024;
  }
}

// ---------------------------------------------------------------------------------------------
// Result table

export interface Figure {
  name: string;
  unit: string;
  value: number;
  /** The same-run reference the value is compared with; null when the target is absolute only. */
  baseline: number | null;
  /** value / baseline (null without a baseline). */
  ratio: number | null;
  target: string;
  pass: boolean;
  /** For information only: shown without PASS/FAIL and not counted as a target. */
  info?: boolean;
  note?: string;
}

function fmt(n: number | null, unit = ""): string {
  if (n === null || !Number.isFinite(n)) return "–";
  const digits = Math.abs(n) >= 1000 ? 0 : Math.abs(n) >= 100 ? 1 : 2;
  return `${n.toFixed(digits)}${unit ? ` ${unit}` : ""}`;
}

export function renderTable(figures: Figure[]): string {
  const header = ["figure", "value", "baseline", "ratio", "target", "result"];
  const rows = figures.map((f) => [
    f.name,
    fmt(f.value, f.unit),
    fmt(f.baseline, f.unit),
    f.ratio === null ? "–" : `${f.ratio.toFixed(2)}×`,
    f.target,
    f.info ? "info" : f.pass ? "PASS" : "FAIL",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}
