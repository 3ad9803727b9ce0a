// Load steps of `npm run bench` (bench/run.ts, BENCH_ONLY=load): the server under 16 concurrent
// callers, each figure against a baseline measured in the same run.
//
//   11. the simulator's load mode (src/simulator/load.ts: order, GET by fleet, suspend, reactivate,
//       per virtual user) against a server in sync modes: orders/s, order p50/p99, requests/s
//   12. the same against a server in async modes: order → event (completedStateNotification at
//       the mock gateway) p50/p99 vs the sync order p50/p99, requests/s vs sync
//   13. sync UC2 orders of 1 licence, 16 callers at once (autocannon) vs bare `pg` transactions
//       writing the same rows (copied from an order the server wrote) at the same concurrency
//   14–15. a backlog of events written with the outbox (bench/events.ts): first enqueue → last
//       arrival vs delivery alone, and delivery vs bare POSTs to the same mock

import { randomBytes } from "node:crypto";
import autocannon from "autocannon";
import pg from "pg";
import { runLoad, type LoadReport } from "../src/simulator/load.js";
import type { MockGateway } from "../src/simulator/gateway.js";
import { uc2Request } from "../test/support/examples.js";
import { postgresCpuMs } from "./events.js";
import { percentile, readCpuMs, request } from "./support.js";

export const LOAD = {
  concurrency: 16,
  warmupSeconds: 2,
  seconds: 10,
  /** Sync and async rounds of `seconds` each, alternating (steps 11–12). */
  rounds: 3,
  small: { warmupSeconds: 2, seconds: 5 },
  offers: ["MBA-CAISSE-PRO"],
  requestTimeoutMs: 30_000,
};

export const LOAD_TARGETS = {
  /** Async order → event p50 ≤ this × the sync order p50 (same run). */
  eventP50VsSyncP50Max: 2,
  /** Async order → event p99 ≤ this × the sync order p99 (same run). */
  eventP99VsSyncP99Max: 3,
  /** Async requests/s ≥ this × sync requests/s. */
  asyncRequestsRatioMin: 0.6,
  /** Small sync orders/s ≥ this × bare transactions/s. */
  smallOrdersVsBareMin: 0.5,
  /** Events/s from first enqueue ≥ this × events/s of delivery alone. */
  enqueueVsDeliveryMin: 0.6,
  /** Delivery events/s ≥ this × bare POSTs/s. */
  deliveryVsBareMin: 0.4,
};

/** The server's and PostgreSQL's CPU from now on, per request of a load round. */
export function cpuMeter(pid: number | undefined) {
  const server = pid === undefined ? Number.NaN : readCpuMs(pid);
  const postgres = postgresCpuMs();
  return {
    perRequest(r: LoadReport): string {
      const n = requestsPerSecond(r) * (r.durationMs / 1000);
      const us = (ms: number) => ((ms * 1000) / n).toFixed(0);
      return `CPU per request: server ${us((pid === undefined ? Number.NaN : readCpuMs(pid)) - server)} µs, PostgreSQL ${us(postgresCpuMs() - postgres)} µs`;
    },
  };
}

