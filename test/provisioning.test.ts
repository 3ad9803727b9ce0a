import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import pg from "pg";
import { startPartnerApp, WEBHOOK_PATH, type Behaviour, type PartnerApp } from "../examples/partner-app/app.js";
import { loadConfig } from "../src/config.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { freePort } from "../src/simulator/self-host.js";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { LIST_URL, ORDER_URL, PAUL, PRO, stateUpdate, uc2 as fixtureUc2, uc3 as fixtureUc3, UPDATE_URL } from "./support/fixtures.js";
import { startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";

/**
 * PROVISIONING_MODE=webhook: Orange → this server → the partner's application (the reference
 * application of examples/partner-app, over loopback HTTP) → this server → Orange. Each test
 * checks what Orange was answered, what the store holds, and what the application received.
 */

const ADMIN_TOKEN = "admin-token-provisioning-9f2e";
const APP_TOKEN = "app-token-provisioning-51c0";
const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN}` };
const APP = { authorization: `Bearer ${APP_TOKEN}` };

const secret = () => `whsec_${randomBytes(32).toString("base64")}`;
// The server signs with both (rotation); the application already knows only the new one.
const OLD_SECRET = secret();
const NEW_SECRET = secret();


const uc2 = (o: { quantity: number; customerRef?: string }) => fixtureUc2({ ...o, withContact: true, endUserConfiguration: [{ endUser: PAUL }] });
const uc3 = (fleetId: string, quantity: number) => fixtureUc3(fleetId, { quantity });
const suspend = (...licenceIds: string[]) => stateUpdate("suspended", ...licenceIds);

const fleetOf = (order: CallResult) => order.body.orderItem[0].productRef.id as string;

interface Setup {
  t: TestApp;
  partner: PartnerApp;
  close(): Promise<void>;
}

function testEnv(url: string): Record<string, string> {
  return {
    ADMIN_TOKEN,
    APP_TOKEN,
    PROVISIONING_MODE: "webhook",
    PROVISIONING_URL: url,
    PROVISIONING_SECRET: `${OLD_SECRET} ${NEW_SECRET}`,
    PROVISIONING_TIMEOUT_MS: "3000",
    PROVISIONING_RETRY_BASE_MS: "20",
    PROVISIONING_RETRY_MAX_MS: "100",
    PROVISIONING_MAX_ATTEMPTS: "4",
    PROVISIONING_SYNC_DEADLINE_MS: "6000",
  };
}

/**
 * The server (called through inject, and listening for the application's late results) and the
 * application, each knowing the other's address.
 */
async function setup(env: Record<string, string> = {}, behaviour?: Behaviour): Promise<Setup> {
  const partnerPort = await freePort();
  const t = await createTestApp({ env: { ...testEnv(`http://127.0.0.1:${partnerPort}${WEBHOOK_PATH}`), ...env } });
  await t.app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = t.app.server.address() as AddressInfo;
  const partner = await startPartnerApp({
    secrets: [NEW_SECRET],
    port: partnerPort,
    host: "127.0.0.1",
    serverUrl: `http://127.0.0.1:${port}`,
    appToken: APP_TOKEN,
    behaviour,
    resultRetry: { baseMs: 50, maxMs: 200 },
  });
  return {
    t,
    partner,
    async close() {
      await partner.close();
      await t.close();
    },
  };
}

async function commandOf(t: TestApp, requestId: string) {
  return t.db.provisioningCommand.findFirstOrThrow({ where: { requestId }, include: { attemptRows: { orderBy: { attempt: "asc" } } } });
}

describe("a call still under way at Orange's deadline", () => {
  let s: Setup;
  beforeAll(async () => {
    // The application answers after 1 s; Orange's call waits 300 ms; one call may last 3 s.
    s = await setup({ PROVISIONING_SYNC_DEADLINE_MS: "300" }, { mode: "slow", delayMs: 1_000 });
  });
  afterAll(async () => s?.close());

  it("is not cut at the deadline: its answer completes the order, sent once, and Orange's retry gets it", async () => {
    const { t, partner } = s;
    const body = uc2({ quantity: 1 });
    const first = await t.call("POST", ORDER_URL, body);
    expect(first.status, first.text).toBe(503);
    const order = await t.db.productOrder.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } });

    // No worker here: only the call Orange's request started can complete it.
    const command = await waitFor("the call's late answer", async () => {
      const c = await commandOf(t, order.id);
      return c.state === "done" ? c : undefined;
    }, 10_000);
    expect(command.attempts).toBe(1);
    expect(command.attemptRows.map((a) => [a.outcome, a.status])).toEqual([["done", 200]]);
    expect(partner.received.filter((r) => r.verified)).toHaveLength(1);
    expect(await t.db.licence.count({ where: { orderId: order.id } })).toBe(1);

    const retry = await t.call("POST", ORDER_URL, body);
    expect(retry.status, retry.text).toBe(201);
    expect(retry.body).toMatchObject({ id: order.id, state: "completed" });
    expect(partner.received.filter((r) => r.verified)).toHaveLength(1);
  });
});

