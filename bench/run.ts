// `npm run bench`: the real server, started as a child process on a real port against an embedded
// PostgreSQL this script starts in a temporary folder, measured against bare baselines in the
// same run. Prints a table and writes bench/results/latest.json. Exit code 0 even when a target
// is missed (it is a report); non-zero only when something breaks.
//
//   1. GET /ping throughput (autocannon) vs a bare node:http server answering the same bytes
//   2. UC2 order of 10,000 licences, end to end, vs a bare INSERT … SELECT … FROM unnest
//   3. GET /userservice/v2/userService?productRefId= on 10,000 licences vs a bare SELECT + JSON.stringify
//   4. peak RSS of the server process over steps 1–3
//   5. events: a backlog of 5,000 outbox events (500 fleets × 10, written with enqueueEvent)
//      delivered by a server started with ORANGE_* pointing at a loopback mock of Orange's
//      gateway (in this process, see bench/events.ts): events/s, token requests, each event once
//      and in per-fleet order; the same for one fleet (serial delivery), for information
//   6. async order (ORDERING_MODE=async, when the configuration has it) → completedStateNotification
//      received by the mock: p50/p99 latency
//   7. a fleet of 100,000 licences (one UC2 order): one listing at a time vs a bare SELECT +
//      JSON.stringify, then 8 listings at once, on a server started for this step: its peak RSS
//      (bench/listing.ts)
//   8–9. PROVISIONING_MODE=webhook in front of a loopback application answering at once, vs none,
//      two servers on one database (bench/provisioning.ts): a UC2 order of 10,000 licences, and
//      sync UC2 orders of 1 licence from 16 callers at once
//
//   10. the operators' admin API (bench/admin.ts): each listing, detail and the search box on a
//      store of 100,000 licences, 1,000 fleets and 50,000 events, p50 vs a bare SELECT of the page
//
//   11–15. under load (bench/load.ts): 16 concurrent callers of the simulator's load mode, sync vs
//      async (order → event at the mock vs the sync order); sync UC2 orders of 1 licence vs bare
//      `pg` transactions writing the same rows; a backlog of events from first enqueue vs delivery
//      alone, and delivery vs bare POSTs
//
// BENCH_ONLY selects steps, comma-separated: api (1–4), events (5–6), listing (7), webhook (8–9), admin (10), load (11–15); e.g.
// BENCH_ONLY=webhook. BENCH_SERVER_ENV="WORKER_CONCURRENCY=16 …" adds settings
// to the servers started here (to try a setting; the figures of record use the defaults).
//
// Only 127.0.0.1 is touched. Everything started here is stopped at the end, even on failure.

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import pg from "pg";
import { loadConfig } from "../src/config.js";
import { startEmbeddedPostgres, type EmbeddedPostgresServer } from "../src/db/embedded.js";
import type { MockGateway } from "../src/simulator/gateway.js";
import { createDb, type Db } from "../src/db/sql.js";
import { createIdGenerator } from "../src/lib/ids.js";
import {
  Child,
  closeHttpClient,
  freePort,
  LOOPBACK,
  median,
  percentile,
  readCpuMs,
  renderTable,
  request,
  RssSampler,
  timed,
  waitUntilAnswers,
  type Figure,
} from "./support.js";
import { uc2Request } from "../test/support/examples.js";
import { benchBigOrders, benchSmallOrders, WEBHOOK, type Side } from "./provisioning.js";
import { ADMIN, adminSteps } from "./admin.js";
import { acknowledgedRuns, bareTransactions, captureOrderRows, cpuMeter, LOAD, LOAD_TARGETS, loadRound, requestsPerSecond, settleDatabase, smallOrdersRound } from "./load.js";
import type { LoadReport } from "../src/simulator/load.js";
import { benchBigListing, BIG_LIST } from "./listing.js";
import {
  asyncOrderingAvailable,
  benchAsyncOrderLatency,
  benchThroughput,
  orangeEnv,
  TappedGateway,
  type LatencyResult,
  type ThroughputResult,
} from "./events.js";

// ---------------------------------------------------------------------------------------------
// Parameters

const PING = { connections: 10, warmupSeconds: 1, durationSeconds: 5, rounds: 2 };
const ORDER = { licences: 10_000, runs: 5, warmups: 1 };
const LIST = { requests: 50, warmups: 5 };
const EVENTS = { fleets: 500, perFleet: 10, transactions: 4, rounds: 3, serialEvents: 300, timeoutMs: 120_000 };
const LATENCY = { orders: 50, warmups: 5, timeoutMs: 15_000 };
const TARGETS = {
  pingRatioMin: 0.8,
  orderRatioMax: 3,
  listRatioMax: 3,
  listP50MaxMs: 100,
  peakRssMaxMb: 300,
  eventsPerSecondMin: 1_000,
  tokenRequests: 1,
  asyncOrderP50MaxMs: 50,
  webhookBigOrderRatioMax: 1.5,
  webhookSmallOrdersRatioMin: 0.6,
  bigListPeakRssMaxMb: 400,
};
const STEP_GROUPS = ["api", "events", "listing", "webhook", "admin", "load"] as const;
const ONLY = (process.env.BENCH_ONLY ?? "")
  .split(",")
  .map((s) => s.trim())
  .filter((s) => s !== "");
for (const step of ONLY) {
  if (!(STEP_GROUPS as readonly string[]).includes(step)) {
    throw new Error(`BENCH_ONLY: unknown step ${JSON.stringify(step)} (known: ${STEP_GROUPS.join(", ")})`);
  }
}
const runs = (group: (typeof STEP_GROUPS)[number]) => ONLY.length === 0 || ONLY.includes(group);
/** The whole run is abandoned (and everything stopped) past this. */
const WATCHDOG_MS = 10 * 60_000;

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const RESULTS_FILE = path.join(ROOT, "bench", "results", "latest.json");
const OFFER = "MBA-CAISSE-PRO";



/** The rows of a fleet listing (readFleet in src/domain/licences.ts) in one query, for the bare baseline. */
const LIST_SQL = `
  SELECT l.id, f.id AS fleet_id, f.customer_id, l.state, l.external_state, l.offer_code,
         l.end_user, l.realizing_resource, l.login, l.service_characteristics, l.created_at,
         l.updated_at
  FROM fleet f LEFT JOIN licence l ON l.fleet_id = f.id
  WHERE f.id = $1
  ORDER BY l.id`;

/** Settings of the server this script must control; inherited values are dropped. */
const SERVER_SETTINGS = [
  "NODE_ENV",
  "NODE_OPTIONS",
  "HOST",
  "PORT",
  "LOG_LEVEL",
  "DATABASE_URL",
  "DATA_DIR",
  "EMBEDDED_PG_PORT",
  "DATABASE_POOL_MAX",
  "DATABASE_CONNECT_TIMEOUT_MS",
  "DATABASE_TRANSACTION_TIMEOUT_MS",
  "BODY_LIMIT_BYTES",
  "ORDER_MAX_QUANTITY",
  "CATALOGUE_FILE",
  "PARTNER_NAME",
  "TRUST_PROXY",
  "RESPONSE_VALIDATION",
  "PING_REQUIRES_AUTH",
  "ROLE",
  "ADMIN_TOKEN",
  "ORDERING_MODE",
  "UPDATE_MODE",
  "APP_TOKEN",
];
/** Prefixes of settings dropped likewise (Orange client, worker, retries, inbound credentials, the application). */
const SERVER_SETTING_PREFIXES = ["INBOUND_", "ORANGE_", "WORKER_", "EVENT_", "PROVISIONING_"];

// ---------------------------------------------------------------------------------------------
// Resources, released by cleanup() whatever happens

interface Resources {
  tmpDir?: string;
  postgres?: EmbeddedPostgresServer;
  server?: Child;
  bare?: Child;
  /** The webhook steps' second server and their loopback application. */
  webhookServer?: Child;
  /** The load steps' sync server, beside `server` (the async one). */
  syncServer?: Child;
  app?: Child;
  pool?: pg.Pool;
  sampler?: RssSampler;
  gateway?: TappedGateway;
  db?: Db;
}
const res: Resources = {};