/** partner_requests_acknowledged_total of a server, by how the requests were carried out. */
export async function acknowledgedRuns(base: string, metricsToken: string): Promise<{ inline: number; queued: number }> {
  const res = await request("GET", `${base}/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } });
  const text = res.body.toString("utf8");
  const sum = (run: string) =>
    [...text.matchAll(new RegExp(`^partner_requests_acknowledged_total\\{[^}]*run="${run}"[^}]*\\} (\\S+)$`, "gm"))].reduce((a, m) => a + Number(m[1]), 0);
  return { inline: sum("inline"), queued: sum("queued") };
}

/** Requests of every kind per second (orders, GETs, updates). */
export function requestsPerSecond(r: LoadReport): number {
  return r.orders.perSecond + r.gets.perSecond + r.updates.perSecond;
}

/** One run of the simulator's load mode; a failed request is a broken bench, not a figure. */
export async function loadRound(
  base: string,
  token: string,
  gateway: MockGateway,
  modes: LoadReport["modes"],
  seconds: number,
): Promise<LoadReport> {
  const report = await runLoad({
    target: base,
    auth: { kind: "bearer", token },
    concurrency: LOAD.concurrency,
    durationMs: seconds * 1000,
    offers: LOAD.offers,
    modes,
    gateway,
    requestTimeoutMs: LOAD.requestTimeoutMs,
  });
  const errors = report.orders.errors + report.updates.errors + report.gets.errors + (report.orderToEvent?.errors ?? 0);
  if (errors > 0) {
    throw new Error(`load (${modes.ordering}): ${errors} failed requests: ${JSON.stringify(report.errors.byStatus)} ${report.errors.sample.join(" | ")}`);
  }
  return report;
}

/**
 * VACUUM (ANALYZE) of the whole database before a round, as pgbench does before its runs: the
 * dead rows and statistics left by the steps before (tens of thousands of rows written in bulk)
 * are not billed to the round, whose CPU figures count every PostgreSQL process, autovacuum's
 * workers included. What the round writes itself stays its own to clean.
 */
export async function settleDatabase(databaseUrl: string): Promise<number> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const started = performance.now();
  try {
    await client.query("VACUUM (ANALYZE)");
  } finally {
    await client.end();
  }
  return performance.now() - started;
}

// ---------------------------------------------------------------------------------------------
// 13. small sync orders vs bare transactions writing the same rows

export interface SmallOrdersRound {
  ordersPerSecond: number;
  p50: number;
  p99: number;
  serverCpuUsPerOrder: number;
  postgresCpuUsPerOrder: number;
}

function smallOrder(tag: string, n: number) {
  const body = uc2Request();
  body.externalReference.id = `BENCH-LOAD-${tag}-${n}`;
  body.customer.externalReference.id = `BENCH-LOAD-CUST-${tag}-${n}`;
  body.orderItem[0]!.productRef.userServiceQuantity = 1;
  return body;
}

/** Sync UC2 orders of 1 licence, each for a new customer, `LOAD.concurrency` callers (autocannon). */
export async function smallOrdersRound(base: string, token: string, pid: number, seconds: number): Promise<SmallOrdersRound> {
  const tag = randomBytes(4).toString("hex");
  let n = 0;
  let completed = 0;
  const wrong: string[] = [];
  const cpu = readCpuMs(pid);
  const pgCpu = postgresCpuMs();
  const result = await autocannon({
    url: `${base}/productordering/v2/productOrder`,
    connections: LOAD.concurrency,
    duration: seconds,
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
    requests: [
      {
        setupRequest: (req) => ({ ...req, body: JSON.stringify(smallOrder(tag, ++n)) }),
        onResponse: (status, body) => {
          if (status === 201 && (JSON.parse(body) as { state?: string }).state === "completed") completed++;
          else if (wrong.length < 3) wrong.push(`${status} ${body.slice(0, 300)}`);
        },
      },
    ],
  });
  if (result.errors > 0 || result.timeouts > 0 || result.non2xx > 0 || wrong.length > 0) {
    throw new Error(`small orders: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx: ${wrong.join(" | ")}`);
  }
  return {
    ordersPerSecond: completed / seconds,
    p50: result.latency.p50,
    p99: result.latency.p99,
    serverCpuUsPerOrder: ((readCpuMs(pid) - cpu) * 1000) / completed,
    postgresCpuUsPerOrder: ((postgresCpuMs() - pgCpu) * 1000) / completed,
  };
}

/** The rows one order wrote, per table (FK order), as JSON; the columns the database numbers itself left out. */
export interface OrderRows {
  tables: { table: string; columns: string[]; json: string }[];
  /** Quoted strings (ids, Orange references) that must be fresh in every copy. */
  unique: string[];
  rowCount: number;
}

/** Places one sync order and reads back every row it wrote. */
export async function captureOrderRows(base: string, token: string, pool: pg.Pool): Promise<OrderRows> {
  const r = await request("POST", `${base}/productordering/v2/productOrder`, {
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify(smallOrder(`probe${randomBytes(4).toString("hex")}`, 0)),
  });
  const answer = JSON.parse(r.body.toString("utf8")) as { id?: string; state?: string };
  if (r.status !== 201 || answer.state !== "completed" || !answer.id) throw new Error(`probe order answered ${r.status}: ${r.body.toString().slice(0, 300)}`);
  const { rows: orderRows } = await pool.query<{ customer_id: string; fleet_id: string }>(`SELECT customer_id, fleet_id FROM product_order WHERE id = $1`, [answer.id]);
  const { customer_id: customer, fleet_id: fleet } = orderRows[0]!;
  const where: [string, string][] = [
    ["customer", "id = $1"],
    ["fleet", "id = $2"],
    ["contact", "customer_id = $1"],
    ["product_order", "id = $3"],
    ["licence", "order_id = $3"],
    ["provisioning_command", "request_id = $3"],
    ["outbox_event", "order_id = $3 OR fleet_id = $2"],
    ["history_entry", "request_id = $3 OR customer_id = $1 OR fleet_id = $2"],
  ];
  const tables: OrderRows["tables"] = [];
  const unique = new Set<string>();
  let rowCount = 0;
  for (const [table, condition] of where) {
    const { rows } = await pool.query<{ rows: Record<string, unknown>[] | null }>(
      `SELECT json_agg(t) AS rows FROM ${table} t WHERE $1::text || $2::text || $3::text IS NOT NULL AND (${condition})`,
      [customer, fleet, answer.id],
    );
    const found = rows[0]?.rows ?? [];
    if (found.length === 0) continue;
    const { rows: cols } = await pool.query<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = $1 AND coalesce(column_default, '') NOT LIKE 'nextval%'
        ORDER BY ordinal_position`,
      [table],
    );
    for (const row of found) {
      for (const key of ["id", "orange_ref", "idempotency_key"]) {
        const v = row[key];
        if (typeof v === "string" && v.length >= 4) unique.add(JSON.stringify(v));
      }
    }
    rowCount += found.length;
    tables.push({ table, columns: cols.map((c) => c.column_name), json: JSON.stringify(found) });
  }
  return { tables, unique: [...unique].sort((a, b) => b.length - a.length), rowCount };
}