describe("a call ended by hand while the application carries it out", () => {
  let s: Setup;
  beforeAll(async () => {
    // The application answers 200 after 1.5 s; Orange's call waits up to 6 s.
    s = await setup({}, { mode: "slow", delayMs: 1_500 });
  });
  afterAll(async () => s?.close());

  it("the application's late 2xx changes nothing: Orange's call answers the operator's outcome, nothing of the order is stored", async () => {
    const { t, partner } = s;
    const body = uc2({ quantity: 1 });
    const calling = t.call("POST", ORDER_URL, body);
    const command = await waitFor("the command under way", async () => {
      const order = await t.db.productOrder.findFirst({ where: { orangeRef: body.externalReference.id } });
      const c = order ? await t.db.provisioningCommand.findFirst({ where: { requestId: order.id } }) : null;
      return c?.state === "sending" ? c : undefined;
    }, 5_000);
    const ended = await t.call("POST", `/admin/v1/provisioning/${command.id}/result`, { outcome: "failed", reason: "cancelled by the partner's support" }, ADMIN);
    expect(ended.status, ended.text).toBe(200);

    // The application's 200 comes once the command was ended: its settling (which applies a known
    // plan right behind its lock) finds the command no longer under way and rolls back.
    const res = await calling;
    expect(res.status, res.text).toBe(201);
    expect(res.body).toMatchObject({ id: command.requestId, state: "failed" });
    expect(partner.received.filter((r) => r.verified)).toHaveLength(1);

    const order = await t.db.productOrder.findUniqueOrThrow({ where: { id: command.requestId } });
    expect(order).toMatchObject({ state: "failed", failureReason: expect.stringContaining("cancelled by the partner's support") });
    expect(await t.db.licence.count({ where: { orderId: order.id } })).toBe(0);
    expect(await t.db.customer.count({ where: { orangeRef: body.customer.externalReference.id } })).toBe(0);
    const after = await commandOf(t, order.id);
    expect(after).toMatchObject({ state: "refused", endedBy: "admin" });
    expect(after.attemptRows).toHaveLength(1);
  });
});

