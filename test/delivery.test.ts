import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";
import pg from "pg";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { retryDelayMs } from "../src/lib/backoff.js";
import { createEventOperatorService } from "../src/events/operator.js";
import { createOrangeEventClient } from "../src/events/orange-client.js";
import { addJob } from "../src/events/queue.js";
import { createTokenCache } from "../src/events/token-cache.js";
import { DELIVERY_LOCK_NAMESPACE, enqueueEvent } from "../src/events/outbox.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { clock, enqueue, eventRow, ids, jobsOf, startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";

let database: TestDatabase;
let gw: MockGateway;
const running: WorkerHarness[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  gw = await startMockGateway();
});
beforeEach(() => {
  gw.reset();
});
afterEach(async () => {
  for (const child of children.splice(0)) child.kill("SIGKILL");
  await Promise.all(running.splice(0).map((w) => w.stop()));
});
afterAll(async () => {
  await gw?.close();
  await database?.drop();
});

async function worker(overrides: Parameters<typeof startWorker>[2] = {}): Promise<WorkerHarness> {
  const w = await startWorker(gw, database.url, overrides);
  running.push(w);
  return w;
}

const db = () => database.prisma;
const store = () => database.db;
const bodiesFor = (fleetId: string) =>
  gw.received.filter((r) => (r.body as { resource?: { fleet?: string } }).resource?.fleet === fleetId);
const deliveredIds = (fleetId: string) =>
  bodiesFor(fleetId)
    .filter((r) => r.status === 201)
    .map((r) => (r.body as { id: string }).id);

describe("retryDelayMs", () => {
  const policy = { baseMs: 1_000, maxMs: 60_000, maxAttempts: 12, maxAgeMs: 86_400_000 };

  it("draws a delay up to a ceiling that doubles with each attempt and stops at the cap (full jitter)", () => {
    expect(retryDelayMs(policy, 1, undefined, () => 0.999)).toBe(999);
    expect(retryDelayMs(policy, 3, undefined, () => 0.5)).toBe(2_000);
    expect(retryDelayMs(policy, 30, undefined, () => 0.999)).toBe(59_940);
    expect(retryDelayMs(policy, 5, undefined, () => 0)).toBe(0);
  });

  it("never retries sooner than Orange's Retry-After", () => {
    expect(retryDelayMs(policy, 1, 30_000, () => 0.5)).toBe(30_000);
    expect(retryDelayMs(policy, 8, 1_000, () => 0.5)).toBe(30_000); // the drawn delay is longer
  });
});