/**
 * The baseline: `LOAD.concurrency` lanes, each running transactions that write a fresh copy of
 * the probe order's rows (one INSERT … json_populate_recordset per table, BEGIN and COMMIT), for
 * `seconds`. The client work is a string substitution per table.
 */
export async function bareTransactions(databaseUrl: string, rows: OrderRows, seconds: number): Promise<{ perSecond: number; p50: number; p99: number }> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: LOAD.concurrency });
  const statements = rows.tables.map(
    ({ table, columns }) =>
      `INSERT INTO ${table} (${columns.map((c) => `"${c}"`).join(", ")}) SELECT ${columns.map((c) => `"${c}"`).join(", ")} FROM json_populate_recordset(null::${table}, $1::json)`,
  );
  const tag = randomBytes(3).toString("hex");
  let copy = 0;
  const latencies: number[] = [];
  const deadline = performance.now() + seconds * 1000;
  try {
    await Promise.all(
      Array.from({ length: LOAD.concurrency }, async () => {
        while (performance.now() < deadline) {
          const suffix = `_${tag}${(++copy).toString(36)}"`;
          const started = performance.now();
          const client = await pool.connect();
          try {
            await client.query("BEGIN");
            for (let i = 0; i < rows.tables.length; i++) {
              let json = rows.tables[i]!.json;
              for (const u of rows.unique) json = json.replaceAll(u, u.slice(0, -1) + suffix);
              await client.query(statements[i]!, [json]);
            }
            await client.query("COMMIT");
          } finally {
            client.release();
          }
          latencies.push(performance.now() - started);
        }
      }),
    );
  } finally {
    await pool.end();
  }
  return { perSecond: latencies.length / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}
