// Events steps of `npm run bench` (bench/run.ts): delivery throughput of a backlog of outbox
// events, and the latency of an async order until Orange (the loopback mock) gets its event.
//
// The mock gateway (src/simulator/gateway.ts) runs inside the bench process: during these
// steps the bench process does nothing but wait, so the mock has a core's worth of event loop to
// itself; in-process, every arrival is time-stamped on the same clock as the enqueue and the POST
// (no IPC between the measuring clock and the mock), and its CPU is measured (process.cpuUsage)
// and reported so that its share of the machine is visible.

import { readdirSync, readFileSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";
import { ConfigError, loadConfig } from "../src/config.js";
import type { Db } from "../src/db/sql.js";
import { createIdGenerator } from "../src/lib/ids.js";
import { enqueueEvent } from "../src/events/outbox.js";
import { startMockGateway, type MockGateway, type ReceivedEvent } from "../src/simulator/gateway.js";
import { uc2Request } from "../test/support/examples.js";
import { percentile, readCpuMs, readCpuMsWithReapedChildren, request } from "./support.js";

// ---------------------------------------------------------------------------------------------
// The mock gateway, with an arrival time for every event call

interface Arrival {
  at: number;
  event: ReceivedEvent;
}

export class TappedGateway {
  /** Every event call, in arrival order, with performance.now() at arrival (whole body read). */
  readonly arrivals: Arrival[] = [];
  private listeners = new Set<(a: Arrival) => void>();

  private constructor(readonly gw: MockGateway) {
    // The mock notifies each event call once its body is read and its answer decided (in a
    // microtask after): time-stamp it there.
    gw.subscribe((event) => {
      const arrival = { at: performance.now(), event };
      this.arrivals.push(arrival);
      for (const listener of this.listeners) listener(arrival);
    });
  }

  static async start(): Promise<TappedGateway> {
    return new TappedGateway(await startMockGateway({ expiresIn: 3600 }));
  }

  /** Calls `listener` on every arrival from now on; returns the unsubscribe function. */
  subscribe(listener: (a: Arrival) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves with the first arrival (from index `from` on) matching `match`. */
  waitFor(match: (e: ReceivedEvent) => boolean, timeoutMs: number, from = 0): Promise<Arrival> {
    const found = this.arrivals.slice(from).find((a) => match(a.event));
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const listener = (a: Arrival) => {
        if (!match(a.event)) return;
        clearTimeout(timer);
        this.listeners.delete(listener);
        resolve(a);
      };
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(new Error(`the mock gateway received no matching event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.listeners.add(listener);
    });
  }

  close(): Promise<void> {
    this.listeners.clear();
    return this.gw.close();
  }
}

/** Settings of the server that deliver to this gateway. */
export function orangeEnv(gw: MockGateway): Record<string, string> {
  return {
    ORANGE_EVENT_BASE_URL: gw.url,
    ORANGE_TOKEN_URL: gw.tokenUrl,
    ORANGE_CLIENT_ID: gw.clientId,
    ORANGE_CLIENT_SECRET: gw.clientSecret,
  };
}

// ---------------------------------------------------------------------------------------------
// Whole-machine CPU (Linux /proc/stat), to tell a CPU-bound step from a waiting one

function machineJiffies(): { busy: number; total: number } | undefined {
  try {
    const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = cpu.reduce((a, b) => a + b, 0);
    const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0); // idle + iowait
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

/** CPU ms of the embedded PostgreSQL (the postmaster this process started, and its backends). */
export function postgresCpuMs(): number {
  try {
    const procs = readdirSync("/proc").filter((d) => /^\d+$/.test(d));
    const parentOf = new Map<number, number>();
    const names = new Map<number, string>();
    for (const d of procs) {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, "utf8");
        names.set(Number(d), stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")));
        parentOf.set(Number(d), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      } catch {
        // gone
      }
    }
    const postmasters = [...parentOf].filter(([pid, ppid]) => ppid === process.pid && names.get(pid) === "postgres").map(([pid]) => pid);
    let ms = 0;
    // The postmaster's own CPU plus that of its reaped children (cutime, cstime), then the live
    // backends': a backend that exits moves from the second sum to the first.
    for (const pid of postmasters) ms += readCpuMsWithReapedChildren(pid) || 0;
    for (const [pid, ppid] of parentOf) if (postmasters.includes(ppid)) ms += readCpuMs(pid) || 0;
    return ms;
  } catch {
    return Number.NaN;
  }
}

function machineBusyShare(before: ReturnType<typeof machineJiffies>, after: ReturnType<typeof machineJiffies>): number {
  if (!before || !after || after.total === before.total) return Number.NaN;
  return (after.busy - before.busy) / (after.total - before.total);
}

// ---------------------------------------------------------------------------------------------
// Throughput: a backlog of events delivered by the server's worker

export interface ThroughputResult {
  fleets: number;
  perFleet: number;
  events: number;
  /** First enqueue → last event received by the mock. */
  totalMs: number;
  /** First enqueue → every transaction committed. */
  enqueueMs: number;
  /** Last commit → last event received (delivery alone, the backlog visible at once). */
  deliveryMs: number;
  /** Events per second over totalMs. */
  eventsPerSecond: number;
  /** Events per second over deliveryMs. */
  deliveryEventsPerSecond: number;
  /** Token requests the mock received during the step. */
  tokenRequests: number;
  serverCpuMs: number;
  /** This process during the delivery after commit: the mock gateway. */
  mockCpuMs: number;
  /** This process during the enqueue (pg). */
  enqueueCpuMs: number;
  /** The embedded PostgreSQL, enqueue and delivery. */
  postgresCpuMs: number;
  postgresEnqueueCpuMs: number;
  machineBusy: number;
}

let benchSeq = 0;

/**
 * `fleets × perFleet` events written with enqueueEvent (the outbox's own function) in
 * `transactions` parallel transactions over disjoint fleets, then awaited at the mock; checks that
 * each arrived once and that each fleet's arrived in order.
 */
export async function benchThroughput(
  db: Db,
  tap: TappedGateway,
  serverPid: number,
  opts: { fleets: number; perFleet: number; transactions: number; timeoutMs: number },
): Promise<ThroughputResult> {
  const { fleets, perFleet } = opts;
  const total = fleets * perFleet;
  const tag = `${Date.now().toString(36)}${++benchSeq}`;
  const ids = createIdGenerator();
  const clock = { now: () => new Date() };
  const fleetIds = Array.from({ length: fleets }, (_, i) => `fl_bench${tag}_${i}`);
  const groups = Array.from({ length: Math.min(opts.transactions, fleets) }, (_, g) =>
    fleetIds.filter((_, i) => i % Math.min(opts.transactions, fleets) === g),
  );
  const mine = (e: ReceivedEvent) => {
    const body = e.body as { resource?: { benchRun?: unknown } } | undefined;
    return body?.resource?.benchRun === tag;
  };

  const from = tap.arrivals.length;
  const tokensBefore = tap.gw.tokenRequests;
  const serverCpuBefore = readCpuMs(serverPid);
  const ownCpuBefore = process.cpuUsage();
  const pgCpuBefore = postgresCpuMs();
  const machineBefore = machineJiffies();

  // Resolves when the last of the `total` events has arrived (counted at arrival, duplicates aside).
  const seen = new Set<string>();
  let lastArrival = Number.NaN;
  let done!: () => void;
  const allArrived = new Promise<void>((resolve) => (done = resolve));
  const unsubscribe = tap.subscribe(({ at, event }) => {
    if (!mine(event)) return;
    seen.add((event.body as { id: string }).id);
    if (seen.size === total && Number.isNaN(lastArrival)) {
      lastArrival = at;
      done();
    }
  });

  const started = performance.now();
  await Promise.all(
    groups.map((group) =>
      db.transaction(
        async (tx) => {
          // Interleaved over the group's fleets, each fleet's events in seq order.
          for (let seq = 1; seq <= perFleet; seq++) {
            for (const fleetId of group) {
              await enqueueEvent(
                tx,
                {
                  api: "userservice",
                  type: "updateNotification",
                  fleetId,
                  resource: { id: `us_${fleetId}_1`, productRef: { id: fleetId }, benchRun: tag, seq, state: "active" },
                },
                clock,
                ids,
              );
            }
          }
        },
        { timeoutMs: opts.timeoutMs },
      ),
    ),
  );
  const committed = performance.now();
  const enqueueCpu = process.cpuUsage(ownCpuBefore);
  const pgCpuAtCommit = postgresCpuMs();

  const timer = new AbortController();
  const timedOut = delay(opts.timeoutMs, "timeout" as const, { signal: timer.signal }).catch(() => "timeout" as const);
  const outcome = await Promise.race([allArrived.then(() => "ok" as const), timedOut]);
  timer.abort();
  unsubscribe();
  if (outcome !== "ok") throw new Error(`only ${seen.size} of ${total} events reached the mock within ${opts.timeoutMs} ms`);
  const serverCpuMs = readCpuMs(serverPid) - serverCpuBefore;
  const ownCpu = process.cpuUsage(ownCpuBefore);
  const pgCpuAfter = postgresCpuMs();
  const machineBusy = machineBusyShare(machineBefore, machineJiffies());

  // A short grace for duplicates (a re-delivery) before checking once-and-in-order.
  await delay(300);
  const received = tap.arrivals.slice(from).filter((a) => mine(a.event));
  const lastSeq = new Map<string, number>();
  const distinct = new Set<string>();
  for (const { event } of received) {
    if (event.status !== 201) throw new Error(`the mock answered ${event.status} to an event (expected 201)`);
    const body = event.body as { id: string; resource: { productRef: { id: string }; seq: number } };
    distinct.add(body.id);
    const fleet = body.resource.productRef.id;
    const expected = (lastSeq.get(fleet) ?? 0) + 1;
    if (body.resource.seq !== expected) {
      throw new Error(`fleet ${fleet}: event seq ${body.resource.seq} arrived where ${expected} was expected (per-fleet order broken)`);
    }
    lastSeq.set(fleet, body.resource.seq);
  }
  if (distinct.size !== total || received.length !== total) {
    throw new Error(`${received.length} event calls for ${distinct.size} distinct events; expected ${total} once each`);
  }

  const totalMs = lastArrival - started;
  const deliveryMs = lastArrival - committed;
  return {
    fleets,
    perFleet,
    events: total,
    totalMs,
    enqueueMs: committed - started,
    deliveryMs,
    eventsPerSecond: (total * 1000) / totalMs,
    deliveryEventsPerSecond: (total * 1000) / deliveryMs,
    tokenRequests: tap.gw.tokenRequests - tokensBefore,
    serverCpuMs,
    mockCpuMs: (ownCpu.user + ownCpu.system - enqueueCpu.user - enqueueCpu.system) / 1000,
    enqueueCpuMs: (enqueueCpu.user + enqueueCpu.system) / 1000,
    postgresCpuMs: pgCpuAfter - pgCpuBefore,
    postgresEnqueueCpuMs: pgCpuAtCommit - pgCpuBefore,
    machineBusy,
  };
}

// ---------------------------------------------------------------------------------------------
// Latency: async order → completedStateNotification at the mock

/**
 * Whether the server's configuration accepts ORDERING_MODE=async: an invalid value must be
 * refused (the setting exists; zod drops unknown keys silently) and "async" accepted.
 */
export function asyncOrderingAvailable(): boolean {
  try {
    loadConfig({ ORDERING_MODE: "bench-not-a-mode" });
    return false;
  } catch (err) {
    if (!(err instanceof ConfigError) || !err.message.includes("ORDERING_MODE")) return false;
  }
  try {
    loadConfig({ ORDERING_MODE: "async" });
    return true;
  } catch {
    return false;
  }
}

export interface LatencyResult {
  orders: number;
  p50: number;
  p99: number;
  max: number;
  /** POST → acknowledged answer, p50. */
  ackP50: number;
  runs: number[];
}

export async function benchAsyncOrderLatency(
  base: string,
  token: string,
  tap: TappedGateway,
  opts: { orders: number; warmups: number; timeoutMs: number },
): Promise<LatencyResult> {
  const tag = Date.now().toString(36);
  const runs: number[] = [];
  const acks: number[] = [];
  for (let i = 0; i < opts.warmups + opts.orders; i++) {
    const body = uc2Request();
    body.externalReference.id = `BENCH-ASYNC-${tag}-${i}`;
    body.customer.externalReference.id = `BENCH-ASYNC-CUST-${tag}-${i}`;
    body.orderItem[0]!.productRef.userServiceQuantity = 1;
    const from = tap.arrivals.length;
    const started = performance.now();
    const r = await request("POST", `${base}/productordering/v2/productOrder`, {
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify(body),
    });
    const answer = JSON.parse(r.body.toString("utf8")) as { id?: string; state?: string };
    if (r.status < 200 || r.status > 299 || answer.state !== "acknowledged" || answer.id === undefined) {
      throw new Error(
        `async UC2 order answered ${r.status} (state ${answer.state}), expected acknowledged: ${r.body.toString("utf8").slice(0, 300)}`,
      );
    }
    const orderId = answer.id;
    const arrival = await tap.waitFor(
      (e) => {
        const ev = e.body as { type?: string; resource?: { id?: string } } | undefined;
        return ev?.resource?.id === orderId && (ev.type === "completedStateNotification" || ev.type === "failedStateNotification");
      },
      opts.timeoutMs,
      from,
    );
    const type = (arrival.event.body as { type: string }).type;
    if (type !== "completedStateNotification") throw new Error(`order ${orderId}: the mock received ${type}`);
    if (i < opts.warmups) continue;
    runs.push(arrival.at - started);
    acks.push(r.ms);
  }
  return {
    orders: runs.length,
    p50: percentile(runs, 50),
    p99: percentile(runs, 99),
    max: Math.max(...runs),
    ackP50: percentile(acks, 50),
    runs,
  };
}