describe("sync answers with the application in between", () => {
  let s: Setup;
  beforeAll(async () => {
    s = await setup();
  });
  afterAll(async () => s?.close());
  beforeEach(() => s.partner.setMode({ mode: "ok" }));

  it("provisions a UC2 order in the application, signed, then answers completed with what the application set up", async () => {
    const { t, partner } = s;
    const body = uc2({ quantity: 3 });
    const res = await t.call("POST", ORDER_URL, body);
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe("completed");
    const fleetId = fleetOf(res);

    // What the application received: one signed command carrying every partner id.
    const calls = partner.received.filter((r) => r.type === "licences.provision");
    expect(calls).toHaveLength(1);
    const call = calls[0]!;
    expect(call.verified).toBe(true);
    const command = await commandOf(t, res.body.id);
    expect(call.headers["webhook-id"]).toBe(command.id);
    expect(String(call.headers["webhook-signature"]).split(" ")).toHaveLength(2);
    // Both secrets verify the same bytes (standardwebhooks, as any application would).
    for (const key of [OLD_SECRET, NEW_SECRET]) {
      expect(() => new Webhook(key).verify(call.body, call.headers as Record<string, string>)).not.toThrow();
    }
    const sent = JSON.parse(call.body);
    expect(sent).toMatchObject({
      type: "licences.provision",
      data: {
        request: { kind: "order", id: res.body.id, orangeReference: body.externalReference.id, useCase: "UC2" },
        customer: { id: res.body.customer.id, orangeReference: body.customer.externalReference.id, contacts: [{ id: res.body.relatedContact[0].id }] },
        fleet: { id: fleetId, new: true, offer: { code: PRO, name: "Caisse Pro", plan: expect.any(String) } },
      },
    });
    expect(call.body).toBe(command.body);

    // The store: the licences the application was told, with what it set up.
    const list = await t.call("GET", `${LIST_URL}?productRefId=${fleetId}`);
    expect(list.body.map((l: { id: string }) => l.id)).toEqual(sent.data.licences.map((l: { id: string }) => l.id));
    const seat = partner.store.licences[list.body[0].id]!;
    expect(list.body[0].realizingResource).toEqual(seat.realizingResource);
    expect(list.body[0].login).toEqual(seat.login);
    expect(res.body.orderItem[0].endUserConfiguration[0].realizingResource).toEqual(seat.realizingResource);
    expect(command).toMatchObject({ state: "done", attempts: 1, type: "licences.provision" });
    // Written prepared with its first attempt in Orange's call, then settled once: one attempt, closed.
    expect(command.preparedAt).toBeInstanceOf(Date);
    expect(command.finishedAt).toBeInstanceOf(Date);
    expect(command.leaseUntil).toBeNull();
    expect(command.plan).not.toBeNull();
    expect(command.attemptRows.map((a) => [a.attempt, a.outcome, a.status, a.finishedAt instanceof Date])).toEqual([[1, "done", 200, true]]);
    expect(command.attemptRows).toMatchObject([{ attempt: 1, outcome: "done", status: 200 }]);
  });

  it("suspends in the application first: one command listing each licence before and after", async () => {
    const { t, partner } = s;
    const order = await t.call("POST", ORDER_URL, uc2({ quantity: 2 }));
    const ids = (await t.call("GET", `${LIST_URL}?productRefId=${fleetOf(order)}`)).body.map((l: { id: string }) => l.id);
    const res = await t.call("POST", UPDATE_URL, suspend(...ids));
    expect(res.body.state, res.text).toBe("completed");
    expect(res.body.userService.map((l: { state: string }) => l.state)).toEqual(["inactive", "inactive"]);
    const call = partner.received.filter((r) => r.type === "licences.suspend").at(-1)!;
    expect(JSON.parse(call.body).data.licences).toEqual(
      ids.map((id: string) => ({
        id,
        fleetId: fleetOf(order),
        before: { state: "active", offer: PRO },
        after: { state: "inactive", externalState: "suspended", offer: PRO },
      })),
    );
    expect(ids.map((id: string) => partner.store.licences[id]!.state)).toEqual(["inactive", "inactive"]);
  });

  it("answers failed with the application's reason, and keeps no trace of a refused order", async () => {
    const { t, partner } = s;
    partner.setMode({ mode: "refuse", reason: "no seat left in this plan" });
    const body = uc2({ quantity: 2 });
    const res = await t.call("POST", ORDER_URL, body);
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({ state: "failed", note: { text: expect.stringContaining("no seat left in this plan") } });
    expect(await t.db.customer.count({ where: { orangeRef: body.customer.externalReference.id } })).toBe(0);
    expect(await t.db.licence.count({ where: { orderId: res.body.id } })).toBe(0);
    expect(await t.db.fleet.count({ where: { customer: { orangeRef: body.customer.externalReference.id } } })).toBe(0);
    expect(await commandOf(t, res.body.id)).toMatchObject({ state: "refused", lastStatus: 409 });
    // A retry answers the same: nothing is sent again.
    const before = partner.received.length;
    const again = await t.call("POST", ORDER_URL, body);
    expect(again.body).toEqual(res.body);
    expect(partner.received.length).toBe(before);
  });

  it("fails an update the rules refuse without calling the application", async () => {
    const { t, partner } = s;
    const before = partner.received.length;
    const res = await t.call("POST", UPDATE_URL, suspend("us_nowhere"));
    expect(res.body).toMatchObject({ state: "failed", note: { text: expect.stringContaining("us_nowhere") } });
    expect(partner.received.length).toBe(before);
    // Its command (the latest of an update) is kept, ended without an attempt, with the rules' reason.
    const command = await t.db.provisioningCommand.findFirstOrThrow({
      where: { requestKind: "update" },
      orderBy: { seq: "desc" },
      include: { attemptRows: true },
    });
    expect(command).toMatchObject({ state: "refused", attempts: 0, preparedAt: null, body: null, attemptRows: [] });
    expect(command.lastError).toContain("us_nowhere");
    expect(command.finishedAt).toBeInstanceOf(Date);
  });
});