describe("delivery of outbox events", () => {
  it("delivers a committed event with its envelope, to the offer's URL, with a bearer token", async () => {
    await worker();
    const event = await enqueue(store(), {
      fleetId: "fl_a",
      orderId: "po_a",
      resource: { id: "po_a", state: "completed", fleet: "fl_a" },
    });

    const row = await waitFor("delivery", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "delivered" ? r : undefined;
    });
    const [call] = gw.delivered();
    expect(call?.path).toBe("/mba2/productordering/v2/event");
    expect(call?.token).toMatch(/^mock-token-/);
    expect(call?.headers.authorization).toBe(`Bearer ${call?.token}`);
    expect(call?.body).toEqual(event.body);
    expect(call?.body).toEqual(row.body);
    // Sent byte for byte as written: {id, type, time, resource}, keys in that order.
    expect(call?.text).toBe(JSON.stringify(event.body));
    expect(row).toMatchObject({ attempts: 1, lastStatus: 201, lastRequestId: call?.requestId, lastError: null });
    expect(row.deliveredAt).toBeInstanceOf(Date);
    expect(row.deliveryAttempts).toHaveLength(1);
    expect(row.deliveryAttempts[0]).toMatchObject({ attempt: 1, outcome: "delivered", status: 201, requestId: call?.requestId });
    expect(row.deliveryAttempts[0]?.finishedAt).toBeInstanceOf(Date);
  });

  it("sends userservice events to the userservice endpoint of the configured offer", async () => {
    await worker({ offer: "mba2-beta" });
    const event = await enqueue(store(), {
      api: "userservice",
      type: "updateNotification",
      fleetId: "fl_us",
      resource: { userService: [{ id: "us_1" }], fleet: "fl_us" },
    });
    await waitFor("delivery", () => gw.delivered().find((r) => (r.body as { id: string }).id === event.id));
    expect(gw.delivered()[0]?.path).toBe("/mba2-beta/userservice/v2/event");
  });

  it("sends nothing for a change that rolled back", async () => {
    await worker();
    await expect(
      store().transaction(async (tx) => {
        await enqueueEvent(
          tx,
          { api: "productordering", type: "completedStateNotification", resource: { fleet: "fl_rb" }, fleetId: "fl_rb" },
          clock,
          ids,
        );
        throw new Error("rolled back");
      }),
    ).rejects.toThrow("rolled back");
    // A later event of the same fleet is delivered alone: had the first left anything, it would
    // have gone out before it.
    const later = await enqueue(store(), { fleetId: "fl_rb", resource: { fleet: "fl_rb" } });
    await waitFor("the later event", () => deliveredIds("fl_rb").length === 1);
    expect(bodiesFor("fl_rb").map((r) => (r.body as { id: string }).id)).toEqual([later.id]);
    expect(await db().outboxEvent.count({ where: { orderingKey: "fl_rb" } })).toBe(1);
  });

  it("retries a 5xx and delivers on the second attempt, recording both", async () => {
    gw.scriptEvents(500);
    await worker();
    const event = await enqueue(store(), { fleetId: "fl_500", resource: { fleet: "fl_500" } });
    const row = await waitFor("delivery", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "delivered" ? r : undefined;
    });
    expect(row.attempts).toBe(2);
    expect(row.deliveryAttempts.map((a) => [a.attempt, a.outcome, a.status])).toEqual([
      [1, "retry", 500],
      [2, "delivered", 201],
    ]);
    expect(row.deliveryAttempts[0]?.error).toBe("HTTP 500");
    expect(row.deliveryAttempts[0]?.requestId).toMatch(/^mock-/);
    expect(bodiesFor("fl_500").map((r) => (r.body as { id: string }).id)).toEqual([event.id, event.id]);
  });

  it("retries a 429 no sooner than its Retry-After", async () => {
    gw.scriptEvents(429); // Retry-After: 1
    await worker();
    const event = await enqueue(store(), { fleetId: "fl_429", resource: { fleet: "fl_429" } });
    const row = await waitFor("delivery", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "delivered" ? r : undefined;
    });
    const [first, second] = row.deliveryAttempts;
    expect([first?.status, second?.status]).toEqual([429, 201]);
    // Backoff of this worker is at most 50 ms; only Retry-After explains a second's wait.
    expect(second!.startedAt.getTime() - first!.finishedAt!.getTime()).toBeGreaterThanOrEqual(950);
  });

  it("parks an event Orange rejects with a 4xx after one attempt, keeping status, request id and body", async () => {
    gw.scriptEvents(400);
    await worker();
    const rejected = await enqueue(store(), { fleetId: "fl_400", resource: { fleet: "fl_400" } });
    const row = await waitFor("parking", async () => {
      const r = await eventRow(db(), rejected.id);
      return r?.state === "dead" ? r : undefined;
    });
    const call = gw.received.find((r) => (r.body as { id: string }).id === rejected.id);
    expect(row).toMatchObject({ state: "dead", attempts: 1, lastStatus: 400, lastRequestId: call?.requestId, lastError: "HTTP 400" });
    expect(JSON.parse(row.lastResponseBody ?? "{}")).toMatchObject({ code: 24 });
    expect(row.deadAt).toBeInstanceOf(Date);
    expect(row.deliveryAttempts.map((a) => [a.outcome, a.status])).toEqual([["park", 400]]);
    expect(gw.received.filter((r) => (r.body as { id: string }).id === rejected.id)).toHaveLength(1);
  });

  it("holds a fleet's later events behind a dead one; a re-send delivers it first, then the others in order", async () => {
    const fleet = "fl_held";
    gw.scriptEvents(400);
    const w = await worker();
    const first = await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 0 } });
    await waitFor("parking", async () => (await eventRow(db(), first.id))?.state === "dead");
    const later = [
      await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 1 } }),
      await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 2 } }),
    ];
    const other = await enqueue(store(), { fleetId: "fl_free", resource: { fleet: "fl_free" } });
    // The runs of the later events' jobs are over (no job left for the key), and sent nothing.
    await waitFor("the held key's runs", async () => (await jobsOf(db(), fleet)) === 0 && deliveredIds("fl_free").length === 1);
    expect(deliveredIds("fl_free")).toEqual([other.id]);
    for (const e of later) expect(await eventRow(db(), e.id)).toMatchObject({ state: "pending", attempts: 0, deliveryAttempts: [] });
    expect(bodiesFor(fleet).map((r) => (r.body as { id: string }).id)).toEqual([first.id]);
    // The sweep leaves a held key alone: no job is added for it.
    expect((await w.worker.sweep()).rescheduledKeys).not.toContain(fleet);
    expect(await jobsOf(db(), fleet)).toBe(0);

    const operator = createEventOperatorService({ db: store() });
    expect((await operator.get(later[0]!.id))?.heldBy).toBe(first.id);
    await operator.resend(first.id, "admin");
    await waitFor(
      "the fleet's deliveries",
      async () => (await db().outboxEvent.count({ where: { orderingKey: fleet, state: "delivered" } })) === 3,
    );
    expect(deliveredIds(fleet)).toEqual([first.id, ...later.map((e) => e.id)]);
  });

  it("sends the later events of a fleet once an operator discards the dead one, which is never sent again", async () => {
    const fleet = "fl_discard";
    gw.scriptEvents(403);
    await worker();
    const first = await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 0 } });
    await waitFor("parking", async () => (await eventRow(db(), first.id))?.state === "dead");
    const later = await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 1 } });
    await waitFor("the held key's run", async () => (await jobsOf(db(), fleet)) === 0);
    expect((await eventRow(db(), later.id))?.attempts).toBe(0);

    const operator = createEventOperatorService({ db: store() });
    const discarded = await operator.discard(first.id, "admin", "rejected by Orange: the licence is gone");
    expect(discarded).toMatchObject({ state: "discarded", discardedBy: "admin", discardReason: "rejected by Orange: the licence is gone" });
    await waitFor("the later event", () => deliveredIds(fleet).includes(later.id));
    const row = (await eventRow(db(), first.id))!;
    expect(row.state).toBe("discarded");
    expect(row.discardedAt).toBeInstanceOf(Date);
    expect(row.deliveryAttempts.map((a) => [a.outcome, a.status])).toEqual([["park", 403]]);
    expect(bodiesFor(fleet).map((r) => [(r.body as { id: string }).id, r.status])).toEqual([
      [first.id, 403],
      [later.id, 201],
    ]);
  });

  it("gives the events that waited behind a dead one a fresh age budget once an operator releases the fleet", async () => {
    const fleet = "fl_waited";
    gw.scriptEvents(400);
    await worker({ retry: { baseMs: 10, maxMs: 50, maxAttempts: 10, maxAgeMs: 60_000 } });
    const first = await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 0 } });
    await waitFor("parking", async () => (await eventRow(db(), first.id))?.state === "dead");
    const later = await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 1 } });
    await waitFor("the held key's run", async () => (await jobsOf(db(), fleet)) === 0);
    // It waited two days behind the dead event, far past the age bound (60 s).
    await db().$executeRaw`UPDATE outbox_event SET created_at = now() - interval '2 days' WHERE id = ${later.id}`;

    gw.scriptEvents(503); // its first attempt fails: retried, not parked for its age
    const operator = createEventOperatorService({ db: store() });
    await operator.discard(first.id, "admin", undefined);
    const row = await waitFor("the later event's delivery", async () => {
      const r = await eventRow(db(), later.id);
      return r?.state === "delivered" || r?.state === "dead" ? r : undefined;
    });
    expect(row.state).toBe("delivered");
    expect(row.releasedAt).toBeInstanceOf(Date);
    expect(row.deliveryAttempts.map((a) => [a.outcome, a.status])).toEqual([
      ["retry", 503],
      ["delivered", 201],
    ]);
  });

  it("retries, never parks, while Orange refuses every token for a while; delivers all in order with two token requests", async () => {
    // An identity incident at Orange: every event call is refused with 401 whatever the token,
    // then Orange accepts the tokens again.
    const incident = 40;
    gw.scriptEvents(401, incident);
    await worker({
      retry: { baseMs: 10, maxMs: 50, maxAttempts: 1_000, maxAgeMs: 60_000 },
      tokenIncidentBackoff: { baseMs: 60_000, maxMs: 60_000 },
    });
    const fleets = ["fl_401_a", "fl_401_b", "fl_401_c", "fl_401_d"];
    const written = new Map<string, string[]>(fleets.map((f) => [f, []]));
    for (let n = 0; n < 3; n++) {
      for (const fleet of fleets) written.get(fleet)!.push((await enqueue(store(), { fleetId: fleet, resource: { fleet, n } })).id);
    }
    await waitFor(
      "12 deliveries",
      async () => (await db().outboxEvent.count({ where: { orderingKey: { in: fleets }, state: "delivered" } })) === 12,
      30_000,
    );

    for (const fleet of fleets) expect(deliveredIds(fleet)).toEqual(written.get(fleet));
    expect(gw.received.filter((r) => r.status === 401)).toHaveLength(incident);
    const rows = await db().outboxEvent.findMany({
      where: { orderingKey: { in: fleets } },
      include: { deliveryAttempts: true },
    });
    expect(rows.map((r) => r.state)).toEqual(Array(12).fill("delivered"));
    // Some events were refused more than twice (the old rule parked them after two calls).
    expect(Math.max(...rows.map((r) => r.attempts))).toBeGreaterThan(2);
    const refused = rows.flatMap((r) => r.deliveryAttempts).filter((a) => a.status === 401);
    expect(refused.every((a) => a.outcome === "retry")).toBe(true);
    // One token at start, one after the first refusal; the fresh one, refused too, was kept
    // (no storm of token requests) and Orange accepted it once the incident was over.
    expect(gw.tokenRequests).toBe(2);
  });

  it("when the tokens issued during the incident stay refused, asks for a new one per incident round and recovers", async () => {
    const incident = 30;
    let refused = 0;
    // The incident ends with every token issued so far revoked: recovery needs a new token.
    const unsubscribe = gw.subscribe((e) => {
      if (e.status === 401 && ++refused === incident) gw.revokeTokens();
    });
    try {
      gw.scriptEvents(401, incident);
      const holdMs = 300;
      await worker({
        retry: { baseMs: 10, maxMs: 50, maxAttempts: 1_000, maxAgeMs: 60_000 },
        tokenIncidentBackoff: { baseMs: holdMs, maxMs: holdMs },
      });
      const startedAt = Date.now();
      const fleets = ["fl_rev_a", "fl_rev_b", "fl_rev_c"];
      const written = new Map<string, string[]>(fleets.map((f) => [f, []]));
      for (let n = 0; n < 2; n++) {
        for (const fleet of fleets) written.get(fleet)!.push((await enqueue(store(), { fleetId: fleet, resource: { fleet, n } })).id);
      }
      await waitFor(
        "6 deliveries",
        async () => (await db().outboxEvent.count({ where: { orderingKey: { in: fleets }, state: "delivered" } })) === 6,
        30_000,
      );
      const elapsedMs = Date.now() - startedAt;

      for (const fleet of fleets) expect(deliveredIds(fleet)).toEqual(written.get(fleet));
      expect(await db().outboxEvent.count({ where: { orderingKey: { in: fleets }, state: { not: "delivered" } } })).toBe(0);
      const calls401 = gw.received.filter((r) => r.status === 401).length;
      expect(calls401).toBeGreaterThanOrEqual(incident);
      // At most one token request per hold of the incident, plus the first token and the one
      // after the first refusal (the refused calls are many more).
      expect(gw.tokenRequests).toBeLessThanOrEqual(3 + Math.ceil(elapsedMs / holdMs));
      // Delivered with a token issued after the revocation.
      const lastToken = gw.tokenLog.at(-1)?.token;
      expect(gw.delivered().every((r) => r.token === lastToken)).toBe(true);
    } finally {
      unsubscribe();
    }
  });

  it("parks an event as dead once its attempts are spent", async () => {
    gw.scriptEvents(503, 3);
    await worker({ retry: { baseMs: 5, maxMs: 20, maxAttempts: 3, maxAgeMs: 60_000 } });
    const event = await enqueue(store(), { fleetId: "fl_bound", resource: { fleet: "fl_bound" } });
    const row = await waitFor("parking", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "dead" ? r : undefined;
    });
    expect(row.attempts).toBe(3);
    expect(row.lastStatus).toBe(503);
    expect(row.lastError).toBe("gave up after 3 attempts: HTTP 503");
    expect(row.deliveryAttempts.map((a) => a.outcome)).toEqual(["retry", "retry", "retry"]);
    expect(gw.received.filter((r) => (r.body as { id: string }).id === event.id)).toHaveLength(3);
  });

  it("parks an event whose next attempt would come after its maximum age", async () => {
    gw.scriptEvents(503);
    await worker({ retry: { baseMs: 5_000, maxMs: 5_000, maxAttempts: 10, maxAgeMs: 1 } });
    const event = await enqueue(store(), { fleetId: "fl_age", resource: { fleet: "fl_age" } });
    const row = await waitFor("parking", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "dead" ? r : undefined;
    });
    expect(row.attempts).toBe(1);
    expect(row.lastError).toBe("gave up after 1 attempts: HTTP 503");
  });

  it("gives a re-sent event a fresh age budget: it is retried, not parked at its first failure", async () => {
    const policy = { baseMs: 10, maxMs: 50, maxAttempts: 10, maxAgeMs: 60_000 };
    const event = await enqueue(store(), { fleetId: "fl_resent_old", resource: { fleet: "fl_resent_old" } });
    // Parked two days ago, long past the age bound.
    await db().$executeRaw`UPDATE outbox_event SET state = 'dead', dead_at = now(), created_at = now() - interval '2 days'
                            WHERE id = ${event.id}`;
    const operator = createEventOperatorService({ db: store() });
    gw.scriptEvents(503, 1);
    await operator.resend(event.id, "admin");
    await worker({ retry: policy });
    const row = await waitFor("the re-sent event's delivery", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "delivered" || r?.state === "dead" ? r : undefined;
    });
    expect(row.state).toBe("delivered");
    expect(row.deliveryAttempts.map((a) => [a.outcome, a.status])).toEqual([
      ["retry", 503],
      ["delivered", 201],
    ]);
    expect(row.attempts).toBe(2);
  });

  it("delivers the events of one fleet in seq order despite concurrent writers, a failure and two workers", async () => {
    await worker({ concurrency: 4 });
    await worker({ concurrency: 4 });
    const fleet = "fl_order";
    const sent: string[] = [];
    for (let i = 0; i < 6; i++) sent.push((await enqueue(store(), { fleetId: fleet, resource: { fleet, n: i } })).id);
    gw.scriptEvents(500, 2); // somewhere in the middle of the stream
    await Promise.all(Array.from({ length: 8 }, (_, i) => enqueue(store(), { fleetId: fleet, resource: { fleet, n: 6 + i } })));
    for (let i = 0; i < 6; i++) sent.push((await enqueue(store(), { fleetId: fleet, resource: { fleet, n: 14 + i } })).id);

    await waitFor("20 deliveries", () => deliveredIds(fleet).length >= 20);
    const bySeq = (await db().outboxEvent.findMany({ where: { orderingKey: fleet }, orderBy: { seq: "asc" } })).map((r) => r.id);
    expect(bySeq).toHaveLength(20);
    expect(deliveredIds(fleet)).toEqual(bySeq);
    // Each attempt went out only after the previous event of the fleet was settled.
    const calls = bodiesFor(fleet).map((r) => (r.body as { id: string }).id);
    for (let i = 1; i < calls.length; i++) {
      expect(bySeq.indexOf(calls[i]!)).toBeGreaterThanOrEqual(bySeq.indexOf(calls[i - 1]!));
    }
    expect(gw.received.some((r) => r.status === 500)).toBe(true);
    expect(await db().outboxEvent.count({ where: { orderingKey: fleet, state: { not: "delivered" } } })).toBe(0);
  });

  it("keeps delivering other fleets while one fleet waits for a retry", async () => {
    await worker({ retry: { baseMs: 60_000, maxMs: 60_000, maxAttempts: 5, maxAgeMs: 3_600_000 }, random: () => 0.99 });
    gw.scriptEvents(503);
    const blocked = await enqueue(store(), { fleetId: "fl_blocked", resource: { fleet: "fl_blocked" } });
    await waitFor("the first failure", () => gw.received.some((r) => r.status === 503));
    const behind = await enqueue(store(), { fleetId: "fl_blocked", resource: { fleet: "fl_blocked" } });
    const others = await Promise.all(
      ["fl_x", "fl_y", "fl_x", "fl_y"].map((fleetId) => enqueue(store(), { fleetId, resource: { fleet: fleetId } })),
    );
    await waitFor("the other fleets", () => deliveredIds("fl_x").length + deliveredIds("fl_y").length === 4);
    expect([...deliveredIds("fl_x"), ...deliveredIds("fl_y")].sort()).toEqual(others.map((e) => e.id).sort());
    // The blocked fleet's later event waits behind the retry.
    expect((await eventRow(db(), blocked.id))?.state).toBe("pending");
    expect((await eventRow(db(), behind.id))?.attempts).toBe(0);
    expect(bodiesFor("fl_blocked").map((r) => (r.body as { id: string }).id)).toEqual([blocked.id]);
  });

  it("uses one token for many events", async () => {
    await worker({ concurrency: 8 });
    const events = await Promise.all(
      Array.from({ length: 40 }, (_, i) => enqueue(store(), { fleetId: `fl_tok_${i % 8}`, resource: { fleet: "fl_tok" } })),
    );
    await waitFor("40 deliveries", () => deliveredIds("fl_tok").length === 40);
    expect(new Set(deliveredIds("fl_tok"))).toEqual(new Set(events.map((e) => e.id)));
    expect(gw.tokenRequests).toBe(1);
    // Each run released its fleet's lock (the last finish of a drained fleet releases it).
    await waitFor("the fleet locks to be released", async () => {
      const locks = await db().$queryRaw<{ n: number }[]>`
        SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = ${DELIVERY_LOCK_NAMESPACE}::int::oid`;
      return locks[0]!.n === 0 ? true : undefined;
    });
    expect(await db().outboxEvent.count({ where: { orderingKey: { startsWith: "fl_tok" }, state: { not: "delivered" } } })).toBe(0);
  });

  it("hands a delivery back when the worker stops mid-call; another worker delivers it with the same id", async () => {
    gw.scriptEvents("hang");
    const first = await worker({ stopTimeoutMs: 200 });
    const event = await enqueue(store(), { fleetId: "fl_stop", resource: { fleet: "fl_stop" } });
    await waitFor("the hanging call", () => bodiesFor("fl_stop").length === 1);
    await first.stop();

    const interrupted = (await eventRow(db(), event.id))!;
    expect(interrupted.state).toBe("pending");
    expect(interrupted.deliveryAttempts).toHaveLength(1);
    expect(interrupted.deliveryAttempts[0]?.outcome).toBe("retry");
    expect(interrupted.deliveryAttempts[0]?.error).toMatch(/^aborted: the worker was stopping/);

    await worker();
    const row = await waitFor("re-delivery", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "delivered" ? r : undefined;
    });
    expect(deliveredIds("fl_stop")).toEqual([event.id]);
    expect(row.attempts).toBe(2);
  });

  it("re-delivers, with the same id, an event whose worker was killed mid-delivery", async () => {
    gw.scriptEvents("hang");
    const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./support/worker-process.ts", import.meta.url))], {
      env: {
        ...process.env,
        DATABASE_URL: database.url,
        GW_URL: gw.url,
        GW_TOKEN_URL: gw.tokenUrl,
        GW_CLIENT_ID: gw.clientId,
        GW_CLIENT_SECRET: gw.clientSecret,
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.push(child);
    let out = "";
    child.stdout?.on("data", (chunk: Buffer) => (out += chunk.toString()));
    await waitFor("the worker process", () => out.includes("ready"), 20_000);

    const event = await enqueue(store(), { fleetId: "fl_kill", resource: { fleet: "fl_kill" } });
    await waitFor("the hanging call", () => bodiesFor("fl_kill").length === 1);
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;

    // The dead worker's job stays locked (graphile would wait 4 h); a worker with a short lease
    // releases it.
    const rescuer = await worker({ leaseMs: 300, sweepIntervalMs: 200 });
    const row = await waitFor("re-delivery", async () => {
      const r = await eventRow(db(), event.id);
      return r?.state === "delivered" ? r : undefined;
    });
    expect(bodiesFor("fl_kill").map((r) => (r.body as { id: string }).id)).toEqual([event.id, event.id]);
    expect(deliveredIds("fl_kill")).toEqual([event.id]);
    expect(row.deliveryAttempts.map((a) => [a.attempt, a.outcome])).toEqual([
      [1, "retry"],
      [2, "delivered"],
    ]);
    expect(row.deliveryAttempts[0]?.error).toMatch(/^interrupted/);
    expect(row.deliveryAttempts[1]?.workerId).toBe(rescuer.worker.id);
  });

  it("never lets two runs deliver one fleet at once: a run that finds the fleet busy tries again later", async () => {
    // Another run holds the fleet (same lock a running delivery takes).
    const other = new pg.Client({ connectionString: database.url });
    await other.connect();
    try {
      await other.query("SELECT pg_advisory_lock($1::int, hashtext($2))", [DELIVERY_LOCK_NAMESPACE, "fl_busy"]);
      await worker();
      const event = await enqueue(store(), { fleetId: "fl_busy", resource: { fleet: "fl_busy" } });
      // The worker claims the job, finds the fleet busy and queues a new job for later (its
      // run_at is the busy retry delay, 500 ms, after its creation; the enqueued job's is now).
      await waitFor("the busy run to reschedule", async () => {
        const rows = await db().$queryRaw<{ n: number }[]>`
          SELECT count(*)::int AS n FROM graphile_worker.jobs
           WHERE key = 'deliver:fl_busy' AND run_at >= created_at + interval '400 milliseconds'`;
        return (rows[0]?.n ?? 0) > 0;
      });
      expect((await eventRow(db(), event.id))?.attempts).toBe(0);
      expect(bodiesFor("fl_busy")).toHaveLength(0);
      await other.query("SELECT pg_advisory_unlock($1::int, hashtext($2))", [DELIVERY_LOCK_NAMESPACE, "fl_busy"]);
      await waitFor("delivery once the fleet is free", () => deliveredIds("fl_busy").includes(event.id));
    } finally {
      await other.end();
    }
  });

  it("keeps its connections through a pause longer than pg's idle timeout: a burst after it opens none", async () => {
    const w = await worker();
    const first = await enqueue(store(), { fleetId: "fl_pause", resource: { fleet: "fl_pause" } });
    await waitFor("the first delivery", () => deliveredIds("fl_pause").includes(first.id));
    const backends = async () =>
      (
        await db().$queryRaw<{ pid: number }[]>`
          SELECT pid FROM pg_stat_activity WHERE application_name = 'orange-partner-worker' AND datname = current_database() ORDER BY pid`
      ).map((r) => r.pid);
    const before = await backends();
    expect(before.length).toBeGreaterThan(0);
    // pg closes a connection idle for 10 s by default.
    await delay(11_000);
    expect(await backends()).toEqual(before);
    const second = await enqueue(store(), { fleetId: "fl_pause", resource: { fleet: "fl_pause" } });
    await waitFor("the delivery after the pause", () => deliveredIds("fl_pause").includes(second.id));
    expect((await backends()).filter((pid) => !before.includes(pid))).toEqual([]);
    expect(w.worker.pool.totalCount).toBe(before.length);
  }, 30_000);

  it("re-schedules pending events whose job is gone", async () => {
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    try {
      const event = await enqueue(store(), { fleetId: "fl_orphan", resource: { fleet: "fl_orphan" } });
      await admin.query("SELECT graphile_worker.remove_job('deliver:fl_orphan')");
      const w = await worker();
      // The start-up sweep found it; a second sweep has nothing to do.
      await waitFor("delivery", () => deliveredIds("fl_orphan").includes(event.id));
      expect((await w.worker.sweep()).rescheduledKeys).toEqual([]);
    } finally {
      await admin.end();
    }
  });

  it("leaves pending events without a job alone while they are younger than the grace (an inline run may be delivering them)", async () => {
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    try {
      const event = await enqueue(store(), { fleetId: "fl_young", resource: { fleet: "fl_young" } });
      await admin.query("SELECT graphile_worker.remove_job('deliver:fl_young')");
      const w = await worker({ unqueuedGraceMs: 60_000 });
      expect((await w.worker.sweep()).rescheduledKeys).not.toContain("fl_young");
      expect(deliveredIds("fl_young")).toEqual([]);
      // As after its process died a minute ago, past the grace: the sweep gives it a job.
      await admin.query("UPDATE outbox_event SET created_at = now() - interval '61 seconds' WHERE id = $1", [event.id]);
      expect((await w.worker.sweep()).rescheduledKeys).toContain("fl_young");
      await waitFor("delivery", () => deliveredIds("fl_young").includes(event.id));
    } finally {
      await admin.end();
    }
  });
});

