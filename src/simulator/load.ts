/**
 * Load mode of the Orange-side simulator (`npm run simulate -- --target URL --load N --duration S`).
 *
 * N virtual users play, as Orange's IT would, concurrently and until the duration ends:
 *
 *   1. POST /productordering/v2/productOrder — a UC2 order (fresh Orange references, 1–3 licences,
 *      an offer from `offers`);
 *   2. the fleet id: sync ordering — the answer is `completed` with `orderItem[0].productRef.id`;
 *      async ordering — the answer is `acknowledged`, then the completedStateNotification whose
 *      `resource.id` is the order id arrives at the mock gateway;
 *   3. GET /userservice/v2/userService?productRefId=<fleet>;
 *   4. POST /userservice/v2/userService/update — suspend one licence, then reactivate it
 *      (sync: `completed`; async: `acknowledged`).
 *
 * Every request is timed. A non-2xx answer, a transport error or an unexpected state is an error
 * (counted by status, with a short sample); latency percentiles are over successful requests.
 * The events the gateway receives during the run are counted by `type`.
 *
 * Like the rest of src/simulator this talks to the target over HTTP only and imports nothing from
 * the server, so it measures any partner's implementation.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { Agent, request } from "undici";
import type { MockGateway, ReceivedEvent } from "./gateway.js";
import { authHeaders, type TargetAuth } from "./target.js";

export type { TargetAuth } from "./target.js";

export interface LoadOptions {
  /** Base URL of the partner server (a path prefix is kept: `https://host/orange`). */
  target: string;
  /** How Orange authenticates to the target. */
  auth: TargetAuth;
  /** Virtual users, each playing one scenario at a time. */
  concurrency: number;
  durationMs: number;
  /** Orange offer codes to order (one picked at random per order). */
  offers: string[];
  /** How the target answers each API; async ordering needs `gateway`. */
  modes: { ordering: "sync" | "async"; update: "sync" | "async" };
  /** The mock gateway the target sends its events to: events are counted there. */
  gateway?: MockGateway;
  /** Time allowed for each request's headers and for its body. */
  requestTimeoutMs: number;
  /** Async ordering: time allowed for the order's event after the answer (default max(30 s, requestTimeoutMs)). */
  eventTimeoutMs?: number;
  /** Progress lines, at most one per second. */
  log?: (line: string) => void;
}

/**
 * `count`: successful requests; `errors`: failed ones (non-2xx, transport error, unexpected
 * state). `perSecond`: successful requests per second of the run. Percentiles and `max` are over
 * successful requests, in milliseconds (0 when there is none).
 */
export interface LatencyStats {
  count: number;
  errors: number;
  perSecond: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** `durationMs` is the measured length of the run (the requested duration plus in-flight requests). */
export interface LoadReport {
  target: string;
  concurrency: number;
  durationMs: number;
  modes: LoadOptions["modes"];
  orders: LatencyStats;
  updates: LatencyStats;
  gets: LatencyStats;
  events: { received: number; perSecond: number; byType: Record<string, number>; rejected: number };
  /** Async ordering only: POST productOrder → its completedStateNotification at the gateway. */
  orderToEvent?: LatencyStats;
  errors: { sample: string[]; byStatus: Record<string, number> };
}

type Kind = "orders" | "updates" | "gets";

const ORDER_PATH = "/productordering/v2/productOrder";
const USER_SERVICE_PATH = "/userservice/v2/userService";
const UPDATE_PATH = "/userservice/v2/userService/update";
const MAX_SAMPLES = 10;
const SAMPLE_BODY_CHARS = 160;
/** Pause after a transport error (refused connection…), so that a dead target does not spin the CPU. */
const TRANSPORT_ERROR_PAUSE_MS = 100;
/** Events seen before their order's answer was read; bounded so that foreign traffic cannot grow it. */
const MAX_EARLY_EVENTS = 10_000;

// ---------------------------------------------------------------------------------------------
// Measurements

class Recorder {
  private latencies: number[] = [];
  errors = 0;