describe("an application that answers later (202)", () => {
  let s: Setup;
  beforeAll(async () => {
    s = await setup({ PROVISIONING_SYNC_DEADLINE_MS: "800" }, { mode: "later", delayMs: 1_500 });
  });
  afterAll(async () => s?.close());

  it("answers 503 past the deadline; the application's result completes it; Orange's retry gets the outcome of the same command", async () => {
    const { t, partner } = s;
    const body = uc2({ quantity: 1 });
    const first = await t.call("POST", ORDER_URL, body);
    expect(first.status, first.text).toBe(503);
    expect(first.body).toMatchObject({ code: 5, description: expect.stringContaining("send the same request again") });
    expect(first.headers["retry-after"]).toBeDefined();
    const order = await t.db.productOrder.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } });
    expect(order.state).toBe("acknowledged");
    expect(await t.db.licence.count({ where: { orderId: order.id } })).toBe(0);

    const command = await waitFor("the late result", async () => {
      const c = await commandOf(t, order.id);
      return c.state === "done" ? c : undefined;
    }, 15_000);
    expect(command).toMatchObject({ endedBy: "application", attempts: 1 });
    // The server commits before its answer reaches the application: wait for the application to read it.
    const call = await waitFor("the result call's answer", () => (partner.resultCalls.at(-1)?.status !== undefined ? partner.resultCalls.at(-1) : undefined));
    expect(call).toMatchObject({ commandId: command.id, status: 200 });

    const retry = await t.call("POST", ORDER_URL, body);
    expect(retry.status).toBe(201);
    expect(retry.body).toMatchObject({ id: order.id, state: "completed" });
    expect(partner.received.filter((r) => r.verified)).toHaveLength(1);
    expect(await t.db.licence.count({ where: { orderId: order.id } })).toBe(1);
  });

  it("queues a sync order behind an unfinished command of its customer: nothing is sent before its turn", async () => {
    const { t, partner } = s;
    const customerRef = `CUST-QUEUED-${randomBytes(3).toString("hex")}`;
    const bodies = [uc2({ quantity: 1, customerRef }), uc2({ quantity: 1, customerRef })];
    for (const body of bodies) {
      const res = await t.call("POST", ORDER_URL, body);
      expect(res.status, res.text).toBe(503);
    }
    const [a, b] = await Promise.all(
      bodies.map(async (body) => (await t.db.productOrder.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } })).id),
    );
    const queued = await commandOf(t, b!);
    expect(queued).toMatchObject({ state: "queued", attempts: 0, preparedAt: null, body: null, attemptRows: [] });
    expect(queued.lanes).toEqual([`customer:${customerRef}`]);
    expect((await commandOf(t, a!)).state).toMatch(/^(sending|waiting|done)$/);
    expect(partner.received.filter((r) => r.headers["webhook-id"] === queued.id)).toHaveLength(0);
  });

  it("in auto mode, answers acknowledged past the deadline and sends the outcome as an event", async () => {
    const gw = await startMockGateway();
    const auto = await setup(
      { ORDERING_MODE: "auto", PROVISIONING_SYNC_DEADLINE_MS: "500", ORANGE_CLIENT_ID: gw.clientId, ORANGE_CLIENT_SECRET: gw.clientSecret },
      { mode: "slow", delayMs: 1_200 },
    );
    const worker = await startWorker(gw, auto.t.url, { tasks: auto.t.services.requestTasks });
    try {
      const late = await auto.t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
      expect(late.body.state, late.text).toBe("acknowledged");
      const event = await waitFor("the event", () => gw.delivered().find((r) => (r.body as { resource: { id?: string } }).resource.id === late.body.id), 15_000);
      expect(event.body).toMatchObject({ type: "completedStateNotification", resource: { state: "completed" } });

      auto.partner.setMode({ mode: "ok" });
      const quick = await auto.t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
      expect(quick.body.state, quick.text).toBe("completed");
      expect(await auto.t.db.outboxEvent.count({ where: { orderId: quick.body.id } })).toBe(0);
    } finally {
      await worker.stop();
      await auto.close();
      await gw.close();
    }
  });
});