let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    res.sampler?.sample();
    res.sampler?.stop();
    closeHttpClient();
    const steps: [string, (() => Promise<unknown>) | undefined][] = [
      ["server", res.server && (() => res.server!.stop())],
      ["webhook server", res.webhookServer && (() => res.webhookServer!.stop())],
      ["sync load server", res.syncServer && (() => res.syncServer!.stop())],
      ["loopback application", res.app && (() => res.app!.stop(5_000))],
      ["bare ping server", res.bare && (() => res.bare!.stop(5_000))],
      ["pg pool", res.pool && (() => res.pool!.end())],
      ["database pool", res.db && (() => res.db!.close())],
      ["mock gateway", res.gateway && (() => res.gateway!.close())],
      ["embedded PostgreSQL", res.postgres && (() => res.postgres!.stop())],
    ];
    for (const [name, step] of steps) {
      if (!step) continue;
      try {
        await step();
      } catch (err) {
        console.error(`cleanup: stopping the ${name} failed:`, err);
        process.exitCode = 1;
      }
    }
    if (res.tmpDir) rmSync(res.tmpDir, { recursive: true, force: true });
  })();
  return cleaning;
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    console.error(`\n${signal}: stopping everything`);
    void cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------
// Steps

function machine() {
  const cpus = os.cpus();
  let commit: string | undefined;
  try {
    commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "src"], { cwd: ROOT, encoding: "utf8" }).trim();
    if (dirty) commit += " (src/ modified)";
  } catch {
    commit = undefined;
  }
  return {
    cpu: cpus[0]?.model ?? "unknown",
    cores: cpus.length,
    totalMemoryMb: Math.round(os.totalmem() / 2 ** 20),
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    loadAverageAtStart: os.loadavg().map((l) => Number(l.toFixed(2))),
    date: new Date().toISOString(),
    commit,
  };
}

/** BENCH_SERVER_ENV="KEY=value KEY=value": settings added to every server started here. */
function extraServerSettings(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (process.env.BENCH_SERVER_ENV ?? "").split(/\s+/).filter((p) => p !== "")) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new Error(`BENCH_SERVER_ENV: "${pair}" is not KEY=value`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

async function startServer(
  databaseUrl: string,
  token: string,
  settings: Record<string, string> = {},
  name = "server",
): Promise<{ child: Child; base: string }> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(env)) {
    if (SERVER_SETTINGS.includes(key) || SERVER_SETTING_PREFIXES.some((p) => key.startsWith(p))) delete env[key];
  }
  Object.assign(env, {
    PORT: String(port),
    HOST: LOOPBACK,
    DATABASE_URL: databaseUrl,
    LOG_LEVEL: "warn",
    INBOUND_BEARER_TOKEN: token,
    ...settings,
    ...extraServerSettings(),
  });
  // BENCH_SERVER_NODE_ARGS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof", to profile the server.
  const extra = (process.env.BENCH_SERVER_NODE_ARGS ?? "").split(/\s+/).filter((a) => a !== "");
  // The build `npm start` runs (compiled JavaScript): what a deployment runs, not tsx's on-the-fly loader.
  const child = Child.start(name, process.execPath, [...extra, "dist/main.js"], { cwd: ROOT, env });
  const base = `http://${LOOPBACK}:${port}`;
  // First start applies the migrations: be patient on a busy machine.
  await waitUntilAnswers(`${base}/health/ready`, child, 120_000);
  return { child, base };
}

async function startBarePingServer(): Promise<{ child: Child; base: string }> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), HOST: LOOPBACK };
  delete env.NODE_OPTIONS;
  const child = Child.start("bare ping server", process.execPath, ["--import", "tsx", "bench/bare-ping-server.ts"], {
    cwd: ROOT,
    env,
  });
  const base = `http://${LOOPBACK}:${port}`;
  await waitUntilAnswers(`${base}/ping`, child, 60_000);
  return { child, base };
}

async function cannon(url: string, seconds: number): Promise<autocannon.Result> {
  const result = await autocannon({ url, connections: PING.connections, duration: seconds });
  if (result.errors > 0 || result.timeouts > 0 || result.non2xx > 0) {
    throw new Error(`${url}: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx answers`);
  }
  return result;
}

async function benchPing(serverBase: string, bareBase: string, pids: { real: number; bare: number }) {
  // Same bytes? Compare what both answer before measuring.
  const [real, bare] = [await request("GET", `${serverBase}/ping`), await request("GET", `${bareBase}/ping`)];
  if (real.status !== 200 || real.body.toString() !== '{"status":"ok"}') {
    throw new Error(`GET /ping answered ${real.status} ${real.body.toString().slice(0, 200)}`);
  }
  if (real.headers["content-type"] !== bare.headers["content-type"] || !real.body.equals(bare.body)) {
    console.log(
      `  note: the answers differ (real: ${real.headers["content-type"]} ${real.body}, bare: ${bare.headers["content-type"]} ${bare.body})`,
    );
  }
  const targets = { real: `${serverBase}/ping`, bare: `${bareBase}/ping` };
  for (const url of Object.values(targets)) await cannon(url, PING.warmupSeconds);
  const runs: { real: number[]; bare: number[] } = { real: [], bare: [] };
  const cpu: { real: number[]; bare: number[] } = { real: [], bare: [] };
  for (let round = 1; round <= PING.rounds; round++) {
    // Alternated, so that a burst of load from elsewhere does not fall on one side only.
    for (const side of round % 2 === 1 ? (["bare", "real"] as const) : (["real", "bare"] as const)) {
      const cpuBefore = readCpuMs(pids[side]);
      const r = await cannon(targets[side], PING.durationSeconds);
      // CPU per request is far less sensitive than req/s to what else runs on the machine.
      const cpuUs = ((readCpuMs(pids[side]) - cpuBefore) * 1000) / r.requests.total;
      runs[side].push(r.requests.average);
      cpu[side].push(cpuUs);
      console.log(
        `  ${side.padEnd(4)} round ${round}: ${r.requests.average.toFixed(0)} req/s ` +
          `(p50 ${r.latency.p50} ms, p99 ${r.latency.p99} ms), server CPU ${cpuUs.toFixed(0)} µs/request`,
      );
    }
  }
  const realRps = Math.max(...runs.real);
  const bareRps = Math.max(...runs.bare);
  return { realRps, bareRps, runs, cpuUsPerRequest: { real: median(cpu.real), bare: median(cpu.bare) } };
}

interface OrderRun {
  ms: number;
  fleetId: string;
}

async function postOrder(base: string, token: string, reference: string, licences = ORDER.licences): Promise<OrderRun> {
  const body = uc2Request();
  body.externalReference.id = reference;
  body.orderItem[0]!.productRef.userServiceQuantity = licences;
  const r = await request("POST", `${base}/productordering/v2/productOrder`, {
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify(body),
  });
  const answer = JSON.parse(r.body.toString("utf8")) as {
    state?: string;
    orderItem?: { productRef?: { id?: string } }[];
  };
  const fleetId = answer.orderItem?.[0]?.productRef?.id;
  if (r.status !== 201 || answer.state !== "completed" || fleetId === undefined) {
    throw new Error(`UC2 order ${reference} answered ${r.status}: ${r.body.toString("utf8").slice(0, 500)}`);
  }
  return { ms: r.ms, fleetId };
}

/** A customer, fleet and product_order row for the bare inserts (foreign keys of licence). */
async function seedBareFleet(pool: pg.Pool): Promise<{ fleetId: string; orderId: string }> {
  const tag = randomBytes(6).toString("hex");
  const ids = { customerId: `cu_bench${tag}`, fleetId: `fl_bench${tag}`, orderId: `po_bench${tag}` };
  await pool.query(`INSERT INTO customer (id, orange_ref) VALUES ($1, $2)`, [ids.customerId, `BENCH-BARE-${tag}`]);
  await pool.query(`INSERT INTO fleet (id, customer_id, offer_code) VALUES ($1, $2, $3)`, [ids.fleetId, ids.customerId, OFFER]);
  await pool.query(
    `INSERT INTO product_order (id, request_hash, request, state, use_case, quantity, customer_id, fleet_id)
     VALUES ($1, 'bench', '{}'::jsonb, 'completed', 'UC2', $2, $3, $4)`,
    [ids.orderId, ORDER.licences, ids.customerId, ids.fleetId],
  );
  return ids;
}

const idGenerator = createIdGenerator();

/** The bare baseline: the same ids the server makes, one INSERT … SELECT … FROM unnest, autocommit. */
async function bareInsert(pool: pg.Pool, fleetId: string, orderId: string): Promise<number> {
  const { ms } = await timed(async () => {
    const ids = Array.from({ length: ORDER.licences }, () => idGenerator.next("us"));
    const r = await pool.query(
      `INSERT INTO licence (id, fleet_id, order_id, state, offer_code, created_at, updated_at)
       SELECT u.id, $2, $3, 'active', $4, now(), now() FROM unnest($1::text[]) AS u(id)`,
      [ids, fleetId, orderId, OFFER],
    );
    if (r.rowCount !== ORDER.licences) throw new Error(`bare insert wrote ${r.rowCount} rows`);
  });
  return ms;
}

