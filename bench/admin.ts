// The operators' listings, details and search box (`BENCH_ONLY=admin npm run bench`): a store the
// size of a busy partner (100,000 licences across 1,000 fleets, 50,000 events with their delivery
// attempts, 2,500 orders, 5,000 updates and their history), written with plain SQL into a
// database of its own, then the real server (`node dist/main.js`, ADMIN_TOKEN set) asked for each
// listing's first page, each detail and the search box, one request after the other. Baseline:
// a bare SELECT of the same page through pg (same WHERE, ORDER BY and LIMIT, no count, no
// rendering), measured in the same run.

import pg from "pg";
import { applyMigrations } from "../src/db/migrate.js";
import { percentile, request, type Child, type Figure } from "./support.js";

export const ADMIN = { requests: 30, warmups: 3, p50MaxMs: 50 };
const STORE = { customers: 500, fleets: 1_000, licencesPerFleet: 100, events: 50_000, updates: 5_000, failedOrders: 500, uc3Orders: 500 };
const DATABASE = "bench_admin";
const TOKEN = "bench-admin-token-5d1f0c";
const OFFERS = ["MBA-CAISSE-PRO", "MBA-CAISSE-PREMIUM", "MBA-CAISSE-ESSENTIEL"];

/** An id of the given prefix whose order is the order of `n` (a SQL expression), like the server's time-ordered ids. */
const id = (prefix: string, n: string) => `'${prefix}_' || lpad((${n})::text, 20, '0')`;
const iso = (column: string) => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/** The store, in SQL: each statement a bulk INSERT … SELECT FROM generate_series. */
export function seedStatements(): string[] {
  const s = STORE;
  const licences = s.fleets * s.licencesPerFleet;
  const base = `timestamptz '2026-06-01T00:00:00Z'`;
  return [
    `INSERT INTO customer (id, orange_ref, trading_name, organization_code, created_at, updated_at)
     SELECT ${id("cu", "i")}, 'CUST-' || lpad(i::text, 6, '0'),
            'Boulangerie ' || (ARRAY['Martin','Bernard','Dubois','Thomas','Robert','Richard','Petit','Durand','Leroy','Moreau'])[1 + i % 10] || ' ' || i,
            lpad((41234567800000 + i)::text, 14, '0'), ${base} + i * interval '1 hour', ${base} + i * interval '1 hour'
       FROM generate_series(1, ${s.customers}) i`,
    `INSERT INTO contact (id, customer_id, orange_ref, role, given_name, family_name, email, created_at, updated_at)
     SELECT ${id("ct", "i")}, ${id("cu", "i")}, 'CT-' || lpad(i::text, 6, '0'), 'customerFleetManager', 'Claire', 'Contact ' || i,
            'contact' || i || '@bench.example', ${base} + i * interval '1 hour', ${base} + i * interval '1 hour'
       FROM generate_series(1, ${s.customers}) i`,
    // Orders: UC1 per customer, a UC2 per fleet (it made the fleet), UC3s, and failed UC2s with their reason.
    `INSERT INTO product_order (id, idempotency_key, orange_ref, request_hash, request, response, state, use_case, failure_reason,
                                customer_id, fleet_id, quantity, created_at, completed_at, answer_mode)
     SELECT ${id("po", "n")}, 'ORD-' || lpad(n::text, 7, '0'), 'ORD-' || lpad(n::text, 7, '0'), 'h', '{}'::json, '{}'::json,
            (CASE WHEN kind = 'failed' THEN 'failed' ELSE 'completed' END)::"RequestState",
            CASE kind WHEN 'uc1' THEN 'UC1' WHEN 'uc3' THEN 'UC3' ELSE 'UC2' END,
            CASE WHEN kind = 'failed' THEN 'offer "MBA-OLD" is not in the partner''s catalogue' END,
            CASE WHEN kind = 'failed' THEN NULL ELSE ${id("cu", "1 + k % " + s.customers)} END,
            CASE WHEN kind IN ('uc2', 'uc3') THEN ${id("fl", "1 + k % " + s.fleets)} END,
            CASE WHEN kind = 'uc1' THEN NULL ELSE ${s.licencesPerFleet} END,
            ${base} + n * interval '10 minutes', ${base} + n * interval '10 minutes' + interval '40 milliseconds', 'sync'
       FROM (SELECT row_number() OVER () AS n, kind, k FROM (
               SELECT 'uc1' AS kind, k FROM generate_series(0, ${s.customers - 1}) k
               UNION ALL SELECT 'uc2', k FROM generate_series(0, ${s.fleets - 1}) k
               UNION ALL SELECT 'uc3', k FROM generate_series(0, ${s.uc3Orders - 1}) k
               UNION ALL SELECT 'failed', k FROM generate_series(0, ${s.failedOrders - 1}) k) o) o`,
    `INSERT INTO fleet (id, customer_id, offer_code, created_at, updated_at)
     SELECT ${id("fl", "k + 1")}, ${id("cu", "1 + k % " + s.customers)}, (ARRAY['${OFFERS.join("','")}'])[1 + k % 3],
            ${base} + k * interval '30 minutes', ${base} + k * interval '30 minutes'
       FROM generate_series(0, ${s.fleets - 1}) k`,
    // Licences: 90 % active, 7 % suspended, 3 % terminated; one in five with an end user.
    `INSERT INTO licence (id, fleet_id, order_id, state, external_state, offer_code, end_user, created_at, updated_at, terminated_at,
                          end_user_id, end_user_email)
     SELECT ${id("us", "n")}, f.id, o.id,
            (CASE WHEN n % 100 < 3 THEN 'terminated' WHEN n % 100 < 10 THEN 'inactive' ELSE 'active' END)::"LicenceState",
            (CASE WHEN n % 100 < 3 THEN 'deleted' WHEN n % 100 < 10 THEN 'suspended' END)::"ExternalState",
            f.offer_code,
            CASE WHEN n % 5 = 0 THEN jsonb_build_object('id', ${id("eu", "n")}, 'givenName', 'User', 'familyName', 'N' || n,
                                                          'email', 'user' || n || '@bench.example') END,
            f.created_at, f.created_at, CASE WHEN n % 100 < 3 THEN f.created_at + interval '1 day' END,
            CASE WHEN n % 5 = 0 THEN ${id("eu", "n")} END, CASE WHEN n % 5 = 0 THEN 'user' || n || '@bench.example' END
       FROM generate_series(1, ${licences}) n
       JOIN fleet f ON f.id = ${id("fl", `1 + (n - 1) / ${s.licencesPerFleet}`)}
       JOIN product_order o ON o.fleet_id = f.id AND o.use_case = 'UC2'`,
    `INSERT INTO licence_update (id, idempotency_key, orange_ref, request_hash, request, response, state, failure_reason, licence_ids,
                                 created_at, completed_at, answer_mode)
     SELECT ${id("upd", "i")}, 'UPD-' || lpad(i::text, 7, '0'), 'UPD-' || lpad(i::text, 7, '0'), 'h', '{}'::json, '{}'::json,
            (CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END)::"RequestState",
            CASE WHEN i % 10 = 0 THEN 'licence us_x is terminated; it cannot be reactivated' END,
            ARRAY(SELECT ${id("us", `1 + (i * 37 + j * 101) % ${licences}`)} FROM generate_series(0, i % 3) j),
            ${base} + i * interval '5 minutes', ${base} + i * interval '5 minutes' + interval '20 milliseconds', 'sync'
       FROM generate_series(1, ${s.updates}) i`,
    // Events: 50 per fleet; 1 % parked, 1 % pending, the rest delivered at their first attempt.
    `INSERT INTO outbox_event (id, seq, api, type, ordering_key, fleet_id, order_id, update_id, body, state, attempts, next_attempt_at,
                               last_status, created_at, delivered_at, dead_at)
     SELECT ${id("ev", "n")}, n, 'userservice', 'updateNotification', f, f,
            CASE WHEN n % 50 = 1 THEN ${id("po", `${s.customers} + 1 + (n / 50) % ${s.fleets}`)} END,
            CASE WHEN n % 50 <> 1 THEN ${id("upd", `1 + n % ${s.updates}`)} END,
            json_build_object('id', ${id("ev", "n")}, 'type', 'updateNotification', 'time', ${iso("at")}, 'resource', json_build_object()),
            (CASE WHEN n % 100 = 7 THEN 'dead' WHEN n % 100 = 8 THEN 'pending' ELSE 'delivered' END)::"OutboxState",
            1, at, CASE WHEN n % 100 = 7 THEN 400 ELSE 201 END, at,
            CASE WHEN n % 100 NOT IN (7, 8) THEN at + interval '15 milliseconds' END,
            CASE WHEN n % 100 = 7 THEN at + interval '15 milliseconds' END
       FROM (SELECT n, ${id("fl", `1 + n % ${s.fleets}`)} AS f, timestamptz '2026-06-01T00:00:00Z' + n * interval '30 seconds' AS at
               FROM generate_series(1, ${s.events}) n) e`,
    `SELECT setval(pg_get_serial_sequence('outbox_event', 'seq'), ${s.events})`,
    `INSERT INTO event_delivery_attempt (event_id, attempt, worker_id, started_at, finished_at, outcome, status, request_id)
     SELECT id, 1, 'bench', created_at, created_at + interval '15 milliseconds',
            (CASE WHEN state = 'dead' THEN 'park' ELSE 'delivered' END)::"DeliveryAttemptOutcome", last_status, 'mock-' || seq
       FROM outbox_event WHERE state <> 'pending'`,
    // History: each request received, carried out, answered; each licence an update named, before and after.
    `INSERT INTO history_entry (at, kind, request_id, customer_id, fleet_id, actor, data)
     SELECT r.created_at + d.offset_ms * interval '1 millisecond', d.kind, r.id,
            CASE WHEN d.kind IN ('request.completed', 'request.failed') THEN r.customer_id END,
            CASE WHEN d.kind IN ('request.completed', 'request.failed') THEN r.fleet_id END,
            CASE WHEN d.kind = 'request.received' THEN 'orange' END,
            CASE d.kind WHEN 'request.received' THEN jsonb_build_object('orangeRef', r.orange_ref, 'mode', 'sync', 'httpRequestId', 'req-' || r.id)
                        WHEN 'request.answered' THEN jsonb_build_object('state', r.state)
                        ELSE jsonb_strip_nulls(jsonb_build_object('useCase', r.use_case, 'licences', r.quantity, 'reason', r.failure_reason)) END
       FROM product_order r,
            LATERAL (VALUES (0, 'request.received'), (30, CASE WHEN r.state = 'failed' THEN 'request.failed' ELSE 'request.completed' END),
                            (40, 'request.answered')) d(offset_ms, kind)`,
    `INSERT INTO history_entry (at, kind, request_id, customer_id, fleet_id, licence_id, actor, data)
     SELECT r.created_at + d.offset_ms * interval '1 millisecond', d.kind, r.id, NULL, NULL, NULL,
            CASE WHEN d.kind = 'request.received' THEN 'orange' END,
            jsonb_build_object('state', r.state)
       FROM licence_update r, LATERAL (VALUES (0, 'request.received'), (20, 'request.answered')) d(offset_ms, kind)`,
    `INSERT INTO history_entry (at, kind, request_id, licence_id, data)
     SELECT r.created_at + interval '10 milliseconds', 'licence.changed', r.id, l,
            jsonb_build_object('source', 'update', 'before', jsonb_build_object('state', 'active'),
                               'after', jsonb_build_object('state', 'inactive', 'externalState', 'suspended'))
       FROM licence_update r, unnest(r.licence_ids) l WHERE r.state = 'completed'`,
    // A store that has lived: autovacuum has run (visibility map set, so counts read indexes only).
    `VACUUM ANALYZE`,
  ];
}