describe("async answers, retries, parking and order per fleet", () => {
  let s: Setup;
  let gw: MockGateway;
  let worker: WorkerHarness;
  beforeAll(async () => {
    gw = await startMockGateway();
    s = await setup({ ORDERING_MODE: "async", UPDATE_MODE: "async" });
    worker = await startWorker(gw, s.t.url, { tasks: s.t.services.requestTasks, sweepRequests: s.t.services.sweepRequests });
  });
  afterAll(async () => {
    await worker?.stop();
    await s?.close();
    await gw?.close();
  });
  beforeEach(() => s.partner.setMode({ mode: "ok" }));
  afterEach(() => gw.reset());

  const eventFor = (orderId: string) =>
    waitFor("the order's event", () => gw.delivered().find((r) => (r.body as { resource: { id?: string } }).resource.id === orderId), 15_000);

  it("retries an application that is down with the same webhook-id, and completes once it is back", async () => {
    const { t, partner } = s;
    partner.setMode({ mode: "down" });
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 2 }));
    expect(res.body.state).toBe("acknowledged");
    await waitFor("two refused attempts", async () => ((await commandOf(t, res.body.id)).attemptRows.length >= 2 ? true : undefined));
    expect(await t.db.licence.count({ where: { orderId: res.body.id } })).toBe(0);
    partner.setMode({ mode: "ok" });
    const event = await eventFor(res.body.id);
    expect((event.body as { type: string }).type).toBe("completedStateNotification");
    const command = await commandOf(t, res.body.id);
    expect(command.state).toBe("done");
    expect(command.attemptRows.map((a) => a.outcome)).toEqual([...Array(command.attempts - 1).fill("retry"), "done"]);
    const ids = new Set(partner.received.filter((r) => r.body.includes(res.body.id)).map((r) => r.headers["webhook-id"]));
    expect([...ids]).toEqual([command.id]);
    expect(await t.db.licence.count({ where: { orderId: res.body.id } })).toBe(2);
  });

  it("sends again a retrying command whose job a dead worker took, once that job has been held longer than a command's lease (not after the worker's lease)", async () => {
    const { t, partner } = s;
    partner.setMode({ mode: "down" });
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    expect(res.body.state).toBe("acknowledged");
    const { id: commandId } = await commandOf(t, res.body.id);
    // A worker killed just after it took the command's next job, 9 s ago: the job stays locked
    // (until the worker's lease, 60 s here), longer than a command's lease (8 s), the command
    // retrying, due since.
    const probe = new pg.Client({ connectionString: t.url });
    await probe.connect();
    try {
      await waitFor("the command retrying, its job taken by a dead worker", async () => {
        await probe.query("BEGIN");
        const { rows } = await probe.query<{ state: string }>("SELECT state::text AS state FROM provisioning_command WHERE id = $1 FOR UPDATE", [commandId]);
        if (rows[0]?.state !== "retrying") {
          await probe.query("ROLLBACK");
          return undefined;
        }
        await probe.query("UPDATE provisioning_command SET next_attempt_at = now() - interval '9 seconds' WHERE id = $1", [commandId]);
        const locked = await probe.query(
          "UPDATE graphile_worker._private_jobs SET locked_at = now() - interval '9 seconds', locked_by = 'killed-worker' WHERE key = $1 AND locked_at IS NULL",
          [`provision:${commandId}`],
        );
        await probe.query("COMMIT");
        return locked.rowCount === 1 ? true : undefined;
      });
    } finally {
      await probe.end();
    }
    partner.setMode({ mode: "ok" });

    const swept = await worker.worker.sweep();
    expect(swept.rescheduledRequests).toContain(`provision:${commandId}`);
    const event = await eventFor(res.body.id);
    expect((event.body as { type: string }).type).toBe("completedStateNotification");
    const command = await commandOf(t, res.body.id);
    expect(command.state).toBe("done");
    expect(command.attemptRows.at(-1)?.outcome).toBe("done");
    expect(await t.db.licence.count({ where: { orderId: res.body.id } })).toBe(1);
    const sent = partner.received.filter((r) => r.headers["webhook-id"] === commandId);
    expect(sent.filter((r) => r.status === 200)).toHaveLength(1);
  });

  it("parks a command the application never carries out, fails the order for Orange, and an operator can send it again", async () => {
    const { t, partner } = s;
    partner.setMode({ mode: "down" });
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const failed = await eventFor(res.body.id);
    expect(failed.body).toMatchObject({
      type: "failedStateNotification",
      resource: { state: "failed", note: { text: expect.stringContaining("did not carry out the order") } },
    });
    const parked = await commandOf(t, res.body.id);
    expect(parked).toMatchObject({ state: "parked", attempts: 4 });
    expect(await t.db.productOrder.findUniqueOrThrow({ where: { id: res.body.id } })).toMatchObject({ state: "failed" });

    gw.reset();
    partner.setMode({ mode: "ok" });
    const retried = await t.call("POST", `/admin/v1/provisioning/${parked.id}/retry`, {}, ADMIN);
    expect(retried.status, retried.text).toBe(200);
    const completed = await eventFor(res.body.id);
    expect(completed.body).toMatchObject({ type: "completedStateNotification", resource: { state: "completed" } });
    expect(await commandOf(t, res.body.id)).toMatchObject({ state: "done", endedBy: "admin" });
    expect(await t.db.licence.count({ where: { orderId: res.body.id } })).toBe(1);
  });

  it("sends a queued command whose wake-up was lost (the process died once the one before it had committed): the sweep gives it its job", async () => {
    const { t, partner } = s;
    const placed = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const fleetId = ((await eventFor(placed.body.id)).body as { resource: { orderItem: { productRef: { id: string } }[] } }).resource.orderItem[0]!.productRef.id;
    const licence = (await t.call("GET", `${LIST_URL}?productRefId=${fleetId}`)).body[0].id as string;
    // The application takes the suspension (202) and would report in a minute; the reactivation
    // queues behind it in the fleet's lane.
    partner.setMode({ mode: "later", delayMs: 60_000 });
    const first = await t.call("POST", UPDATE_URL, suspend(licence));
    const updateOf = async (r: CallResult) => t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: r.body.externalReference.id } });
    const firstCommand = await waitFor("the suspension waiting for the application", async () => {
      const c = await commandOf(t, (await updateOf(first)).id);
      return c.state === "waiting" ? c : undefined;
    });
    const second = await t.call("POST", UPDATE_URL, stateUpdate("active", licence));
    const secondCommand = await waitFor("the reactivation queued behind it, its job done with", async () => {
      const c = await commandOf(t, (await updateOf(second)).id).catch(() => undefined);
      const jobs = await t.db.$queryRaw<{ n: number }[]>`SELECT count(*)::int AS n FROM graphile_worker._private_jobs WHERE key = ${`provision:${c?.id}`}`;
      return c?.state === "queued" && jobs[0]!.n === 0 ? c : undefined;
    });
    // The suspension ends, and the process dies before it could wake the reactivation.
    await t.db.$executeRaw`UPDATE provisioning_command SET state = 'done', finished_at = now() WHERE id = ${firstCommand.id}`;
    await t.db.$executeRaw`UPDATE licence_update SET state = 'completed', completed_at = now() WHERE id = ${firstCommand.requestId}`;
    partner.setMode({ mode: "ok" });

    const swept = await worker.worker.sweep();
    expect(swept.rescheduledRequests).toContain(`provision:${secondCommand.id}`);
    await waitFor("the reactivation's event", () =>
      gw.delivered().find((r) => (r.body as { resource: { externalReference?: { id?: string } } }).resource.externalReference?.id === second.body.externalReference.id),
    );
    expect((await commandOf(t, secondCommand.requestId)).state).toBe("done");
    expect(partner.received.filter((r) => r.headers["webhook-id"] === secondCommand.id && r.status === 200)).toHaveLength(1);
  });

  it("sends one fleet's commands in Orange's order, and never holds another fleet up", async () => {
    const { t, partner } = s;
    const fleetIdOf = async (orderId: string) =>
      ((await eventFor(orderId)).body as { resource: { orderItem: { productRef: { id: string } }[] } }).resource.orderItem[0]!.productRef.id;
    const a = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const b = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const [fleetA, fleetB] = [await fleetIdOf(a.body.id), await fleetIdOf(b.body.id)];
    const licenceA = (await t.call("GET", `${LIST_URL}?productRefId=${fleetA}`)).body[0].id as string;

    // The application is slow: fleet A's provisioning is still on its way when A's suspend arrives.
    partner.setMode({ mode: "slow", delayMs: 700 });
    const addA = await t.call("POST", ORDER_URL, uc3(fleetA, 1));
    const suspendA = await t.call("POST", UPDATE_URL, suspend(licenceA));
    const addB = await t.call("POST", ORDER_URL, uc3(fleetB, 1));
    for (const r of [addA, suspendA, addB]) expect(r.body.state, r.text).toBe("acknowledged");
    await eventFor(addA.body.id);
    await eventFor(addB.body.id);
    await waitFor("the suspend's event", () => gw.delivered().find((r) => (r.body as { type: string }).type === "updateNotification"), 15_000);

    const received = (pick: (body: string, type?: string) => boolean) => {
      const index = partner.received.findIndex((r) => pick(r.body, r.type));
      expect(index, "a command the application should have received").toBeGreaterThanOrEqual(0);
      return index;
    };
    const addAIndex = received((body) => body.includes(addA.body.id));
    const suspendIndex = received((body, type) => type === "licences.suspend" && body.includes(licenceA));
    const addBIndex = received((body) => body.includes(addB.body.id));
    // The application received A's provisioning, then B's (which did not wait for A), then A's suspend.
    expect(addAIndex).toBeLessThan(suspendIndex);
    expect(addBIndex).toBeLessThan(suspendIndex);
    const commands = await t.db.provisioningCommand.findMany({ where: { lanes: { has: `fleet:${fleetA}` } }, orderBy: { seq: "asc" } });
    expect(commands.map((c) => c.requestId)).toEqual([addA.body.id, (await t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: suspendA.body.externalReference.id } })).id]);
    // A's suspend was prepared (its plan read the licences) only once A's provisioning had finished.
    expect(commands[1]!.preparedAt!.getTime()).toBeGreaterThanOrEqual(commands[0]!.finishedAt!.getTime());
  });
});

