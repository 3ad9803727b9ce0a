import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ORDER_URL, uc2 } from "./support/fixtures.js";
import { ADMIN_TOKEN, startProvisioned, type Provisioned } from "./support/provisioned.js";

/**
 * What a small sync order costs PostgreSQL in webhook mode, counted in round trips, not in time:
 * each is an exchange (a wait) on both sides whatever it carries, and a webhook order pays for two
 * transactions (the command durable before it is sent, then settled). The statements are those
 * the program's pool sent while Orange's call was under way.
 */

const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN}` };

/**
 * Records the statements sent through `pool`'s connections (its text, or the prepared statement's
 * text), grouped by round trip: the connections are pipelined, so a statement sent while others
 * are still unanswered on its connection goes in their round trip; one sent on an idle connection
 * starts a new one (a wait for PostgreSQL).
 */
function recordRoundTrips(pool: pg.Pool): { trips: string[][]; stop(): void } {
  const clients = new WeakSet<pg.Client>();
  const onAcquire = (client: pg.PoolClient) => clients.add(client as unknown as pg.Client);
  pool.on("acquire", onAcquire);
  const trips: string[][] = [];
  const unanswered = new WeakMap<pg.Client, { n: number; trip: string[] }>();
  const original = pg.Client.prototype.query;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- pg's query has a dozen overloads; the recorder passes every call through
  (pg.Client.prototype as any).query = function (this: pg.Client, ...args: any[]) {
    const result = (original as (...a: unknown[]) => unknown).apply(this, args);
    if (clients.has(this)) {
      const first = args[0] as string | { text: string };
      const text = (typeof first === "string" ? first : first.text).replace(/\s+/g, " ").trim();
      let state = unanswered.get(this);
      if (state === undefined || state.n === 0) {
        state = { n: 0, trip: [] };
        unanswered.set(this, state);
        trips.push(state.trip);
      }
      state.trip.push(text);
      state.n++;
      const answered = state;
      // Counted off before the caller hears the answer (this handler is attached first).
      void (result as Promise<unknown>).then(
        () => answered.n--,
        () => answered.n--,
      );
    }
    return result;
  };
  return {
    trips,
    stop() {
      pg.Client.prototype.query = original;
      pool.off("acquire", onAcquire);
    },
  };
}

describe("webhook mode, sync: the round trips of a small order", () => {
  let p: Provisioned;
  beforeAll(async () => {
    p = await startProvisioned({ ORDERING_MODE: "sync" });
    // A first order opens the pool's connections and warms what is lazily set up.
    const warm = await p.t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    expect(warm.status, warm.text).toBe(201);
  });
  afterAll(async () => p?.close());

  it("a UC2 of one licence for a new customer: two transactions, 6 round trips, the history as before", async () => {
    const { t } = p;
    const calls = p.front.calls.length;
    const recorder = recordRoundTrips(t.store.pool);
    let res;
    try {
      res = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    } finally {
      recorder.stop();
    }
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe("completed");
    const id = res.body.id as string;
    const trips = recorder.trips;
    const shown = trips.map((trip, i) => `#${i + 1} ${trip.map((text) => text.slice(0, 100)).join(" | ")}`).join("\n");
    // First transaction, 2 round trips: BEGIN with the request claimed and its lanes locked, then
    // looked at on a snapshot taken after the locks, and the plan's one read (four statements,
    // pipelined); the command inserted with its first attempt and its history entries, with
    // COMMIT. Then the settling, 4: BEGIN with the command and its request locked, and the
    // order's first write (customer: the application carried the order out and the plan is
    // known, so it is applied behind the lock); its two others (fleet, licence); the command
    // settled with its attempt, the request's outcome and its history entries, with COMMIT (the
    // next commands of its lanes, none here, are woken once it has committed).
    expect(trips, shown).toHaveLength(6);
    expect(trips.filter((trip) => trip[0]!.startsWith("BEGIN;")), shown).toHaveLength(2);
    expect(trips.filter((trip) => trip.at(-1) === "COMMIT"), shown).toHaveLength(2);
    expect(trips[0]!.map((text) => text.split(" ").slice(0, 2).join(" ")), shown).toEqual([
      "BEGIN;SET LOCAL",
      "INSERT INTO",
      "SELECT pg_advisory_xact_lock($1::int,",
      "SELECT 1",
      "SELECT id",
    ]);
    expect(trips[0]![3], shown).toMatch(/^SELECT 1 FROM provisioning_command p WHERE p\.lanes &&/);
    expect(trips[0]![4], shown).toMatch(/^SELECT id FROM customer WHERE orange_ref = \$1 FOR UPDATE/);
    expect(trips[1], shown).toHaveLength(2);
    expect(trips[1]![0], shown).toMatch(/^WITH also_0 AS \( INSERT INTO history_entry .* INSERT INTO provisioning_command /);
    expect(trips[2]![0], shown).toMatch(/^BEGIN;/);
    expect(trips[2]![1], shown).toMatch(/^SELECT c\.id/);
    expect(trips[2]![2], shown).toMatch(/^INSERT INTO customer/);
    expect(trips[5], shown).toHaveLength(2);
    expect(trips[5]![0], shown).toMatch(/^WITH also_0 AS \(UPDATE product_order .* UPDATE provisioning_command SET/);
    expect(trips[5]![1], shown).toBe("COMMIT");

    // The same order as before: the store, the application, the history.
    const order = await t.db.productOrder.findUniqueOrThrow({ where: { id } });
    expect(order.state).toBe("completed");
    expect(await t.db.licence.count({ where: { orderId: id } })).toBe(1);
    const command = await t.db.provisioningCommand.findFirstOrThrow({ where: { requestId: id }, include: { attemptRows: true } });
    expect(command.state).toBe("done");
    expect(command.attemptRows.map((a) => [a.attempt, a.outcome, a.status])).toEqual([[1, "done", 200]]);
    expect(p.front.calls.slice(calls).map((c) => c.headers["webhook-id"])).toEqual([command.id]);
    const rows = await t.db.historyEntry.findMany({ where: { requestId: id }, orderBy: { id: "asc" } });
    expect(rows.map((r) => r.kind)).toEqual(["request.received", "command.prepared", "command.attempt", "request.completed", "request.answered"]);
    const timeline = await t.call("GET", `/admin/v1/orders/${id}/timeline`, undefined, ADMIN);
    expect(timeline.body.map((e: { kind: string }) => e.kind)).toEqual(rows.map((r) => r.kind));
  });
});