async function benchOrders(base: string, token: string, pool: pg.Pool, pid: number) {
  const bare = await seedBareFleet(pool);
  const runTag = randomBytes(4).toString("hex");
  const server: OrderRun[] = [];
  const baseline: number[] = [];
  const serverCpu: number[] = [];
  for (let i = 0; i < ORDER.warmups + ORDER.runs; i++) {
    const warm = i < ORDER.warmups;
    // Alternated: both sides see the licence table grow alike.
    const cpuBefore = readCpuMs(pid);
    const o = await postOrder(base, token, `BENCH-${runTag}-${i}`);
    const cpuMs = readCpuMs(pid) - cpuBefore;
    const b = await bareInsert(pool, bare.fleetId, bare.orderId);
    console.log(
      `  ${warm ? "warm-up" : `run ${i - ORDER.warmups + 1}`}: order ${o.ms.toFixed(0)} ms ` +
        `(server CPU ${cpuMs.toFixed(0)} ms), bare insert ${b.toFixed(0)} ms`,
    );
    if (warm) continue;
    serverCpu.push(cpuMs);
    server.push(o);
    baseline.push(b);
  }
  const fleetId = server[0]!.fleetId;
  const { rows } = await pool.query<{ n: string }>(`SELECT count(*) AS n FROM licence WHERE fleet_id = $1`, [fleetId]);
  if (Number(rows[0]?.n) !== ORDER.licences) throw new Error(`fleet ${fleetId} holds ${rows[0]?.n} licences, not ${ORDER.licences}`);
  return {
    orderMs: median(server.map((s) => s.ms)),
    bareMs: median(baseline),
    orderRuns: server.map((s) => s.ms),
    bareRuns: baseline,
    serverCpuMs: median(serverCpu),
    fleetId,
  };
}

async function benchList(base: string, token: string, pool: pg.Pool, fleetId: string, pid: number) {
  const url = `${base}/userservice/v2/userService?productRefId=${encodeURIComponent(fleetId)}`;
  const headers = { authorization: `Bearer ${token}`, accept: "application/json" };
  const first = await request("GET", url, { headers });
  const list = JSON.parse(first.body.toString("utf8")) as unknown[];
  if (first.status !== 200 || !Array.isArray(list) || list.length !== ORDER.licences) {
    throw new Error(`GET by fleet answered ${first.status} with ${Array.isArray(list) ? list.length : "no"} licences`);
  }
  const client = await pool.connect();
  try {
    const split = { queryMs: [] as number[], stringifyMs: [] as number[] };
    const bareOnce = async () => {
      const started = performance.now();
      const r = await client.query(LIST_SQL, [fleetId]);
      const queried = performance.now();
      if (JSON.stringify(r.rows).length === 0) throw new Error("empty JSON");
      const done = performance.now();
      split.queryMs.push(queried - started);
      split.stringifyMs.push(done - queried);
      return done - started;
    };
    for (let i = 0; i < LIST.warmups; i++) {
      await request("GET", url, { headers });
      await bareOnce();
    }
    const server: number[] = [];
    const baseline: number[] = [];
    split.queryMs.length = 0;
    split.stringifyMs.length = 0;
    let serverCpuMs = 0;
    for (let i = 0; i < LIST.requests; i++) {
      const cpuBefore = readCpuMs(pid);
      const r = await request("GET", url, { headers });
      if (r.status !== 200) throw new Error(`GET by fleet answered ${r.status}`);
      serverCpuMs += readCpuMs(pid) - cpuBefore;
      server.push(r.ms);
      baseline.push(await bareOnce());
    }
    return {
      p50: percentile(server, 50),
      p99: percentile(server, 99),
      bareP50: percentile(baseline, 50),
      bareP99: percentile(baseline, 99),
      answerBytes: first.body.length,
      serverCpuMsPerRequest: serverCpuMs / LIST.requests,
      bareQueryP50: median(split.queryMs),
      bareStringifyP50: median(split.stringifyMs),
      serverRuns: server,
      bareRuns: baseline,
    };
  } finally {
    client.release();
  }
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const watchdog = setTimeout(() => {
    console.error(`the bench did not finish within ${WATCHDOG_MS / 60_000} minutes; stopping everything`);
    void cleanup().finally(() => process.exit(1));
  }, WATCHDOG_MS);
  watchdog.unref();

  const m = machine();
  console.log(`machine: ${m.cpu}, ${m.cores} cores, ${m.totalMemoryMb} MB RAM (${m.platform})`);
  console.log(`node ${m.node}, ${m.date}, commit ${m.commit ?? "?"}, load average ${m.loadAverageAtStart.join(" ")}`);
  console.log("");

  res.tmpDir = mkdtempSync(path.join(os.tmpdir(), "orange-bench-"));
  // As root, PostgreSQL runs as its own system user, which must be able to enter the folder.
  chmodSync(res.tmpDir, 0o755);
  console.log("starting embedded PostgreSQL …");
  res.postgres = await startEmbeddedPostgres({ dataDir: path.join(res.tmpDir, "pg"), port: await freePort() });

  const token = randomBytes(32).toString("base64url");
  console.log("building the server (npm run build) …");
  execFileSync("npm", ["run", "build", "--silent"], { cwd: ROOT, stdio: "inherit" });

  const figures: Figure[] = [];
  const raw: Record<string, unknown> = {};
  if (runs("api")) await apiSteps(res.postgres.url, token, figures, raw);
  if (runs("listing")) await bigListingSteps(res.postgres.url, token, figures, raw);
  if (runs("webhook")) await webhookSteps(res.postgres.url, token, figures, raw);
  if (runs("events")) await eventSteps(res.postgres.url, token, figures, raw);
  // A group may leave its server running for cleanup(): stopped here, before the next group
  // tracks a server of its own (a server no longer tracked would outlive the run).
  const stopTracked = async () => {
    await res.server?.stop();
    res.server = undefined;
  };
  await stopTracked();
  if (runs("admin")) {
    console.log(`\n10. the operators' admin API: listings, details and search box (${ADMIN.warmups} warm-up + ${ADMIN.requests} requests each) vs a bare SELECT of the page`);
    const admin = await adminSteps({
      postgresUrl: res.postgres.url,
      startServer: (url, settings) => startServer(url, token, settings, "admin server"),
      track: (child) => (res.server = child),
    });
    figures.push(...admin.figures);
    raw.admin = admin.raw;
  }
  await stopTracked();
  if (runs("load")) await loadSteps(res.postgres.url, token, figures, raw);

  await cleanup();

  console.log("");
  console.log(renderTable(figures));
  for (const f of figures) if (f.note) console.log(`  ${f.name}: ${f.note}`);
  const targets = figures.filter((f) => !f.info);
  console.log(`\n${targets.filter((f) => f.pass).length}/${targets.length} targets met.`);

  mkdirSync(path.dirname(RESULTS_FILE), { recursive: true });
  const report = {
    machine: m,
    parameters: { ping: PING, order: ORDER, list: LIST, events: EVENTS, asyncOrder: LATENCY, bigList: BIG_LIST, webhook: WEBHOOK, targets: TARGETS, admin: ADMIN, load: LOAD, loadTargets: LOAD_TARGETS, only: ONLY.length > 0 ? ONLY : undefined },
    figures,
    raw,
  };
  writeFileSync(RESULTS_FILE, JSON.stringify(report, null, 2) + "\n");
  console.log(`written to ${path.relative(process.cwd(), RESULTS_FILE)}`);
  if (existsSync(path.join(ROOT, ".env"))) console.log("note: the server also read ./.env (settings set by the bench take precedence)");
}