/**
 * A worker claims jobs for its free slots and as many again in one query (graphile's local
 * queue, `prefetch`), so that a burst of keys costs one claim per batch, not one per key. Those
 * held in memory are locked by the worker like running ones: they go back to the queue at stop,
 * and after a sixth of the lease while every slot stays busy. Each test has a database of its own,
 * so that no other test's job is claimed with them.
 */
describe("jobs claimed ahead of a worker's free slots", () => {
  let own: TestDatabase;
  beforeEach(async () => {
    own = await createTestDatabase();
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((w) => w.stop()));
    await own.drop();
  });

  const jobs = async () => {
    return own.prisma.$queryRaw<{ key: string; locked_by: string | null }[]>`SELECT key, locked_by FROM graphile_worker.jobs ORDER BY key`;
  };
  const fleetsOf = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}_${String(i).padStart(2, "0")}`);
  const posted = (prefix: string) => gw.received.filter((r) => String((r.body as { resource?: { fleet?: string } }).resource?.fleet).startsWith(prefix));

  it("are claimed in one query with the jobs of the free slots, held while the slots are busy, and handed back at stop; nothing is lost", async () => {
    const fleets = fleetsOf("fl_pf", 10);
    const events = [];
    for (const fleetId of fleets) events.push(await enqueue(own.db, { fleetId, resource: { fleet: fleetId } }));
    gw.scriptEvents("hang", 10);
    const first = await startWorker(gw, own.url, { concurrency: 2, prefetch: 6, stopTimeoutMs: 200 });
    running.push(first);
    await waitFor("two hanging calls", () => posted("fl_pf").length === 2);
    // Two jobs running, four held in memory: all six locked by the worker; the other four free.
    const claimed = await jobs();
    expect(claimed.filter((j) => j.locked_by === first.worker.id)).toHaveLength(6);
    expect(claimed.filter((j) => j.locked_by === null)).toHaveLength(4);

    await first.stop();
    // The held jobs went back unrun; the two running ones were aborted and their keys handed back.
    expect((await jobs()).filter((j) => j.locked_by !== null)).toEqual([]);
    expect(new Set((await jobs()).map((j) => j.key))).toEqual(new Set(fleets.map((f) => `deliver:${f}`)));
    expect(posted("fl_pf")).toHaveLength(2);

    gw.reset();
    running.push(await startWorker(gw, own.url, { concurrency: 2, prefetch: 6 }));
    await waitFor("every event delivered", async () => {
      const rows = await own.prisma.$queryRaw<{ n: number }[]>`SELECT count(*)::int AS n FROM outbox_event WHERE state = 'delivered'`;
      return rows[0]?.n === fleets.length;
    });
    expect(posted("fl_pf").filter((r) => r.status === 201).map((r) => (r.body as { id: string }).id).sort()).toEqual(events.map((e) => e.id).sort());
    await waitFor("every job done", async () => (await jobs()).length === 0);
  });

  it("are twice the slots by default (WORKER_PREFETCH); 0 turns them off; fewer than the slots is refused", () => {
    expect(loadConfig({}).worker.prefetch).toBe(16);
    expect(loadConfig({ WORKER_CONCURRENCY: "3" }).worker.prefetch).toBe(6);
    expect(loadConfig({ WORKER_PREFETCH: "0" }).worker.prefetch).toBe(0);
    expect(loadConfig({ WORKER_CONCURRENCY: "4", WORKER_PREFETCH: "4" }).worker.prefetch).toBe(4);
    expect(() => loadConfig({ WORKER_CONCURRENCY: "4", WORKER_PREFETCH: "3" })).toThrow(/WORKER_PREFETCH must be 0 \(off\) or at least WORKER_CONCURRENCY/);
    expect(() => loadConfig({ WORKER_PREFETCH: "-1" })).toThrow(/WORKER_PREFETCH/);
  });

  it("go back to the queue after a sixth of the lease while every slot stays busy", async () => {
    const fleets = fleetsOf("fl_ttl", 3);
    for (const fleetId of fleets) await enqueue(own.db, { fleetId, resource: { fleet: fleetId } });
    gw.scriptEvents("hang", 3);
    const w = await startWorker(gw, own.url, { concurrency: 1, prefetch: 3, leaseMs: 6_000, stopTimeoutMs: 200 });
    running.push(w);
    await waitFor("one hanging call", () => posted("fl_ttl").length === 1);
    expect((await jobs()).filter((j) => j.locked_by === w.worker.id)).toHaveLength(3);
    // A sixth of 6 s: the two held jobs are unlocked, the running one stays the worker's.
    await waitFor("the held jobs back in the queue", async () => (await jobs()).filter((j) => j.locked_by === null).length === 2, 5_000);
    expect((await jobs()).filter((j) => j.locked_by === w.worker.id)).toHaveLength(1);
    expect(posted("fl_ttl")).toHaveLength(1);
  });
});

/**
 * The jobs of a task's run as a probe sees them: the task's own and its key's delivery job, with
 * who holds each and since when (µs).
 */
async function runJobs(probe: pg.Client, orderingKey: string, task: string) {
  const { rows } = await probe.query<{ task: string; locked_by: string | null; locked_at: string | null }>(
    `SELECT t.identifier AS task, j.locked_by, (extract(epoch FROM j.locked_at) * 1000000)::bigint::text AS locked_at
       FROM graphile_worker._private_jobs j JOIN graphile_worker._private_tasks t ON t.id = j.task_id
      WHERE j.key = $1 OR t.identifier = $2 ORDER BY t.identifier`,
    [`deliver:${orderingKey}`, task],
  );
  return rows;
}

/** A real event client that records `look()` before each send: what the jobs look like then. */
function recordingClient<T>(look: () => Promise<T>) {
  const tokens = createTokenCache({ tokenUrl: gw.tokenUrl, clientId: gw.clientId, clientSecret: gw.clientSecret, timeoutMs: 2_000 });
  const real = createOrangeEventClient({ baseUrl: gw.url, offer: "mba2", tokens, timeoutMs: 5_000 });
  const seen: T[] = [];
  return {
    seen,
    client: {
      async send(...args: Parameters<typeof real.send>) {
        seen.push(await look());
        return real.send(...args);
      },
    },
    async close() {
      await real.close();
      await tokens.close();
    },
  };
}

describe("events of another task's run", () => {
  let probe: pg.Client;
  beforeEach(async () => {
    probe = new pg.Client({ connectionString: database.url });
    await probe.connect();
  });
  afterEach(async () => {
    await probe.end();
  });

  /** Runs `task` (one slot: its run holds it), which writes one event of `fleetId`; the event once delivered, and the worker. */
  async function runTask(
    fleetId: string,
    task: string,
    recording: ReturnType<typeof recordingClient>,
    options: { prefetch?: number; after?: (workerId: string) => Promise<void> } = {},
  ) {
    let eventId = "";
    const self: { id?: string } = {};
    const w = await worker({
      client: recording.client,
      concurrency: 1,
      ...(options.prefetch !== undefined ? { prefetch: options.prefetch } : {}),
      tasks: {
        [task]: async () => {
          eventId = await store().transaction(
            async (tx) => (await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: { fleet: fleetId }, fleetId }, clock, ids)).id,
          );
          await options.after?.(self.id!);
        },
      },
    });
    self.id = w.worker.id;
    await addJob(store(), { task, payload: {} });
    await waitFor("the event to be delivered", async () => eventId !== "" && (await eventRow(db(), eventId))?.state === "delivered");
    expect(deliveredIds(fleetId)).toEqual([eventId]);
    await waitFor("the jobs to be completed", async () => (await runJobs(probe, fleetId, task)).length === 0);
    const row = await eventRow(db(), eventId);
    expect(row?.deliveryAttempts.map((a) => ({ attempt: a.attempt, outcome: a.outcome, workerId: a.workerId }))).toEqual([
      { attempt: 1, outcome: "delivered", workerId: w.worker.id },
    ]);
    return w;
  }

  it("are delivered by that run at once, with their key's job claimed by it, then completed", async () => {
    const recording = recordingClient(() => runJobs(probe, "fl_inline", "announce_inline"));
    try {
      // One slot, taken by the task's run: no other run of this worker can run the key's job first.
      const w = await runTask("fl_inline", "announce_inline", recording);
      // Sent while the task's run is still under way (its job not yet completed, the worker's one
      // slot still taken), with the key's job locked by this worker: claimed by the run, or held
      // in memory for a free slot (prefetch), which the run takes as well.
      expect(recording.seen.map((jobs) => jobs.map((j) => ({ task: j.task, locked_by: j.locked_by })))).toEqual([
        [
          { task: "announce_inline", locked_by: w.worker.id },
          { task: "deliver_events", locked_by: w.worker.id },
        ],
      ]);
    } finally {
      await recording.close();
    }
  });

  it("are delivered by that run at once when their key's job was claimed ahead of a free slot: it takes the job this worker holds in memory", async () => {
    const recording = recordingClient(() => runJobs(probe, "fl_held", "announce_held"));
    /** When the key's job was claimed into memory, in µs. */
    let heldAt: string | null | undefined;
    try {
      // The key's job, once committed, is claimed into memory for the next free slot (prefetch):
      // the task returns once it is.
      const w = await runTask("fl_held", "announce_held", recording, {
        prefetch: 2,
        after: async (workerId) => {
          const held = await waitFor("the key's job held by this worker", async () =>
            (await runJobs(probe, "fl_held", "announce_held")).find((j) => j.task === "deliver_events" && j.locked_by === workerId),
          );
          heldAt = held.locked_at;
        },
      });
      // Sent by the task's run: it claimed the held job anew (its lock renewed), where the run of
      // that job from memory, once the slot is free, would have sent it under the first claim.
      expect(recording.seen.map((jobs) => jobs.map((j) => ({ task: j.task, locked_by: j.locked_by })))).toEqual([
        [
          { task: "announce_held", locked_by: w.worker.id },
          { task: "deliver_events", locked_by: w.worker.id },
        ],
      ]);
      const sentUnder = recording.seen[0]!.find((j) => j.task === "deliver_events")!.locked_at;
      expect(heldAt).toBeTruthy();
      expect(BigInt(sentUnder!)).toBeGreaterThan(BigInt(heldAt!));
    } finally {
      await recording.close();
    }
  });
});

describe("an inline run that asks to run again (JobContext.runAgain)", () => {
  it("runs again in the process after the delay, with no job row; a few times at most, then its task queues its job; at stop, its job", async () => {
    const runs: { at: number; again: boolean | undefined }[] = [];
    const w = await worker({
      inlineSlots: 2,
      stopTimeoutMs: 1_000,
      tasks: {
        again_inline: async (_payload, context) => {
          const ask = runs.length < 7;
          runs.push({ at: performance.now(), again: ask ? context.runAgain?.(runs.length === 6 ? 60_000 : 30) : undefined });
        },
      },
    });
    const jobsOfTask = async () =>
      (
        await database.prisma.$queryRawUnsafe<{ n: number }[]>(
          "SELECT count(*)::int AS n FROM graphile_worker._private_jobs WHERE task_id = (SELECT id FROM graphile_worker._private_tasks WHERE identifier = 'again_inline')",
        )
      )[0]!.n;
    const slot = w.worker.inline.reserve();
    expect(slot).toBeDefined();
    slot!.start({ task: "again_inline", payload: {}, key: "again:1" });
    await waitFor("six runs", async () => runs.length >= 6);
    // Five times again in memory, each after its delay; the sixth ask is refused (its task would
    // queue its job), and no job row was ever written.
    expect(runs.slice(0, 6).map((r) => r.again)).toEqual([true, true, true, true, true, false]);
    for (let i = 1; i < 6; i++) expect(runs[i]!.at - runs[i - 1]!.at).toBeGreaterThanOrEqual(25);
    expect(await jobsOfTask()).toBe(0);

    // Another job asks to run again in a minute; the worker stops meanwhile: its job is queued for the next worker.
    const second = w.worker.inline.reserve();
    second!.start({ task: "again_inline", payload: {}, key: "again:2" });
    await waitFor("the seventh run", async () => runs.length >= 7);
    expect(runs[6]!.again).toBe(true);
    await w.stop();
    const [job] = await database.prisma.$queryRawUnsafe<{ key: string }[]>("SELECT key FROM graphile_worker._private_jobs WHERE key = 'again:2'");
    expect(job).toEqual({ key: "again:2" });
    expect(runs).toHaveLength(7);
  });
});

describe("an inline run that fails after one of its transactions committed an event", () => {
  it("still delivers that event at once, with its one claimed attempt, and hands the run to its job", async () => {
    let eventId = "";
    let runs = 0;
    const w = await worker({
      inlineSlots: 1,
      tasks: {
        commit_then_fail: async () => {
          runs++;
          if (runs > 1) return;
          eventId = (
            await store().transaction((tx) =>
              enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: { fleet: "fl_failed_run" }, fleetId: "fl_failed_run" }, clock, ids),
            )
          ).id;
          throw new Error("injected: the run fails after its event committed");
        },
      },
    });
    w.worker.inline.reserve()!.start({ task: "commit_then_fail", payload: {}, key: "failed-run:1" });
    // Well within the sweep's grace: the run itself sends it.
    const row = await waitFor("the event to be delivered", async () => {
      const r = await eventRow(db(), eventId);
      return r?.state === "delivered" ? r : undefined;
    }, 3_000);
    expect(deliveredIds("fl_failed_run")).toEqual([eventId]);
    // The attempt claimed with the event, closed as delivered: none left open, none counted as interrupted.
    expect(row.attempts).toBe(1);
    expect(row.deliveryAttempts.map((a) => ({ attempt: a.attempt, outcome: a.outcome, error: a.error }))).toEqual([
      { attempt: 1, outcome: "delivered", error: null },
    ]);
    // The failed run's own job was queued for another run, and the outbox added none for the fleet.
    const [job] = await database.prisma.$queryRawUnsafe<{ key: string }[]>("SELECT key FROM graphile_worker._private_jobs WHERE key = 'failed-run:1'");
    expect(job).toEqual({ key: "failed-run:1" });
    expect(await jobsOf(db(), "fl_failed_run")).toBe(0);
  });
});

describe("an acknowledgement whose inline run waits for a slot (backpressure)", () => {
  it("is answered once its run starts, or after the bound when the run still waits; at once when a slot is free", async () => {
    const started: string[] = [];
    const releases = new Map<string, () => void>();
    const w = await worker({
      inlineSlots: 1,
      inlineAckHoldMs: 400,
      stopTimeoutMs: 1_000,
      tasks: {
        held_inline: async (payload) => {
          const name = (payload as { name: string }).name;
          started.push(name);
          await new Promise<void>((resolve) => releases.set(name, resolve));
        },
      },
    });
    const state = (p: Promise<void>) => Promise.race([p.then(() => "answered"), delay(0).then(() => "held")]);
    const job = (name: string) => ({ task: "held_inline", payload: { name }, key: `held:${name}` });

    // A free slot: the run starts at once, and so does the answer.
    const first = w.worker.inline.reserve()!.start(job("a"));
    expect(await state(first)).toBe("answered");
    await waitFor("a to start", async () => started.includes("a"));

    // The slot busy: b waits, and its acknowledgement with it, until a is done and b starts.
    const t0 = performance.now();
    const second = w.worker.inline.reserve()!.start(job("b"));
    await delay(150);
    expect(await state(second)).toBe("held");
    expect(started).toEqual(["a"]);
    expect(w.worker.inlineLoad()).toEqual({ running: 1, waiting: 1 });
    releases.get("a")!();
    await second;
    expect(started).toEqual(["a", "b"]);
    expect(performance.now() - t0).toBeLessThan(400);

    // b never ends: c's acknowledgement is answered after the bound, its run still waiting.
    const t1 = performance.now();
    const third = w.worker.inline.reserve()!.start(job("c"));
    await third;
    expect(performance.now() - t1).toBeGreaterThanOrEqual(390);
    expect(started).toEqual(["a", "b"]);
    releases.get("b")!();
    await waitFor("c to start", async () => started.includes("c"));
    releases.get("c")!();
    await w.stop();
  });
});

describe("work run in an inline slot for a caller that waits (InlineSlot.runNow)", () => {
  it("answers the caller with the work's result, then delivers the events it committed, without a job", async () => {
    const w = await worker({ inlineSlots: 1, inlineAckHoldMs: 2_000 });
    const done = await w.worker.inline.reserve()!.runNow(async () => {
      const event = await store().transaction((tx) =>
        enqueueEvent(tx, { api: "productordering", type: "completedStateNotification", resource: { fleet: "fl_now" }, fleetId: "fl_now" }, clock, ids),
      );
      return event.id;
    });
    expect(done).toEqual({ result: expect.stringMatching(/^ev/) });
    const row = await waitFor("delivery", async () => {
      const r = await eventRow(db(), done!.result);
      return r?.state === "delivered" ? r : undefined;
    });
    expect(row.attempts).toBe(1);
    expect(deliveredIds("fl_now")).toEqual([done!.result]);
    // Delivered by the slot: the outbox added no job for the key.
    expect(await jobsOf(db(), "fl_now")).toBe(0);
    await waitFor("the slot to be free", async () => w.worker.inlineLoad().running === 0);
  });

  it("waits for a slot; past the bound the work never runs and the slot is given back; work that throws frees its slot", async () => {
    const w = await worker({
      inlineSlots: 1,
      inlineAckHoldMs: 300,
      tasks: { held_inline: () => new Promise<void>((resolve) => (release = resolve)) },
    });
    let release: (() => void) | undefined;
    await w.worker.inline.reserve()!.start({ task: "held_inline", payload: {}, key: "held:a" });
    await waitFor("the run to hold the slot", async () => release !== undefined);

    // The slot busy: the work waits, then runs once it is free.
    const ran: string[] = [];
    const waiting = w.worker.inline.reserve()!.runNow(async () => ran.push("b"));
    await delay(100);
    expect(ran).toEqual([]);
    expect(w.worker.inlineLoad()).toEqual({ running: 1, waiting: 1 });
    release!();
    expect(await waiting).toEqual({ result: 1 });
    expect(ran).toEqual(["b"]);

    // Busy past the bound: undefined, the work never ran, and its place is given back.
    release = undefined;
    await w.worker.inline.reserve()!.start({ task: "held_inline", payload: {}, key: "held:c" });
    await waitFor("the run to hold the slot", async () => release !== undefined);
    expect(await w.worker.inline.reserve()!.runNow(async () => ran.push("d"))).toBeUndefined();
    expect(w.worker.inlineLoad()).toEqual({ running: 1, waiting: 0 });
    release!();
    await waitFor("the slot to be free", async () => w.worker.inlineLoad().running === 0);
    await delay(50);
    expect(ran).toEqual(["b"]);

    // Work that throws: the caller gets the error, and the slot serves the next one.
    await expect(w.worker.inline.reserve()!.runNow(async () => Promise.reject(new Error("rolled back")))).rejects.toThrow("rolled back");
    expect(await w.worker.inline.reserve()!.runNow(async () => "next")).toEqual({ result: "next" });
  });

  it("at stop, work still waiting for a slot never runs: its caller is told at once", async () => {
    let release: (() => void) | undefined;
    const w = await worker({
      inlineSlots: 1,
      inlineAckHoldMs: 10_000,
      stopTimeoutMs: 2_000,
      tasks: { held_inline: () => new Promise<void>((resolve) => (release = resolve)) },
    });
    await w.worker.inline.reserve()!.start({ task: "held_inline", payload: {}, key: "held:s" });
    await waitFor("the run to hold the slot", async () => release !== undefined);
    let ran = false;
    const waiting = w.worker.inline.reserve()!.runNow(async () => (ran = true));
    const t0 = performance.now();
    const stopping = w.stop();
    expect(await waiting).toBeUndefined();
    expect(performance.now() - t0).toBeLessThan(1_000);
    release!();
    await stopping;
    expect(ran).toBe(false);
  });
});
