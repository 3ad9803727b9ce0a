/**
 * Orange's side under load: UC2 orders (a new customer and fleet each, Orange references unique
 * per order) posted without pause by a few concurrent callers over real HTTP, every answer
 * recorded. For tests that break the database or the server meanwhile and then check that every
 * acknowledged order was carried out exactly once. Free of vitest, so that `npm run chaos` (a
 * plain script) uses it too.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { request } from "undici";
import type { MockGateway } from "../../src/simulator/gateway.js";

export interface OrderCall {
  /** Orange's order reference (externalReference.id); unique per call. */
  ref: string;
  quantity: number;
  startedAt: number;
  endedAt: number;
  /** HTTP status, or undefined when no answer came (see `error`). */
  status?: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body?: any;
  retryAfter?: string;
  /** Transport failure or no answer within `answerTimeoutMs`. */
  error?: string;
}

export interface OrderLoad {
  /** Every call so far, in completion order. */
  readonly calls: readonly OrderCall[];
  /** Calls sent and not ended yet. */
  inFlight(): number;
  /** Calls answered 201 `acknowledged` (async mode) or `completed` (sync mode). */
  accepted(): OrderCall[];
  /** Stops posting; resolves once the calls in flight have ended. */
  stop(): Promise<void>;
}

export interface OrderLoadOptions {
  url: string;
  token: string;
  /** Concurrent callers (default 2). */
  concurrency?: number;
  /** Pause of each caller between two calls (default 20 ms). */
  pauseMs?: number;
  /** A call without an answer by then counts as an error (default 15 s). */
  answerTimeoutMs?: number;
  /** Licences per order: 1 to this (default 3). */
  maxQuantity?: number;
}

export const ORDER_PATH = "/productordering/v2/productOrder";

export function uc2Order(ref: string, quantity: number) {
  const orange = (id: string) => ({ type: "orange", id });
  return {
    externalReference: orange(ref),
    category: "production",
    orderDate: "2026-05-02T09:20:00.000Z",
    customer: { externalReference: orange(`CUS-${ref}`), tradingName: "Boulangerie Martin" },
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { name: "Caisse Pro", externalReference: orange("MBA-CAISSE-PRO") },
        productRef: { userServiceQuantity: quantity },
      },
    ],
  };
}

export function startOrderLoad(options: OrderLoadOptions): OrderLoad {
  const calls: OrderCall[] = [];
  const concurrency = options.concurrency ?? 2;
  const pauseMs = options.pauseMs ?? 20;
  const answerTimeoutMs = options.answerTimeoutMs ?? 15_000;
  const maxQuantity = options.maxQuantity ?? 3;
  const run = randomBytes(3).toString("hex");
  let next = 0;
  let pending = 0;
  let stopping = false;

  async function one(): Promise<void> {
    const ref = `LOAD-${run}-${++next}`;
    const quantity = 1 + (next % maxQuantity);
    const call: OrderCall = { ref, quantity, startedAt: Date.now(), endedAt: 0 };
    pending++;
    try {
      const res = await request(`${options.url}${ORDER_PATH}`, {
        method: "POST",
        headers: { authorization: `Bearer ${options.token}`, "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(uc2Order(ref, quantity)),
        headersTimeout: answerTimeoutMs,
        bodyTimeout: answerTimeoutMs,
      });
      call.status = res.statusCode;
      const retryAfter = res.headers["retry-after"];
      if (typeof retryAfter === "string") call.retryAfter = retryAfter;
      const text = await res.body.text();
      try {
        call.body = JSON.parse(text);
      } catch {
        call.body = text;
      }
    } catch (err) {
      call.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    }
    pending--;
    call.endedAt = Date.now();
    calls.push(call);
  }

  const callers = Array.from({ length: concurrency }, async () => {
    while (!stopping) {
      await one();
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
    }
  });

  return {
    calls,
    inFlight: () => pending,
    accepted: () =>
      calls.filter((c) => c.status === 201 && (c.body?.state === "acknowledged" || c.body?.state === "completed")),
    async stop() {
      stopping = true;
      await Promise.all(callers);
    },
  };
}

/**
 * What is left to do in the database: orders not yet completed (any other state counts: the load
 * only orders a known offer), events not yet delivered, graphile jobs of any kind.
 */
export async function pendingWork(databaseUrl: string): Promise<{ orders: number; events: number; jobs: number }> {
  const rows = await query<{ orders: number; events: number; jobs: number }>(
    databaseUrl,
    `SELECT (SELECT count(*)::int FROM product_order WHERE state <> 'completed') AS orders,
            (SELECT count(*)::int FROM outbox_event WHERE state <> 'delivered') AS events,
            (SELECT count(*)::int FROM graphile_worker.jobs) AS jobs`,
  );
  return rows[0] ?? { orders: -1, events: -1, jobs: -1 };
}

/**
 * Once the work has settled (see pendingWork): every order the load got acknowledged, and every
 * order the database holds, was carried out exactly once (one order per Orange reference,
 * completed, exactly the licences ordered, in a fleet of its own), and its completion event
 * reached the gateway, re-deliveries carrying the same event id.
 */
export async function expectOrdersCarriedOutOnce(databaseUrl: string, load: OrderLoad, gateway: MockGateway): Promise<void> {
  const orders = await query<{ id: string; orange_ref: string; state: string; licences: number; fleet_licences: number }>(
    databaseUrl,
    `SELECT o.id, o.orange_ref, o.state,
            (SELECT count(*)::int FROM licence l WHERE l.order_id = o.id) AS licences,
            (SELECT count(*)::int FROM licence l WHERE l.fleet_id = o.fleet_id) AS fleet_licences
       FROM product_order o`,
  );
  assert.equal(new Set(orders.map((o) => o.orange_ref)).size, orders.length, "one order per Orange reference");
  const sent = new Map(load.calls.map((c): [string, OrderCall] => [c.ref, c]));
  const eventIds = new Map<string, Set<string>>();
  for (const call of gateway.delivered()) {
    const body = call.body as { id: string; type: string; resource: { id: string } };
    if (body.type !== "completedStateNotification") continue;
    eventIds.set(body.resource.id, (eventIds.get(body.resource.id) ?? new Set<string>()).add(body.id));
  }
  for (const o of orders) {
    const quantity = sent.get(o.orange_ref)?.quantity;
    assert.notEqual(quantity, undefined, `order ${o.id} (${o.orange_ref}) was never sent by the load`);
    assert.deepEqual(
      { id: o.id, state: o.state, licences: o.licences, fleet: o.fleet_licences, events: eventIds.get(o.id)?.size },
      { id: o.id, state: "completed", licences: quantity, fleet: quantity, events: 1 },
    );
  }
  const stored = new Set(orders.map((o) => o.id));
  const lost = load.accepted().filter((c) => !stored.has(c.body.id as string));
  assert.deepEqual(lost, [], "acknowledged orders missing from the database");
}

async function query<R extends pg.QueryResultRow>(databaseUrl: string, text: string): Promise<R[]> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    return (await client.query<R>(text)).rows;
  } finally {
    await client.end();
  }
}