interface Case {
  name: string;
  path: string;
  /** The same page, bare. */
  bare: string;
}

function cases(): Case[] {
  const s = STORE;
  const customer = `cu_${"42".padStart(20, "0")}`;
  const fleet = `fl_${"421".padStart(20, "0")}`;
  const licence = `us_${"42100".padStart(20, "0")}`;
  const endUser = `eu_${"42100".padStart(20, "0")}`;
  const order = `po_${String(s.customers + 421).padStart(20, "0")}`;
  const page = "LIMIT 20";
  return [
    { name: "customers", path: "/admin/v1/customers", bare: `SELECT * FROM customer ORDER BY created_at DESC, id DESC ${page}` },
    {
      name: "customers?name=",
      path: "/admin/v1/customers?name=dubois%2042",
      bare: `SELECT * FROM customer WHERE trading_name ILIKE '%dubois 42%' OR name ILIKE '%dubois 42%' ORDER BY created_at DESC, id DESC ${page}`,
    },
    { name: "customers?organizationCode=", path: "/admin/v1/customers?organizationCode=41234567800042", bare: `SELECT * FROM customer WHERE organization_code = '41234567800042' ORDER BY created_at DESC, id DESC ${page}` },
    { name: "fleets?customerId=", path: `/admin/v1/fleets?customerId=${customer}`, bare: `SELECT * FROM fleet WHERE customer_id = '${customer}' ORDER BY created_at DESC, id DESC ${page}` },
    { name: "fleets?offerCode=", path: `/admin/v1/fleets?offerCode=${OFFERS[1]}`, bare: `SELECT * FROM fleet WHERE offer_code = '${OFFERS[1]}' ORDER BY created_at DESC, id DESC ${page}` },
    { name: "licences", path: "/admin/v1/licences", bare: `SELECT * FROM licence ORDER BY id DESC ${page}` },
    { name: "licences?state=active", path: "/admin/v1/licences?state=active", bare: `SELECT * FROM licence WHERE state = 'active' ORDER BY id DESC ${page}` },
    { name: "licences?state=terminated", path: "/admin/v1/licences?state=terminated", bare: `SELECT * FROM licence WHERE state = 'terminated' ORDER BY id DESC ${page}` },
    { name: "licences?offerCode=", path: `/admin/v1/licences?offerCode=${OFFERS[2]}`, bare: `SELECT * FROM licence WHERE offer_code = '${OFFERS[2]}' ORDER BY id DESC ${page}` },
    { name: "licences?fleetId=", path: `/admin/v1/licences?fleetId=${fleet}`, bare: `SELECT * FROM licence WHERE fleet_id = '${fleet}' ORDER BY id DESC ${page}` },
    {
      name: "licences?customerId=",
      path: `/admin/v1/licences?customerId=${customer}`,
      bare: `SELECT l.* FROM licence l JOIN fleet f ON f.id = l.fleet_id WHERE f.customer_id = '${customer}' ORDER BY l.id DESC ${page}`,
    },
    {
      name: "licences?endUserEmail=",
      path: "/admin/v1/licences?endUserEmail=user42100@bench.example",
      bare: `SELECT * FROM licence WHERE end_user_email = 'user42100@bench.example' ORDER BY id DESC ${page}`,
    },
    { name: "orders", path: "/admin/v1/orders", bare: `SELECT * FROM product_order ORDER BY created_at DESC, id DESC ${page}` },
    { name: "orders?state=failed", path: "/admin/v1/orders?state=failed", bare: `SELECT * FROM product_order WHERE state = 'failed' ORDER BY created_at DESC, id DESC ${page}` },
    {
      name: "orders?useCase=&from=&to=",
      path: "/admin/v1/orders?useCase=UC3&from=2026-06-10T00:00:00Z&to=2026-06-20T00:00:00Z",
      bare: `SELECT * FROM product_order WHERE use_case = 'UC3' AND created_at >= '2026-06-10T00:00:00Z' AND created_at < '2026-06-20T00:00:00Z' ORDER BY created_at DESC, id DESC ${page}`,
    },
    { name: "orders?orangeRef=", path: "/admin/v1/orders?orangeRef=ORD-0000921", bare: `SELECT * FROM product_order WHERE orange_ref = 'ORD-0000921' ORDER BY created_at DESC, id DESC ${page}` },
    { name: "updates?state=completed", path: "/admin/v1/updates?state=completed", bare: `SELECT * FROM licence_update WHERE state = 'completed' ORDER BY created_at DESC, id DESC ${page}` },
    {
      name: "updates?licenceId=",
      path: `/admin/v1/updates?licenceId=${licence}`,
      bare: `SELECT * FROM licence_update WHERE licence_ids @> ARRAY['${licence}'] ORDER BY created_at DESC, id DESC ${page}`,
    },
    { name: "search?q=<Orange order ref>", path: "/admin/v1/search?q=ORD-0000921", bare: `SELECT * FROM product_order WHERE orange_ref = 'ORD-0000921'` },
    {
      // The console's first page: its bare equivalent is the same counts by state, the one statement that reads most.
      name: "overview (console's first page)",
      path: "/admin/v1/overview",
      bare:
        "SELECT 'orders', state::text, count(*) FROM product_order GROUP BY state UNION ALL SELECT 'updates', state::text, count(*) FROM licence_update GROUP BY state " +
        "UNION ALL SELECT 'events', state::text, count(*) FROM outbox_event GROUP BY state UNION ALL SELECT 'commands', state::text, count(*) FROM provisioning_command GROUP BY state",
    },
    { name: "search?q=<licence id>", path: `/admin/v1/search?q=${licence}`, bare: `SELECT * FROM licence WHERE id = '${licence}'` },
    { name: "search?q=<end user id>", path: `/admin/v1/search?q=${endUser}`, bare: `SELECT * FROM licence WHERE end_user_id = '${endUser}'` },
    {
      name: "orders/{id} (detail, timeline)",
      path: `/admin/v1/orders/${order}`,
      bare: `SELECT * FROM history_entry WHERE request_id = '${order}' ORDER BY at DESC LIMIT 100`,
    },
    {
      name: "fleets/{id} (detail, timeline)",
      path: `/admin/v1/fleets/${fleet}`,
      bare: `SELECT e.*, a.* FROM outbox_event e JOIN event_delivery_attempt a ON a.event_id = e.id WHERE e.fleet_id = '${fleet}' ORDER BY e.seq DESC LIMIT 100`,
    },
    {
      name: "licences/{id} (detail, history)",
      path: `/admin/v1/licences/${licence}`,
      bare: `SELECT * FROM history_entry WHERE licence_id = '${licence}' ORDER BY at DESC LIMIT 100`,
    },
  ];
}