/** Steps 1–4: the API server without event delivery. */
async function apiSteps(databaseUrl: string, token: string, figures: Figure[], raw: Record<string, unknown>): Promise<void> {
  console.log("starting the server (node dist/main.js) …");
  const server = await startServer(databaseUrl, token);
  res.server = server.child;
  res.sampler = new RssSampler(server.child.pid);
  const idleMb = res.sampler.sample()?.rssKb ?? Number.NaN;
  console.log(`  pid ${server.child.pid} ready on ${server.base}, RSS ${(idleMb / 1024).toFixed(0)} MB`);
  const bare = await startBarePingServer();
  res.bare = bare.child;

  console.log(`\n1. GET /ping, autocannon ${PING.connections} connections, ${PING.rounds} × ${PING.durationSeconds} s each after ${PING.warmupSeconds} s warm-up`);
  res.sampler.phase("ping");
  const ping = await benchPing(server.base, bare.base, { real: server.child.pid, bare: bare.child.pid });
  console.log(`  server RSS peak during this step: ${res.sampler.phase("orders").toFixed(0)} MB`);
  await res.bare.stop(5_000);

  res.pool = new pg.Pool({ connectionString: databaseUrl, max: 2 });
  console.log(`\n2. UC2 order of ${ORDER.licences} licences (${ORDER.warmups} warm-up + ${ORDER.runs} runs) vs bare INSERT … unnest`);
  const orders = await benchOrders(server.base, token, res.pool, server.child.pid);
  console.log(`  server RSS peak during this step: ${res.sampler.phase("list").toFixed(0)} MB`);

  console.log(`\n3. GET userService?productRefId= on ${ORDER.licences} licences (${LIST.requests} sequential requests) vs bare SELECT + JSON.stringify`);
  const list = await benchList(server.base, token, res.pool, orders.fleetId, server.child.pid);
  console.log(
    `  server: p50 ${list.p50.toFixed(1)} ms, p99 ${list.p99.toFixed(1)} ms, CPU ${list.serverCpuMsPerRequest.toFixed(0)} ms/request, ` +
      `answer ${(list.answerBytes / 2 ** 20).toFixed(1)} MB`,
  );
  console.log(
    `  bare:   p50 ${list.bareP50.toFixed(1)} ms (query ${list.bareQueryP50.toFixed(1)} ms + stringify ${list.bareStringifyP50.toFixed(1)} ms), p99 ${list.bareP99.toFixed(1)} ms`,
  );

  console.log(`  server RSS peak during this step: ${res.sampler.phase("end").toFixed(0)} MB`);
  const peakMb = res.sampler.peakMb();
  res.sampler.stop();
  await res.server.stop();
  res.server = undefined;

  figures.push(
    {
      name: "GET /ping throughput",
      unit: "req/s",
      value: ping.realRps,
      baseline: ping.bareRps,
      ratio: ping.realRps / ping.bareRps,
      target: `≥ ${TARGETS.pingRatioMin.toFixed(2)}×`,
      pass: ping.realRps / ping.bareRps >= TARGETS.pingRatioMin,
      note:
        `best of ${PING.rounds} rounds each; baseline: bare node:http in its own process; server CPU per request ` +
        `${ping.cpuUsPerRequest.real.toFixed(0)} µs vs ${ping.cpuUsPerRequest.bare.toFixed(0)} µs bare`,
    },
    {
      name: `UC2 order ${ORDER.licences} licences (median)`,
      unit: "ms",
      value: orders.orderMs,
      baseline: orders.bareMs,
      ratio: orders.orderMs / orders.bareMs,
      target: `≤ ${TARGETS.orderRatioMax.toFixed(2)}×`,
      pass: orders.orderMs / orders.bareMs <= TARGETS.orderRatioMax,
      note:
        `baseline: INSERT … SELECT … FROM unnest($1::text[]) with pg, autocommit; ` +
        `server CPU ${orders.serverCpuMs.toFixed(0)} ms/order (median)`,
    },
    {
      name: `GET by fleet ${ORDER.licences} p50`,
      unit: "ms",
      value: list.p50,
      baseline: list.bareP50,
      ratio: list.p50 / list.bareP50,
      target: `≤ ${TARGETS.listRatioMax.toFixed(2)}× and ≤ ${TARGETS.listP50MaxMs} ms`,
      pass: list.p50 / list.bareP50 <= TARGETS.listRatioMax && list.p50 <= TARGETS.listP50MaxMs,
      note:
        `baseline: the same SELECT with pg + JSON.stringify (query p50 ${list.bareQueryP50.toFixed(1)} ms, ` +
        `stringify p50 ${list.bareStringifyP50.toFixed(1)} ms); server CPU ${list.serverCpuMsPerRequest.toFixed(0)} ms/request`,
    },
    {
      name: `GET by fleet ${ORDER.licences} p99`,
      unit: "ms",
      value: list.p99,
      baseline: list.bareP99,
      ratio: list.p99 / list.bareP99,
      target: `≤ ${TARGETS.listRatioMax.toFixed(2)}×`,
      pass: list.p99 / list.bareP99 <= TARGETS.listRatioMax,
    },
    {
      name: "server peak RSS (steps 1–3)",
      unit: "MB",
      value: peakMb,
      baseline: null,
      ratio: null,
      target: `≤ ${TARGETS.peakRssMaxMb} MB`,
      pass: peakMb <= TARGETS.peakRssMaxMb,
      note: `VmHWM of /proc/<pid>/status, sampled every 100 ms (${res.sampler.samples} samples); RSS when ready: ${(idleMb / 1024).toFixed(0)} MB`,
    },
  );
  Object.assign(raw, {
    ping: ping.runs,
    orderMs: orders.orderRuns,
    bareInsertMs: orders.bareRuns,
    listMs: list.serverRuns,
    bareSelectMs: list.bareRuns,
    listAnswerBytes: list.answerBytes,
    serverIdleRssMb: idleMb / 1024,
    serverRssPeakMbByStep: Object.fromEntries(
      Object.entries(res.sampler.phasePeaksKb).map(([phase, kb]) => [phase, Math.round(kb / 1024)]),
    ),
  });
}