describe("the application's credential and the configuration", () => {
  let s: Setup;
  beforeAll(async () => {
    s = await setup();
  });
  afterAll(async () => s?.close());

  it("opens only the routes the application calls", async () => {
    const { t } = s;
    expect((await t.call("GET", "/admin/v1/events", undefined, APP)).status).toBe(403);
    expect((await t.call("GET", "/admin/v1/provisioning", undefined, APP)).status).toBe(403);
    const change = await t.call("POST", "/admin/v1/licence-changes", { userService: [{ id: "us_nowhere", endUserOperation: { action: "delete" } }] }, APP);
    expect(change.status).toBe(404); // through authentication, to the rules
    const result = await t.call("POST", "/admin/v1/provisioning/pc_nowhere/result", { outcome: "completed" }, APP);
    expect(result.status).toBe(404);
    // Raw inject: no command yet, and `[]` is a correct answer for this API.
    expect((await t.app.inject({ method: "GET", url: "/admin/v1/provisioning", headers: ADMIN })).statusCode).toBe(200);
  });

  it("refuses to start with settings that do not fit the mode, saying what to set", () => {
    const base = { INBOUND_BEARER_TOKEN: "x" };
    expect(() => loadConfig({ ...base, PROVISIONING_MODE: "webhook" })).toThrow(/PROVISIONING_URL/);
    expect(() => loadConfig({ ...base, PROVISIONING_MODE: "webhook", PROVISIONING_URL: "http://app.example/hook", PROVISIONING_SECRET: NEW_SECRET })).toThrow(
      /https/,
    );
    expect(() => loadConfig({ ...base, PROVISIONING_MODE: "webhook", PROVISIONING_URL: "https://app.example/hook" })).toThrow(/PROVISIONING_SECRET/);
    expect(() =>
      loadConfig({ ...base, PROVISIONING_MODE: "webhook", PROVISIONING_URL: "https://app.example/hook", PROVISIONING_SECRET: "whsec_short" }),
    ).toThrow(/PROVISIONING_SECRET/);
    expect(() => loadConfig({ ...base, ORDERING_MODE: "auto" })).toThrow(/ORDERING_MODE=auto needs ORANGE_CLIENT_ID/);
    expect(() => loadConfig({ ...base, ADMIN_TOKEN: "same", APP_TOKEN: "same" })).toThrow(/APP_TOKEN must differ/);
  });
});