export interface AdminStepOptions {
  /** The embedded PostgreSQL's URL (any database of it). */
  postgresUrl: string;
  startServer: (databaseUrl: string, settings: Record<string, string>) => Promise<{ child: Child; base: string }>;
  /** The server is handed over to be stopped by the bench's cleanup whatever happens. */
  track: (child: Child | undefined) => void;
}

/** Builds the store, starts the server on it, measures; figures for the table, raw runs for the report. */
export async function adminSteps(opts: AdminStepOptions): Promise<{ figures: Figure[]; raw: Record<string, unknown> }> {
  const adminUrl = new URL(opts.postgresUrl);
  const url = new URL(opts.postgresUrl);
  url.pathname = `/${DATABASE}`;
  const boot = new pg.Client({ connectionString: adminUrl.toString() });
  await boot.connect();
  try {
    await boot.query(`DROP DATABASE IF EXISTS ${DATABASE}`);
    await boot.query(`CREATE DATABASE ${DATABASE}`);
  } finally {
    await boot.end();
  }
  await applyMigrations(url.toString());
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  try {
    const started = performance.now();
    for (const statement of seedStatements()) await pool.query(statement);
    const counts = (
      await pool.query<{ licences: number; fleets: number; events: number; attempts: number; orders: number; updates: number; history: number }>(
        `SELECT (SELECT count(*) FROM licence)::int AS licences, (SELECT count(*) FROM fleet)::int AS fleets,
                (SELECT count(*) FROM outbox_event)::int AS events, (SELECT count(*) FROM event_delivery_attempt)::int AS attempts,
                (SELECT count(*) FROM product_order)::int AS orders, (SELECT count(*) FROM licence_update)::int AS updates,
                (SELECT count(*) FROM history_entry)::int AS history`,
      )
    ).rows[0]!;
    console.log(
      `  store written in ${((performance.now() - started) / 1000).toFixed(1)} s: ${counts.licences} licences, ${counts.fleets} fleets, ` +
        `${counts.events} events (${counts.attempts} attempts), ${counts.orders} orders, ${counts.updates} updates, ${counts.history} history entries`,
    );

    const server = await opts.startServer(url.toString(), { ADMIN_TOKEN: TOKEN, ROLE: "api" });
    opts.track(server.child);
    console.log(`  server pid ${server.child.pid} ready on ${server.base}`);
    const headers = { authorization: `Bearer ${TOKEN}`, accept: "application/json" };
    const figures: Figure[] = [];
    const raw: Record<string, unknown> = { store: counts, runs: {} as Record<string, { server: number[]; bare: number[] }> };
    for (const c of cases()) {
      const serverMs: number[] = [];
      const bareMs: number[] = [];
      let total = "";
      for (let i = 0; i < ADMIN.warmups + ADMIN.requests; i++) {
        const res = await request("GET", `${server.base}${c.path}`, { headers });
        if (res.status !== 200) throw new Error(`GET ${c.path}: ${res.status} ${res.body.toString("utf8").slice(0, 300)}`);
        total = String(res.headers["x-total-count"] ?? "");
        if (i >= ADMIN.warmups) serverMs.push(res.ms);
      }
      for (let i = 0; i < ADMIN.warmups + ADMIN.requests; i++) {
        const t0 = performance.now();
        await pool.query(c.bare);
        if (i >= ADMIN.warmups) bareMs.push(performance.now() - t0);
      }
      const p50 = percentile(serverMs, 50);
      const bare = percentile(bareMs, 50);
      console.log(
        `  ${c.name.padEnd(34)} p50 ${p50.toFixed(1).padStart(6)} ms (p99 ${percentile(serverMs, 99).toFixed(1)} ms)  ` +
          `bare ${bare.toFixed(2).padStart(6)} ms${total ? `  X-Total-Count ${total}` : ""}`,
      );
      (raw.runs as Record<string, unknown>)[c.name] = { server: serverMs.map((m) => Number(m.toFixed(2))), bare: bareMs.map((m) => Number(m.toFixed(2))) };
      figures.push({
        name: `admin ${c.name} p50`,
        unit: "ms",
        value: p50,
        baseline: bare,
        ratio: p50 / bare,
        target: `≤ ${ADMIN.p50MaxMs} ms`,
        pass: p50 <= ADMIN.p50MaxMs,
        note: `GET ${c.path}${total ? ` (X-Total-Count ${total})` : ""}; baseline: ${c.bare.replace(/\s+/g, " ").slice(0, 160)}`,
      });
    }
    await server.child.stop();
    opts.track(undefined);
    return { figures, raw };
  } finally {
    await pool.end();
  }
}