  ok(ms: number): void {
    this.latencies.push(ms);
  }

  get count(): number {
    return this.latencies.length;
  }

  stats(elapsedMs: number): LatencyStats {
    const sorted = Float64Array.from(this.latencies).sort();
    const n = sorted.length;
    const pick = (p: number) => (n === 0 ? 0 : round(sorted[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))]!));
    return {
      count: n,
      errors: this.errors,
      perSecond: rate(n, elapsedMs),
      p50: pick(50),
      p90: pick(90),
      p99: pick(99),
      max: n === 0 ? 0 : round(sorted[n - 1]!),
    };
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

function rate(n: number, elapsedMs: number): number {
  return elapsedMs > 0 ? Math.round((n / elapsedMs) * 1000 * 10) / 10 : 0;
}

class Errors {
  readonly byStatus: Record<string, number> = {};
  readonly sample: string[] = [];

  add(key: string, line: () => string): void {
    this.byStatus[key] = (this.byStatus[key] ?? 0) + 1;
    if (this.sample.length < MAX_SAMPLES) {
      const text = line();
      if (!this.sample.includes(text)) this.sample.push(text);
    }
  }
}

function shorten(text: string, max = SAMPLE_BODY_CHARS): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

// ---------------------------------------------------------------------------------------------
// HTTP

/** One timed exchange: the status, the body text, the time in ms; or the transport error. */
type Exchange =
  | { ok: true; status: number; text: string; ms: number }
  | { ok: false; error: string; key: string; ms: number };

function transportKey(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  if (code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" || code === "UND_ERR_CONNECT_TIMEOUT") {
    return "timeout";
  }
  return typeof code === "string" ? code : "network";
}

// ---------------------------------------------------------------------------------------------
// Async ordering: the order's event at the gateway

interface OrderOutcome {
  type: string;
  resource: Record<string, unknown>;
  /** Arrival at the gateway (Date.now()). */
  at: number;
}

class EventWatcher {
  private waiters = new Map<string, (outcome: OrderOutcome) => void>();
  private early = new Map<string, OrderOutcome>();

  /** Feeds a productordering event; resolves the waiter of its order, or keeps it for later. */
  offer(event: ReceivedEvent): void {
    if (event.api !== "productordering") return;
    const body = event.body as { type?: unknown; resource?: { id?: unknown } } | null;
    const id = body?.resource?.id;
    if (typeof id !== "string" || typeof body?.type !== "string") return;
    const outcome: OrderOutcome = { type: body.type, resource: body.resource as Record<string, unknown>, at: event.at };
    const waiter = this.waiters.get(id);
    if (waiter) {
      this.waiters.delete(id);
      waiter(outcome);
      return;
    }
    if (this.early.size >= MAX_EARLY_EVENTS) {
      const oldest = this.early.keys().next().value;
      if (oldest !== undefined) this.early.delete(oldest);
    }
    this.early.set(id, outcome);
  }