/** Steps 8–9: the same orders with PROVISIONING_MODE=none and webhook (bench/provisioning.ts). */
async function webhookSteps(databaseUrl: string, token: string, figures: Figure[], raw: Record<string, unknown>): Promise<void> {
  const appPort = await freePort();
  const appEnv: NodeJS.ProcessEnv = { ...process.env, PORT: String(appPort), HOST: LOOPBACK };
  delete appEnv.NODE_OPTIONS;
  res.app = Child.start("loopback application", process.execPath, ["--import", "tsx", "bench/bare-app.ts"], { cwd: ROOT, env: appEnv });
  const appBase = `http://${LOOPBACK}:${appPort}`;
  await waitUntilAnswers(`${appBase}/count`, res.app, 60_000);
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  console.log(`\nstarting two servers on one database: PROVISIONING_MODE=none, and webhook → the loopback application ${appBase} …`);
  const none = await startServer(databaseUrl, token, { PROVISIONING_MODE: "none" }, "server (provisioning none)");
  res.server = none.child;
  const webhook = await startServer(
    databaseUrl,
    token,
    { PROVISIONING_MODE: "webhook", PROVISIONING_URL: `${appBase}/webhooks/orange`, PROVISIONING_SECRET: secret },
    "server (provisioning webhook)",
  );
  res.webhookServer = webhook.child;
  const sides: [Side, Side] = [
    { name: "none", base: none.base, pid: none.child.pid },
    { name: "webhook", base: webhook.base, pid: webhook.child.pid },
  ];
  const counts = async () => JSON.parse((await request("GET", `${appBase}/count`)).body.toString("utf8")) as { commands: number; distinct: number };
  const commands = async () => {
    const c = await counts();
    // Under this load the application answers every command at once: none is sent twice.
    if (c.distinct !== c.commands) throw new Error(`the application received ${c.commands} commands under ${c.distinct} webhook-ids`);
    return c.commands;
  };

  const big = WEBHOOK.big;
  console.log(`\n8. UC2 order of ${big.licences} licences, provisioning webhook vs none (${big.warmups} warm-up + ${big.runs} runs each, alternated)`);
  const commandsBefore = await commands();
  const bigOrders = await benchBigOrders(sides, token, res.app.pid, (line) => console.log(line));
  const bigCommands = (await commands()) - commandsBefore;
  if (bigCommands !== big.warmups + big.runs) throw new Error(`the application received ${bigCommands} commands for ${big.warmups + big.runs} orders`);
  const bigMs = { none: median(bigOrders.ms.none), webhook: median(bigOrders.ms.webhook) };

  const small = WEBHOOK.small;
  console.log(
    `\n9. sync UC2 orders of 1 licence, ${small.connections} callers at once, provisioning webhook vs none ` +
      `(${small.warmupSeconds} s warm-up each, then ${small.rounds} rounds × ${small.seconds} s each, alternated)`,
  );
  const smallBefore = await commands();
  const smallOrders = await benchSmallOrders(sides, token, (line) => console.log(line));
  const smallCommands = (await commands()) - smallBefore;
  // More commands than completed orders: the orders still on their way when a round's time was
  // up (autocannon drops their answers; the server carried them out all the same).
  const inFlight = small.connections * (small.rounds + 1);
  if (smallCommands < smallOrders.orders.webhook || smallCommands > smallOrders.orders.webhook + inFlight) {
    throw new Error(`the application received ${smallCommands} commands for ${smallOrders.orders.webhook} orders answered`);
  }
  const { none: n, webhook: w } = smallOrders.median;
  /** Server and PostgreSQL CPU per order over every round of a side (each round weighted by its orders). */
  const cpuPerOrder = (side: Side["name"]) => {
    const mine = smallOrders.rounds.filter((r) => r.side === side);
    const orders = mine.reduce((sum, r) => sum + r.ordersPerSecond * small.seconds, 0);
    const cpu = mine.reduce((sum, r) => sum + (r.serverCpuUsPerOrder + r.postgresCpuUsPerOrder) * r.ordersPerSecond * small.seconds, 0);
    return cpu / orders;
  };
  const smallCpu = { none: cpuPerOrder("none"), webhook: cpuPerOrder("webhook") };

  await res.webhookServer.stop();
  res.webhookServer = undefined;
  await res.server.stop();
  res.server = undefined;
  await res.app.stop(5_000);
  res.app = undefined;

  figures.push(
    {
      name: `UC2 order ${big.licences} licences, webhook (median)`,
      unit: "ms",
      value: bigMs.webhook,
      baseline: bigMs.none,
      ratio: bigMs.webhook / bigMs.none,
      target: `≤ ${TARGETS.webhookBigOrderRatioMax.toFixed(2)}×`,
      pass: bigMs.webhook / bigMs.none <= TARGETS.webhookBigOrderRatioMax,
      note:
        `baseline: the same order to a server with PROVISIONING_MODE=none, same database, alternated; the application (bench/bare-app.ts) ` +
        `answers 200 {} at once; CPU per order (median): server ${median(bigOrders.serverCpuMs.webhook).toFixed(0)} ms vs ` +
        `${median(bigOrders.serverCpuMs.none).toFixed(0)} ms, PostgreSQL ${median(bigOrders.postgresCpuMs.webhook).toFixed(0)} ms vs ` +
        `${median(bigOrders.postgresCpuMs.none).toFixed(0)} ms, application ${median(bigOrders.appCpuMs).toFixed(0)} ms`,
    },
    {
      name: `sync UC2 orders of 1 licence, ${small.connections} callers, webhook`,
      unit: "orders/s",
      value: w.ordersPerSecond,
      baseline: n.ordersPerSecond,
      ratio: w.ordersPerSecond / n.ordersPerSecond,
      target: `≥ ${TARGETS.webhookSmallOrdersRatioMin.toFixed(2)}×`,
      pass: w.ordersPerSecond / n.ordersPerSecond >= TARGETS.webhookSmallOrdersRatioMin,
      note:
        `median of ${small.rounds} rounds of ${small.seconds} s (webhook ${smallOrders.rounds.filter((r) => r.side === "webhook").map((r) => r.ordersPerSecond.toFixed(0)).join(", ")}; ` +
        `none ${smallOrders.rounds.filter((r) => r.side === "none").map((r) => r.ordersPerSecond.toFixed(0)).join(", ")} orders/s), autocannon, each order a new customer; ` +
        `p50 ${w.p50} ms vs ${n.p50} ms, p99 ${w.p99} ms vs ${n.p99} ms; CPU per order: server ${w.serverCpuUsPerOrder.toFixed(0)} µs vs ` +
        `${n.serverCpuUsPerOrder.toFixed(0)} µs, PostgreSQL ${w.postgresCpuUsPerOrder.toFixed(0)} µs vs ${n.postgresCpuUsPerOrder.toFixed(0)} µs; ` +
        `${smallCommands} commands received by the application`,
    },
    {
      // Steadier than orders/s on a shared machine: a round that other work slowed down costs the
      // same CPU per order, and every round counts, not only the median one.
      name: `same, CPU per order (server + PostgreSQL)`,
      unit: "µs",
      value: smallCpu.webhook,
      baseline: smallCpu.none,
      ratio: smallCpu.webhook / smallCpu.none,
      target: "–",
      pass: true,
      info: true,
      note: `all ${small.rounds} rounds of each side, their CPU over their orders; orders/s would be about 1 / this ratio on a CPU-bound machine`,
    },
  );
  Object.assign(raw, { webhook: { bigOrders, bigCommands, smallOrders, smallCommands } });
}

/** Step 7: a 100,000-licence fleet, listed alone then 8 times at once, on a server of its own. */
async function bigListingSteps(databaseUrl: string, token: string, figures: Figure[], raw: Record<string, unknown>): Promise<void> {
  const n = BIG_LIST.licences;
  console.log(`\n7. a fleet of ${n} licences: ${BIG_LIST.sequential} listings one at a time, then ${BIG_LIST.concurrency} at once`);
  // The order is placed through a server of its own: what placing it costs in memory must not
  // count in the peak of the server that lists.
  const seeder = await startServer(databaseUrl, token, { ORDER_MAX_QUANTITY: String(n) }, "seeding server");
  res.server = seeder.child;
  const order = await postOrder(seeder.base, token, `BENCH-BIG-${randomBytes(4).toString("hex")}`, n);
  console.log(`  UC2 order of ${n} licences: ${order.ms.toFixed(0)} ms (fleet ${order.fleetId})`);
  await seeder.child.stop();
  res.server = undefined;

  const server = await startServer(databaseUrl, token, {}, "listing server");
  res.server = server.child;
  const sampler = new RssSampler(server.child.pid, 50);
  res.sampler = sampler;
  const idleMb = (sampler.sample()?.rssKb ?? Number.NaN) / 1024;
  console.log(`  listing server pid ${server.child.pid} ready on ${server.base}, RSS ${idleMb.toFixed(0)} MB`);
  sampler.phase("sequential");
  res.pool ??= new pg.Pool({ connectionString: databaseUrl, max: 2 });
  const big = await benchBigListing(server.base, token, res.pool, order.fleetId, server.child.pid, sampler, LIST_SQL);
  const peakMb = sampler.peakMb();
  sampler.stop();
  res.sampler = undefined;
  await res.server.stop();
  res.server = undefined;

  const sorted = [...big.concurrentMs].sort((a, b) => a - b);
  console.log(
    `  one at a time: p50 ${big.sequentialP50.toFixed(0)} ms (${big.sequentialMs.map((m) => m.toFixed(0)).join(", ")}), ` +
      `bare SELECT + JSON.stringify ${big.bareP50.toFixed(0)} ms, server CPU ${big.serverCpuMsPerListing.toFixed(0)} ms/listing, ` +
      `answer ${(big.answerBytes / 2 ** 20).toFixed(1)} MB; server RSS peak ${big.peakMbAfterSequential.toFixed(0)} MB`,
  );
  console.log(
    `  ${BIG_LIST.concurrency} at once: all done in ${big.concurrentWallMs.toFixed(0)} ms (each ${sorted.map((m) => m.toFixed(0)).join(", ")} ms), ` +
      `server CPU ${big.concurrentCpuMs.toFixed(0)} ms; server RSS peak ${big.peakMbAfterConcurrent.toFixed(0)} MB, VmHWM/peak ${peakMb.toFixed(0)} MB`,
  );

  const tenK = figures.find((f) => f.name === `GET by fleet ${ORDER.licences} p50`);
  figures.push(
    {
      name: `GET by fleet ${n}, ${BIG_LIST.concurrency} at once: server peak RSS`,
      unit: "MB",
      value: peakMb,
      baseline: idleMb,
      ratio: peakMb / idleMb,
      target: `≤ ${TARGETS.bigListPeakRssMaxMb} MB`,
      pass: peakMb <= TARGETS.bigListPeakRssMaxMb,
      note:
        `VmHWM of /proc/<pid>/status of a server started for this step (baseline: its RSS when ready), over ` +
        `${BIG_LIST.sequential} listings one at a time (peak ${big.peakMbAfterSequential.toFixed(0)} MB) then ${BIG_LIST.concurrency} at once; ` +
        `answer ${(big.answerBytes / 2 ** 20).toFixed(1)} MB each`,
    },
    {
      name: `GET by fleet ${n}, one listing (median of ${BIG_LIST.sequential})`,
      unit: "ms",
      value: big.sequentialP50,
      baseline: big.bareP50,
      ratio: big.sequentialP50 / big.bareP50,
      target: "–",
      pass: true,
      info: true,
      note:
        `baseline: the same SELECT with pg + JSON.stringify in the bench process; server CPU ${big.serverCpuMsPerListing.toFixed(0)} ms/listing` +
        (tenK ? `; per 10,000 licences ${(big.sequentialP50 / (n / ORDER.licences)).toFixed(0)} ms vs the 10,000 p50 of this run ${tenK.value.toFixed(0)} ms` : ""),
    },
    {
      name: `GET by fleet ${n}, ${BIG_LIST.concurrency} at once: all done`,
      unit: "ms",
      value: big.concurrentWallMs,
      baseline: null,
      ratio: null,
      target: "–",
      pass: true,
      info: true,
      note: `each listing ${sorted[0]!.toFixed(0)}–${sorted.at(-1)!.toFixed(0)} ms; server CPU ${big.concurrentCpuMs.toFixed(0)} ms for the ${BIG_LIST.concurrency}`,
    },
  );
  raw.bigList = { orderMs: order.ms, serverIdleRssMb: idleMb, peakMb, ...big };
}

function workerConcurrency(): number {
  return Number(extraServerSettings().WORKER_CONCURRENCY ?? loadConfig({}).worker.concurrency);
}

interface BarePostResult {
  ms: number;
  eventsPerSecond: number;
}

/** The events baseline: bench/bare-event-poster.ts POSTs `events` events to the mock, in a child process. */
async function barePosts(gw: MockGateway, events: number, concurrency: number): Promise<BarePostResult> {
  const tokenRes = await request("POST", gw.tokenUrl, {
    headers: {
      authorization: `Basic ${Buffer.from(`${gw.clientId}:${gw.clientSecret}`).toString("base64")}`,
      "content-type": "application/x-www-form-urlencoded",
      accept: "application/json",
    },
    body: "grant_type=client_credentials",
  });
  // One token request per round, subtracted from the server's count.
  const { access_token: token } = JSON.parse(tokenRes.body.toString("utf8")) as { access_token: string };
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    EVENT_URL: `${gw.url}/mba2/userservice/v2/event`,
    TOKEN: token,
    EVENTS: String(events),
    CONCURRENCY: String(concurrency),
    TAG: `bare${Date.now().toString(36)}`,
  };
  delete env.NODE_OPTIONS;
  const child = Child.start("bare event poster", process.execPath, ["--import", "tsx", "bench/bare-event-poster.ts"], { cwd: ROOT, env });
  await child.exited;
  const line = child.output().trim().split(/\r?\n/).pop() ?? "";
  const { ms, failed } = JSON.parse(line) as { ms: number; failed: number };
  if (failed > 0) throw new Error(`bare event poster: ${failed} of ${events} POSTs were not answered 201`);
  return { ms, eventsPerSecond: (events * 1000) / ms };
}

/** Steps 5–6: a server delivering events to the loopback mock of Orange's gateway. */
async function eventSteps(databaseUrl: string, token: string, figures: Figure[], raw: Record<string, unknown>): Promise<void> {
  res.gateway = await TappedGateway.start();
  const gw = res.gateway.gw;
  const asyncOrdering = asyncOrderingAvailable();
  const settings: Record<string, string> = { ROLE: "all", ...orangeEnv(gw) };
  if (asyncOrdering) settings.ORDERING_MODE = "async";
  console.log(
    `\nstarting the events server (ROLE=all, ORANGE_* → mock gateway ${gw.url}${asyncOrdering ? ", ORDERING_MODE=async" : ""}) …`,
  );
  const server = await startServer(databaseUrl, token, settings, "events server");
  res.server = server.child;
  const sampler = new RssSampler(server.child.pid);
  console.log(`  pid ${server.child.pid} ready on ${server.base}`);
  res.db = createDb(databaseUrl, { poolMax: EVENTS.transactions + 1 });

  const printThroughput = (t: ThroughputResult) =>
    console.log(
      `  ${t.events} events: ${t.eventsPerSecond.toFixed(0)} events/s from first enqueue to last arrival ` +
        `(${t.totalMs.toFixed(0)} ms = enqueue ${t.enqueueMs.toFixed(0)} ms + delivery after commit ${t.deliveryMs.toFixed(0)} ms → ` +
        `${t.deliveryEventsPerSecond.toFixed(0)} events/s); token requests ${t.tokenRequests}; ` +
        `CPU ms: enqueue (bench) ${t.enqueueCpuMs.toFixed(0)}, PostgreSQL ${t.postgresCpuMs.toFixed(0)} (of which enqueue ${t.postgresEnqueueCpuMs.toFixed(0)}), ` +
        `server ${t.serverCpuMs.toFixed(0)}, mock ${t.mockCpuMs.toFixed(0)}; machine ${(t.machineBusy * 100).toFixed(0)} % busy`,
    );
  const total = EVENTS.fleets * EVENTS.perFleet;
  console.log(`\n5. ${total} events queued at once (${EVENTS.fleets} fleets × ${EVENTS.perFleet}, ${EVENTS.transactions} transactions) → mock gateway`);
  const tokensAtStart = gw.tokenRequests;
  // Several rounds (the machine is shared and noisy): the figure is the median round by delivery
  // rate, each round preceded by the bare baseline so that both see the same machine.
  const rounds: { burst: ThroughputResult; bare: BarePostResult }[] = [];
  for (let round = 1; round <= EVENTS.rounds; round++) {
    const bare = await barePosts(gw, total, workerConcurrency());
    const burst = await benchThroughput(res.db, res.gateway, server.child.pid, {
      fleets: EVENTS.fleets,
      perFleet: EVENTS.perFleet,
      transactions: EVENTS.transactions,
      timeoutMs: EVENTS.timeoutMs,
    });
    console.log(`  round ${round}: bare undici POSTs of ${total} events at concurrency ${workerConcurrency()}: ${bare.eventsPerSecond.toFixed(0)} ev/s`);
    printThroughput(burst);
    rounds.push({ burst, bare });
  }
  const sortedRounds = [...rounds].sort((a, b) => a.burst.deliveryEventsPerSecond - b.burst.deliveryEventsPerSecond);
  const { burst, bare } = sortedRounds[Math.floor(sortedRounds.length / 2)]!;
  // The baseline's own token requests (one per round) are not the server's.
  const tokensAfterBurst = gw.tokenRequests - tokensAtStart - EVENTS.rounds;
  console.log(`  1 fleet × ${EVENTS.serialEvents} (serial: per-fleet order), for information`);
  const serial = await benchThroughput(res.db, res.gateway, server.child.pid, {
    fleets: 1,
    perFleet: EVENTS.serialEvents,
    transactions: 1,
    timeoutMs: EVENTS.timeoutMs,
  });
  printThroughput(serial);

  let latency: LatencyResult | undefined;
  if (asyncOrdering) {
    console.log(`\n6. async UC2 order of 1 licence → completedStateNotification at the mock (${LATENCY.warmups} warm-up + ${LATENCY.orders} orders)`);
    latency = await benchAsyncOrderLatency(server.base, token, res.gateway, LATENCY);
    console.log(
      `  p50 ${latency.p50.toFixed(1)} ms, p99 ${latency.p99.toFixed(1)} ms, max ${latency.max.toFixed(1)} ms (acknowledged answer p50 ${latency.ackP50.toFixed(1)} ms)`,
    );
  } else {
    console.log("\n6. async order latency: skipped: async ordering mode not available");
  }
  const tokenRequests = gw.tokenRequests - tokensAtStart - EVENTS.rounds;
  const peakMb = sampler.peakMb();
  sampler.stop();

  figures.push(
    {
      name: `events delivery, ${total} queued at once`,
      unit: "ev/s",
      value: burst.deliveryEventsPerSecond,
      baseline: bare.eventsPerSecond,
      ratio: burst.deliveryEventsPerSecond / bare.eventsPerSecond,
      target: `≥ ${TARGETS.eventsPerSecondMin}`,
      pass: burst.deliveryEventsPerSecond >= TARGETS.eventsPerSecondMin,
      note:
        `${EVENTS.fleets} fleets × ${EVENTS.perFleet} committed in ${EVENTS.transactions} transactions, last commit → last event at the mock; ` +
        `median of ${EVENTS.rounds} rounds (${rounds.map((r) => r.burst.deliveryEventsPerSecond.toFixed(0)).join(", ")} ev/s); ` +
        `baseline: bare undici POSTs of as many events to the same mock at concurrency ${workerConcurrency()}, same round ` +
        `(${rounds.map((r) => r.bare.eventsPerSecond.toFixed(0)).join(", ")} ev/s); each event once, per-fleet order kept; CPU per event: PostgreSQL ` +
        `${((burst.postgresCpuMs - burst.postgresEnqueueCpuMs) / burst.events).toFixed(2)} ms, server ${(burst.serverCpuMs / burst.events).toFixed(2)} ms, ` +
        `mock ${(burst.mockCpuMs / burst.events).toFixed(2)} ms; machine ${(burst.machineBusy * 100).toFixed(0)} % busy`,
    },
    {
      name: `  same, from first enqueue (info)`,
      unit: "ev/s",
      value: burst.eventsPerSecond,
      baseline: null,
      ratio: null,
      target: "–",
      pass: true,
      info: true,
      note:
        `first enqueue → last event at the mock: ${burst.totalMs.toFixed(0)} ms (enqueue ${burst.enqueueMs.toFixed(0)} ms + delivery ${burst.deliveryMs.toFixed(0)} ms); ` +
        `enqueue CPU per event: bench ${(burst.enqueueCpuMs / burst.events).toFixed(2)} ms, PostgreSQL ${(burst.postgresEnqueueCpuMs / burst.events).toFixed(2)} ms ` +
        `(each event one prepared statement; graphile add_job once per fleet and transaction)`,
    },
    {
      name: `events throughput 1×${EVENTS.serialEvents} (info)`,
      unit: "ev/s",
      value: serial.eventsPerSecond,
      baseline: null,
      ratio: null,
      target: "–",
      pass: true,
      info: true,
      note: `one fleet is delivered serially; delivery after commit ${serial.deliveryEventsPerSecond.toFixed(0)} ev/s (${(serial.deliveryMs / serial.events).toFixed(2)} ms/event)`,
    },
    {
      name: "token requests (events steps)",
      unit: "",
      value: tokenRequests,
      baseline: null,
      ratio: null,
      target: `= ${TARGETS.tokenRequests}`,
      pass: tokenRequests === TARGETS.tokenRequests,
      note: `${tokensAfterBurst} during the ${total}-event burst; ${tokenRequests} over every event of steps 5–6`,
    },
  );
  if (latency) {
    figures.push(
      {
        name: "async order → event p50",
        unit: "ms",
        value: latency.p50,
        baseline: null,
        ratio: null,
        target: `≤ ${TARGETS.asyncOrderP50MaxMs} ms`,
        pass: latency.p50 <= TARGETS.asyncOrderP50MaxMs,
        note: `POST productOrder (ORDERING_MODE=async, 1 licence) → completedStateNotification received by the mock; ${latency.orders} sequential orders; acknowledged answer p50 ${latency.ackP50.toFixed(1)} ms`,
      },
      {
        name: "async order → event p99",
        unit: "ms",
        value: latency.p99,
        baseline: null,
        ratio: null,
        target: "–",
        pass: true,
        info: true,
      },
    );
  }
  Object.assign(raw, {
    events: { burst, bare, rounds, serial, tokenRequests, eventsServerPeakRssMb: Math.round(peakMb) },
    asyncOrder: latency ? { runsMs: latency.runs } : "skipped: async ordering mode not available",
  });
}