  /** The outcome event of an order, or undefined after `timeoutMs`. */
  wait(orderId: string, timeoutMs: number): Promise<OrderOutcome | undefined> {
    const seen = this.early.get(orderId);
    if (seen) {
      this.early.delete(orderId);
      return Promise.resolve(seen);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(orderId);
        resolve(undefined);
      }, timeoutMs);
      this.waiters.set(orderId, (outcome) => {
        clearTimeout(timer);
        resolve(outcome);
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------
// The run

function orange(id: string) {
  return { type: "orange", id };
}

function orderBody(ref: string, offer: string, quantity: number, now: string): string {
  return JSON.stringify({
    externalReference: orange(`${ref}-ORD`),
    category: "production",
    orderDate: now,
    customer: {
      externalReference: orange(`${ref}-CUS`),
      tradingName: "Load Test SARL",
      organizationCode: "41234567800019",
    },
    relatedContact: [
      {
        role: "customerFleetManager",
        externalReference: orange(`${ref}-CT`),
        givenName: "Claire",
        familyName: "Martin",
        email: "claire.martin@load-test.example",
      },
    ],
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { externalReference: orange(offer) },
        productRef: { userServiceQuantity: quantity },
      },
    ],
  });
}

function updateBody(ref: string, licenceId: string, externalState: "suspended" | "active"): string {
  return JSON.stringify({
    externalReference: orange(ref),
    userService: [{ id: licenceId, externalState }],
  });
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function fleetOf(resource: unknown): string | undefined {
  const items = (resource as { orderItem?: unknown } | undefined)?.orderItem;
  const id = Array.isArray(items) ? (items[0] as { productRef?: { id?: unknown } } | undefined)?.productRef?.id : undefined;
  return typeof id === "string" && id.length > 0 ? id : undefined;
}

function stateOf(body: unknown): unknown {
  return (body as { state?: unknown } | undefined)?.state;
}

export async function runLoad(options: LoadOptions): Promise<LoadReport> {
  const concurrency = Math.max(1, Math.floor(options.concurrency));
  if (options.offers.length === 0) throw new Error("load: at least one offer code is needed");
  if (options.modes.ordering === "async" && !options.gateway) {
    throw new Error("load: async ordering needs the mock gateway, where the orders' events arrive");
  }
  const base = options.target.replace(/\/+$/, "");
  const eventTimeoutMs = options.eventTimeoutMs ?? Math.max(30_000, options.requestTimeoutMs);
  const expectedOrderState = options.modes.ordering === "sync" ? "completed" : "acknowledged";
  const expectedUpdateState = options.modes.update === "sync" ? "completed" : "acknowledged";

  const agent = new Agent({
    connections: concurrency + 2,
    pipelining: 1,
    headersTimeout: options.requestTimeoutMs,
    bodyTimeout: options.requestTimeoutMs,
    connectTimeout: options.requestTimeoutMs,
    keepAliveTimeout: 30_000,
  });
  const auth = authHeaders(options.auth);
  const getHeaders = { accept: "application/json", ...auth };
  const postHeaders = { accept: "application/json", "content-type": "application/json", ...auth };

  const recorders: Record<Kind, Recorder> = { orders: new Recorder(), updates: new Recorder(), gets: new Recorder() };
  const orderToEvent = new Recorder();
  const errors = new Errors();
  const events = { received: 0, byType: {} as Record<string, number>, rejected: 0 };
  const watcher = new EventWatcher();
  const unsubscribe = options.gateway?.subscribe((event) => {
    events.received++;
    const type = (event.body as { type?: unknown } | null)?.type;
    const key = typeof type === "string" ? type : "(no type)";
    events.byType[key] = (events.byType[key] ?? 0) + 1;
    if (event.status === "hang" || event.status < 200 || event.status >= 300) events.rejected++;
    watcher.offer(event);
  });

  async function exchange(method: "GET" | "POST", path: string, body?: string): Promise<Exchange> {
    const started = performance.now();
    try {
      const res = await request(base + path, {
        method,
        headers: body === undefined ? getHeaders : postHeaders,
        body,
        dispatcher: agent,
      });
      const text = await res.body.text();
      return { ok: true, status: res.statusCode, text, ms: performance.now() - started };
    } catch (err) {
      return { ok: false, error: err instanceof Error ? err.message : String(err), key: transportKey(err), ms: performance.now() - started };
    }
  }

  /** Counts an error of `kind`, keyed by status (or transport error), with a sample line. */
  function fail(kind: Kind, key: string, line: () => string): void {
    recorders[kind].errors++;
    errors.add(key, line);
  }

  /**
   * One timed call whose answer must be 2xx JSON passing `check` (which returns what is wrong, or
   * nothing). Returns the parsed body, or undefined after counting the error.
   */
  async function call(
    kind: Kind,
    label: string,
    method: "GET" | "POST",
    path: string,
    body: string | undefined,
    check: (parsed: unknown) => string | undefined,
  ): Promise<{ body: unknown; ms: number } | undefined | "transport"> {
    const res = await exchange(method, path, body);
    if (!res.ok) {
      fail(kind, res.key, () => `${method} ${label} → ${res.key}: ${shorten(res.error)}`);
      return "transport";
    }
    if (res.status < 200 || res.status >= 300) {
      fail(kind, String(res.status), () => `${method} ${label} → ${res.status} ${shorten(res.text)}`);
      return undefined;
    }
    const parsed = parseJson(res.text);
    const wrong = parsed === undefined ? "the body is not JSON" : check(parsed);
    if (wrong !== undefined) {
      fail(kind, `${res.status} unexpected`, () => `${method} ${label} → ${res.status} ${wrong}: ${shorten(res.text)}`);
      return undefined;
    }
    return { body: parsed, ms: res.ms };
  }

  const runId = randomBytes(4).toString("hex");
  const started = performance.now();
  // One clock, the monotonic one, for the deadline and the measured length: on the wall clock the
  // run ended early when the clock was stepped (NTP) and, its whole milliseconds against the
  // measure's fractions, could be reported a millisecond short of its duration.
  const deadline = started + options.durationMs;
  const inTime = () => performance.now() < deadline;

  /** One scenario; returns "transport" when the target could not be reached. */
  async function iteration(vu: number, n: number): Promise<"ok" | "failed" | "transport"> {
    const ref = `LOAD-${runId}-${vu}-${n}`;
    const offer = options.offers[Math.floor(Math.random() * options.offers.length)]!;
    const quantity = 1 + Math.floor(Math.random() * 3);

    // 1. The order.
    const postedAt = Date.now();
    const order = await call("orders", "productOrder", "POST", ORDER_PATH, orderBody(ref, offer, quantity, new Date().toISOString()), (b) => {
      const state = stateOf(b);
      if (state !== expectedOrderState) return `state ${String(state)}, expected ${expectedOrderState}`;
      if (typeof (b as { id?: unknown }).id !== "string") return "no order id";
      if (options.modes.ordering === "sync" && fleetOf(b) === undefined) return "no orderItem[0].productRef.id";
      return undefined;
    });
    if (order === "transport") return "transport";
    if (order === undefined) return "failed";

    // 2. The fleet, from the answer or from the order's event.
    let fleetId: string | undefined;
    if (options.modes.ordering === "sync") {
      fleetId = fleetOf(order.body);
    } else {
      const orderId = (order.body as { id: string }).id;
      const outcome = await watcher.wait(orderId, eventTimeoutMs);
      if (outcome === undefined) {
        fail("orders", "no event", () => `productOrder ${orderId}: no event within ${eventTimeoutMs} ms`);
        return "failed";
      }
      fleetId = fleetOf(outcome.resource);
      if (outcome.type !== "completedStateNotification" || stateOf(outcome.resource) !== "completed" || fleetId === undefined) {
        fail("orders", `event ${outcome.type}`, () => `productOrder ${orderId}: ${outcome.type} ${shorten(JSON.stringify(outcome.resource))}`);
        return "failed";
      }
      orderToEvent.ok(outcome.at - postedAt);
    }
    recorders.orders.ok(order.ms);
    if (!inTime()) return "ok";

    // 3. The licences of the fleet.
    const list = await call("gets", "userService?productRefId", "GET", `${USER_SERVICE_PATH}?productRefId=${encodeURIComponent(fleetId!)}`, undefined, (b) => {
      if (!Array.isArray(b)) return "not an array";
      if (b.length < quantity) return `${b.length} licences, expected ${quantity}`;
      if (typeof (b[0] as { id?: unknown }).id !== "string") return "no licence id";
      return undefined;
    });
    if (list === "transport") return "transport";
    if (list === undefined) return "failed";
    recorders.gets.ok(list.ms);
    const licences = list.body as { id: string }[];
    const licenceId = licences[Math.floor(Math.random() * licences.length)]!.id;

    // 4. Suspend, then reactivate, one licence.
    const checkUpdate = (b: unknown) => {
      const state = stateOf(b);
      return state === expectedUpdateState ? undefined : `state ${String(state)}, expected ${expectedUpdateState}`;
    };
    for (const [step, externalState] of [
      ["SUS", "suspended"],
      ["REA", "active"],
    ] as const) {
      if (!inTime()) return "ok";
      const res = await call("updates", `userService/update ${externalState}`, "POST", UPDATE_PATH, updateBody(`${ref}-${step}`, licenceId, externalState), checkUpdate);
      if (res === "transport") return "transport";
      if (res === undefined) return "failed";
      recorders.updates.ok(res.ms);
    }
    return "ok";
  }

  async function virtualUser(vu: number): Promise<void> {
    for (let n = 1; inTime(); n++) {
      const outcome = await iteration(vu, n);
      if (outcome === "transport" && inTime()) {
        await new Promise((resolve) => setTimeout(resolve, TRANSPORT_ERROR_PAUSE_MS));
      }
    }
  }

  let progress: NodeJS.Timeout | undefined;
  if (options.log) {
    const log = options.log;
    progress = setInterval(() => {
      const s = Math.round((performance.now() - started) / 1000);
      const err = recorders.orders.errors + recorders.gets.errors + recorders.updates.errors;
      log(
        `load ${s}s: orders ${recorders.orders.count}, gets ${recorders.gets.count}, updates ${recorders.updates.count}, errors ${err}` +
          (options.gateway ? `, events ${events.received}` : ""),
      );
    }, 1000);
    progress.unref();
  }

  let elapsedMs: number;
  try {
    await Promise.all(Array.from({ length: concurrency }, (_, i) => virtualUser(i + 1)));
    elapsedMs = performance.now() - started;
  } finally {
    if (progress) clearInterval(progress);
    unsubscribe?.();
    await agent.close().catch(() => undefined);
  }

  return {
    target: options.target,
    concurrency,
    durationMs: Math.round(elapsedMs),
    modes: { ...options.modes },
    orders: recorders.orders.stats(elapsedMs),
    updates: recorders.updates.stats(elapsedMs),
    gets: recorders.gets.stats(elapsedMs),
    events: { received: events.received, perSecond: rate(events.received, elapsedMs), byType: { ...events.byType }, rejected: events.rejected },
    ...(options.modes.ordering === "async" ? { orderToEvent: orderToEvent.stats(elapsedMs) } : {}),
    errors: { sample: [...errors.sample], byStatus: { ...errors.byStatus } },
  };
}

// ---------------------------------------------------------------------------------------------
// Text report

export function renderLoadText(report: LoadReport): string {
  const lines: string[] = [];
  lines.push(
    `Load on ${report.target}: ${report.concurrency} virtual users, ${(report.durationMs / 1000).toFixed(1)} s, ` +
      `ordering ${report.modes.ordering}, update ${report.modes.update}`,
  );
  const header = ["kind", "count", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"];
  const row = (kind: string, s: LatencyStats) => [kind, String(s.count), String(s.errors), s.perSecond.toFixed(1), ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max)];
  const rows = (["orders", "gets", "updates"] as const).map((kind) => row(kind, report[kind]));
  if (report.orderToEvent) rows.push(row("order→event", report.orderToEvent));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  lines.push(fmt(header));
  for (const row of rows) lines.push(fmt(row));

  const types = Object.entries(report.events.byType)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([type, n]) => `${type} ${n}`)
    .join(", ");
  lines.push(
    `events: ${report.events.received} received (${report.events.perSecond.toFixed(1)}/s), ${report.events.rejected} rejected` +
      (types ? ` — ${types}` : ""),
  );

  const statuses = Object.entries(report.errors.byStatus);
  if (statuses.length === 0) {
    lines.push("errors: none");
  } else {
    lines.push(`errors: ${statuses.map(([status, n]) => `${status} ×${n}`).join(", ")}`);
    for (const line of report.errors.sample) lines.push(`  ${line}`);
  }
  return lines.join("\n");
}

function ms(value: number): string {
  return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0);
}