/** Steps 11–15: under load, 16 concurrent callers (bench/load.ts). */
async function loadSteps(databaseUrl: string, token: string, figures: Figure[], raw: Record<string, unknown>): Promise<void> {
  res.gateway ??= await TappedGateway.start();
  const tap = res.gateway;
  const gw = tap.gw;
  const c = LOAD.concurrency;
  const metricsToken = randomBytes(12).toString("hex");
  const start = async (mode: "sync" | "async") => {
    const settings = { ROLE: "all", ...orangeEnv(gw), ORDERING_MODE: mode, UPDATE_MODE: mode, METRICS_TOKEN: metricsToken };
    console.log(`\nstarting the load server (ROLE=all, ORDERING_MODE=UPDATE_MODE=${mode}, ORANGE_* → mock gateway) …`);
    return startServer(databaseUrl, token, settings, `load server (${mode})`);
  };
  const line = (r: Awaited<ReturnType<typeof loadRound>>) =>
    `orders ${r.orders.perSecond.toFixed(0)}/s (p50 ${r.orders.p50} ms, p99 ${r.orders.p99} ms), updates ${r.updates.perSecond.toFixed(0)}/s, ` +
    `GETs ${r.gets.perSecond.toFixed(0)}/s, requests ${requestsPerSecond(r).toFixed(0)}/s` +
    (r.orderToEvent ? `; order → event p50 ${r.orderToEvent.p50} ms, p99 ${r.orderToEvent.p99} ms` : "");

  // Both servers run from the start: the sync and async rounds alternate (steps 11 and 12), so
  // that a change of the machine's speed during the run (shared cores) falls on both sides, and
  // each target row is read off the median of its rounds' ratios, each against the sync round
  // just before it.
  const sync = await start("sync");
  res.syncServer = sync.child;
  const asyncServer = await start("async");
  res.server = asyncServer.child;
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 2 });
  const pairs: { sync: LoadReport; async: LoadReport; inline: number; queued: number }[] = [];
  let small, bareTx, rows;
  try {
    console.log(
      `\n11–12. load mode, ${c} virtual users, sync then async modes, ${LOAD.rounds} rounds each, alternating (each ${LOAD.seconds} s after ${LOAD.warmupSeconds} s of warm-up)`,
    );
    console.log(`  VACUUM (ANALYZE) of the database first: ${(await settleDatabase(databaseUrl)).toFixed(0)} ms`);
    // One measured round of a server, after a warm-up of its own: the other server's round left
    // this one idle (its pool's idle connections closed, their statements to prepare again).
    const measured = async (server: typeof sync, mode: "sync" | "async", round: number) => {
      const modes = { ordering: mode, update: mode };
      await loadRound(server.base, token, gw, modes, LOAD.warmupSeconds);
      const cpu = cpuMeter(server.child.pid);
      // Async only: how its acknowledged requests were carried out (the metrics, read around it).
      const runsBefore = mode === "async" ? await acknowledgedRuns(server.base, metricsToken) : { inline: 0, queued: 0 };
      const report = await loadRound(server.base, token, gw, modes, LOAD.seconds);
      const runs = mode === "async" ? await acknowledgedRuns(server.base, metricsToken) : runsBefore;
      const inline = runs.inline - runsBefore.inline;
      const queued = runs.queued - runsBefore.queued;
      console.log(`  round ${round}, ${`${mode}:`.padEnd(6)} ${line(report)}`);
      const carried =
        mode === "async" ? `; acknowledged requests carried out inline ${inline}, queued as jobs ${queued} (${((100 * inline) / Math.max(1, inline + queued)).toFixed(0)} % inline)` : "";
      console.log(`    ${cpu.perRequest(report)}${carried}`);
      return { report, inline, queued };
    };
    for (let round = 1; round <= LOAD.rounds; round++) {
      const syncRound = await measured(sync, "sync", round);
      const asyncRound = await measured(asyncServer, "async", round);
      pairs.push({ sync: syncRound.report, async: asyncRound.report, inline: asyncRound.inline, queued: asyncRound.queued });
    }

    console.log(`\n13. sync UC2 orders of 1 licence, ${c} callers at once vs bare pg transactions writing the same rows (${LOAD.small.seconds} s each)`);
    rows = await captureOrderRows(sync.base, token, pool);
    console.log(`  one order writes ${rows.rowCount} rows: ${rows.tables.map((t) => `${t.table} ${(JSON.parse(t.json) as unknown[]).length}`).join(", ")}`);
    await smallOrdersRound(sync.base, token, sync.child.pid, LOAD.small.warmupSeconds);
    await bareTransactions(databaseUrl, rows, LOAD.small.warmupSeconds);
    small = await smallOrdersRound(sync.base, token, sync.child.pid, LOAD.small.seconds);
    bareTx = await bareTransactions(databaseUrl, rows, LOAD.small.seconds);
    console.log(
      `  server ${small.ordersPerSecond.toFixed(0)} orders/s (p50 ${small.p50} ms, p99 ${small.p99} ms; CPU per order server ${small.serverCpuUsPerOrder.toFixed(0)} µs, ` +
        `PostgreSQL ${small.postgresCpuUsPerOrder.toFixed(0)} µs); bare ${bareTx.perSecond.toFixed(0)} tx/s (p50 ${bareTx.p50.toFixed(1)} ms, p99 ${bareTx.p99.toFixed(1)} ms)`,
    );
  } catch (err) {
    await asyncServer.child.stop();
    res.server = undefined;
    throw err;
  } finally {
    await pool.end();
    await sync.child.stop();
    res.syncServer = undefined;
  }

  res.db = createDb(databaseUrl, { poolMax: EVENTS.transactions + 1 });
  const rounds: { burst: ThroughputResult; bare: BarePostResult }[] = [];
  try {
    const total = EVENTS.fleets * EVENTS.perFleet;
    console.log(`\n14–15. ${total} events written at once (${EVENTS.fleets} fleets × ${EVENTS.perFleet}, ${EVENTS.transactions} transactions) → mock gateway, ${EVENTS.rounds} rounds`);
    for (let round = 1; round <= EVENTS.rounds; round++) {
      const bare = await barePosts(gw, total, workerConcurrency());
      const burst = await benchThroughput(res.db, tap, asyncServer.child.pid, {
        fleets: EVENTS.fleets,
        perFleet: EVENTS.perFleet,
        transactions: EVENTS.transactions,
        timeoutMs: EVENTS.timeoutMs,
      });
      console.log(
        `  round ${round}: first enqueue → last arrival ${burst.eventsPerSecond.toFixed(0)} ev/s (enqueue ${burst.enqueueMs.toFixed(0)} ms, ` +
          `PostgreSQL ${(burst.postgresEnqueueCpuMs / burst.events).toFixed(3)} ms CPU per event), delivery alone ${burst.deliveryEventsPerSecond.toFixed(0)} ev/s, ` +
          `bare POSTs ${bare.eventsPerSecond.toFixed(0)} ev/s`,
      );
      rounds.push({ burst, bare });
    }
  } finally {
    await res.db.close();
    res.db = undefined;
    await asyncServer.child.stop();
    res.server = undefined;
  }
  const pickBy = <T,>(items: T[], key: (t: T) => number) => [...items].sort((a, b) => key(a) - key(b))[Math.floor(items.length / 2)]!;
  const e2e = pickBy(rounds, (r) => r.burst.eventsPerSecond / r.burst.deliveryEventsPerSecond);
  const del = pickBy(rounds, (r) => r.burst.deliveryEventsPerSecond / r.bare.eventsPerSecond);
  // Each load row: the round whose ratio is the median of the rounds' (all of them in its note).
  type Pair = (typeof pairs)[number];
  const p50Ratio = (p: Pair) => p.async.orderToEvent!.p50 / p.sync.orders.p50;
  const p99Ratio = (p: Pair) => p.async.orderToEvent!.p99 / p.sync.orders.p99;
  const rpsRatio = (p: Pair) => requestsPerSecond(p.async) / requestsPerSecond(p.sync);
  const ratios = (f: (p: Pair) => number) => `median round of ${pairs.map((p) => `${f(p).toFixed(2)}×`).join(", ")}`;
  const byP50 = pickBy(pairs, p50Ratio);
  const byP99 = pickBy(pairs, p99Ratio);
  const byRps = pickBy(pairs, rpsRatio);
  const syncLoad = pickBy(pairs, (p) => requestsPerSecond(p.sync)).sync;
  const syncRps = requestsPerSecond(byRps.sync);
  const asyncRps = requestsPerSecond(byRps.async);
  const loadNote = `simulator load mode (order 1–3 licences, GET by fleet, suspend, reactivate per virtual user), ${c} users, ${LOAD.rounds} rounds of ${LOAD.seconds} s, each after ${LOAD.warmupSeconds} s of warm-up, sync and async alternating`;
  figures.push(
    {
      name: `sync load, ${c} callers: orders`,
      unit: "orders/s",
      value: syncLoad.orders.perSecond,
      baseline: null,
      ratio: null,
      target: "–",
      pass: true,
      info: true,
      note: `${loadNote}; the median sync round: order p50 ${syncLoad.orders.p50} ms, p99 ${syncLoad.orders.p99} ms; requests ${requestsPerSecond(syncLoad).toFixed(0)}/s`,
    },
    {
      name: `async load, ${c} callers: order → event p50`,
      unit: "ms",
      value: byP50.async.orderToEvent!.p50,
      baseline: byP50.sync.orders.p50,
      ratio: p50Ratio(byP50),
      target: `≤ ${LOAD_TARGETS.eventP50VsSyncP50Max}× sync order p50`,
      pass: p50Ratio(byP50) <= LOAD_TARGETS.eventP50VsSyncP50Max,
      note:
        `POST productOrder (async) → its completedStateNotification at the mock; baseline: the sync order p50 of the sync round before it; ${ratios(p50Ratio)}; ` +
        `in that round async orders ${byP50.async.orders.perSecond.toFixed(0)}/s, acknowledged p50 ${byP50.async.orders.p50} ms`,
    },
    {
      name: `async load, ${c} callers: order → event p99`,
      unit: "ms",
      value: byP99.async.orderToEvent!.p99,
      baseline: byP99.sync.orders.p99,
      ratio: p99Ratio(byP99),
      target: `≤ ${LOAD_TARGETS.eventP99VsSyncP99Max}× sync order p99`,
      pass: p99Ratio(byP99) <= LOAD_TARGETS.eventP99VsSyncP99Max,
      note: `baseline: the sync order p99 of the sync round before it; ${ratios(p99Ratio)}`,
    },
    {
      name: `async load, ${c} callers: requests`,
      unit: "req/s",
      value: asyncRps,
      baseline: syncRps,
      ratio: asyncRps / syncRps,
      target: `≥ ${LOAD_TARGETS.asyncRequestsRatioMin.toFixed(2)}×`,
      pass: asyncRps >= LOAD_TARGETS.asyncRequestsRatioMin * syncRps,
      note:
        `orders + GETs + updates per second, async vs the sync round before it; ${ratios(rpsRatio)}; in that round async orders ${byRps.async.orders.perSecond.toFixed(0)}/s vs ` +
        `${byRps.sync.orders.perSecond.toFixed(0)}/s, updates ${byRps.async.updates.perSecond.toFixed(0)}/s vs ${byRps.sync.updates.perSecond.toFixed(0)}/s`,
    },
    {
      name: `sync UC2 orders of 1 licence, ${c} callers`,
      unit: "orders/s",
      value: small.ordersPerSecond,
      baseline: bareTx.perSecond,
      ratio: small.ordersPerSecond / bareTx.perSecond,
      target: `≥ ${LOAD_TARGETS.smallOrdersVsBareMin.toFixed(2)}×`,
      pass: small.ordersPerSecond >= LOAD_TARGETS.smallOrdersVsBareMin * bareTx.perSecond,
      note:
        `autocannon, each order a new customer, p50 ${small.p50} ms, p99 ${small.p99} ms; baseline: bare pg transactions at ${c} connections, each writing a copy of the ` +
        `${rows.rowCount} rows one such order wrote (${rows.tables.map((t) => t.table).join(", ")}; one INSERT per table), p50 ${bareTx.p50.toFixed(1)} ms, p99 ${bareTx.p99.toFixed(1)} ms; ` +
        `CPU per order: server ${small.serverCpuUsPerOrder.toFixed(0)} µs, PostgreSQL ${small.postgresCpuUsPerOrder.toFixed(0)} µs`,
    },
    {
      name: `events from first enqueue (load)`,
      unit: "ev/s",
      value: e2e.burst.eventsPerSecond,
      baseline: e2e.burst.deliveryEventsPerSecond,
      ratio: e2e.burst.eventsPerSecond / e2e.burst.deliveryEventsPerSecond,
      target: `≥ ${LOAD_TARGETS.enqueueVsDeliveryMin.toFixed(2)}×`,
      pass: e2e.burst.eventsPerSecond >= LOAD_TARGETS.enqueueVsDeliveryMin * e2e.burst.deliveryEventsPerSecond,
      note:
        `${EVENTS.fleets} fleets × ${EVENTS.perFleet} in ${EVENTS.transactions} transactions, first enqueue → last arrival vs last commit → last arrival, same round; median round of ` +
        `${rounds.map((r) => (r.burst.eventsPerSecond / r.burst.deliveryEventsPerSecond).toFixed(2)).join(", ")}; PostgreSQL CPU per event written ` +
        `${(e2e.burst.postgresEnqueueCpuMs / e2e.burst.events).toFixed(3)} ms`,
    },
    {
      name: `events delivery vs bare POSTs (load)`,
      unit: "ev/s",
      value: del.burst.deliveryEventsPerSecond,
      baseline: del.bare.eventsPerSecond,
      ratio: del.burst.deliveryEventsPerSecond / del.bare.eventsPerSecond,
      target: `≥ ${LOAD_TARGETS.deliveryVsBareMin.toFixed(2)}×`,
      pass: del.burst.deliveryEventsPerSecond >= LOAD_TARGETS.deliveryVsBareMin * del.bare.eventsPerSecond,
      note:
        `bare undici POSTs of as many events to the same mock at concurrency ${workerConcurrency()}, same round; median round of ` +
        `${rounds.map((r) => (r.burst.deliveryEventsPerSecond / r.bare.eventsPerSecond).toFixed(2)).join(", ")}; CPU per event: server ` +
        `${(del.burst.serverCpuMs / del.burst.events).toFixed(2)} ms, PostgreSQL ${((del.burst.postgresCpuMs - del.burst.postgresEnqueueCpuMs) / del.burst.events).toFixed(2)} ms`,
    },
  );
  raw.load = { rounds: pairs, small, bareTx, rows: { rowCount: rows.rowCount, tables: rows.tables.map((t) => t.table) }, eventRounds: rounds };
}

main()
  .catch(async (err: unknown) => {
    console.error("bench failed:", err);
    process.exitCode = 1;
    await cleanup();
  })
  .finally(() => {
    // Nothing may keep the process alive (autocannon, pg) once everything is stopped.
    process.exit(process.exitCode ?? 0);
  });
