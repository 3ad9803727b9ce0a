import { Webhook } from "standardwebhooks";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import type { CallResult } from "./support/app.js";
import { contact, LIST_URL, orange, ORDER_URL, PAUL, PREMIUM, PRO, ref, stateUpdate, uc2, UPDATE_URL } from "./support/fixtures.js";
import { startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";
import { startProvisioned, type Provisioned } from "./support/provisioned.js";

/**
 * Every command the partner's application can receive, each produced by a real call of Orange's
 * (productOrder, userService/update) in PROVISIONING_MODE=webhook, read as the application reads
 * it (Standard Webhooks signature verified over the bytes received); refusals of updates; the
 * auto answer mode of updates; one call for an order of 10,000 licences.
 */

const fleetOf = (order: CallResult) => order.body.orderItem[0].productRef.id as string;
const swap = (offer: string) => ({ action: "swap", productOffering: { externalReference: orange(offer) } });

async function placeOrder(p: Provisioned, quantity: number): Promise<{ order: CallResult; fleetId: string; ids: string[] }> {
  const order = await p.t.call("POST", ORDER_URL, uc2({ quantity, withContact: true, endUserConfiguration: [{ endUser: PAUL }] }));
  expect(order.body.state, order.text).toBe("completed");
  const fleetId = fleetOf(order);
  const ids = (await p.t.call("GET", `${LIST_URL}?productRefId=${fleetId}`)).body.map((l: { id: string }) => l.id) as string[];
  expect(ids).toHaveLength(quantity);
  return { order, fleetId, ids };
}

async function commandOf(p: Provisioned, requestId: string) {
  return p.t.db.provisioningCommand.findFirstOrThrow({ where: { requestId }, include: { attemptRows: { orderBy: { attempt: "asc" } } } });
}

/**
 * The one command the application received for a request, verified as the application would
 * (standardwebhooks over the raw bytes): its parsed body, with the command row it came from.
 */
async function theCommandFor(p: Provisioned, requestId: string, o: { resent?: boolean } = {}) {
  const calls = p.front.calls.filter((c) => c.body.includes(`"id":"${requestId}"`));
  if (o.resent) {
    expect(calls.length, `calls to the application about ${requestId}`).toBeGreaterThanOrEqual(1);
    // Sent again: the same bytes under the same webhook-id.
    expect(new Set(calls.map((c) => `${String(c.headers["webhook-id"])} ${c.body}`)).size).toBe(1);
  } else {
    expect(calls, `calls to the application about ${requestId}`).toHaveLength(1);
  }
  const call = calls.at(-1)!;
  const headers = {
    "webhook-id": String(call.headers["webhook-id"]),
    "webhook-timestamp": String(call.headers["webhook-timestamp"]),
    "webhook-signature": String(call.headers["webhook-signature"]),
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the command's JSON, read field by field below
  const body = new Webhook(p.secret).verify(call.body, headers) as { type: string; timestamp: string; data: Record<string, any> };
  const command = await commandOf(p, requestId);
  expect(headers["webhook-id"]).toBe(command.id);
  expect(call.body).toBe(command.body);
  expect(body.type).toBe(command.type);
  expect(Number.isNaN(Date.parse(body.timestamp))).toBe(false);
  return { body, command, call };
}

/** The licences' rows as they are, for comparing before and after a refused update. */
async function licenceRows(p: Provisioned, ids: string[]) {
  return p.t.db.licence.findMany({
    where: { id: { in: ids } },
    orderBy: { id: "asc" },
    select: { id: true, state: true, externalState: true, offerCode: true, updatedAt: true, terminatedAt: true, login: true },
  });
}

describe("each command type, from Orange's calls, signed", () => {
  let p: Provisioned;
  beforeAll(async () => {
    p = await startProvisioned();
  });
  afterAll(async () => p?.close());
  beforeEach(() => p.partner.setMode({ mode: "ok" }));

  it("UC1: customer.upserted with the customer and its contacts, partner ids and Orange references", async () => {
    const customerRef = ref("CUS");
    const contactRef = ref("CT");
    const body = {
      externalReference: orange(ref("ORD")),
      category: "production",
      customer: { externalReference: orange(customerRef), tradingName: "Boulangerie Martin", organizationCode: "41234567800019" },
      relatedContact: [contact(contactRef)],
    };
    const res = await p.t.call("POST", ORDER_URL, body);
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe("completed");

    const { body: sent, command } = await theCommandFor(p, res.body.id);
    const customer = await p.t.db.customer.findFirstOrThrow({ where: { orangeRef: customerRef } });
    const contactRow = await p.t.db.contact.findFirstOrThrow({ where: { customerId: customer.id } });
    expect(sent).toEqual({
      type: "customer.upserted",
      timestamp: expect.any(String),
      data: {
        request: { kind: "order", id: res.body.id, orangeReference: body.externalReference.id, useCase: "UC1" },
        customer: {
          id: customer.id,
          orangeReference: customerRef,
          tradingName: "Boulangerie Martin",
          organizationCode: "41234567800019",
          contacts: [
            {
              id: contactRow.id,
              orangeReference: contactRef,
              role: "customerFleetManager",
              givenName: "Claire",
              familyName: "Martin",
              email: "claire.martin@boulangerie-martin.example",
            },
          ],
        },
      },
    });
    expect(command).toMatchObject({ state: "done", attempts: 1, type: "customer.upserted" });
    // The application holds the customer under the partner's id.
    expect(p.partner.store.customers[customer.id]).toMatchObject({ orangeReference: customerRef, contacts: [{ id: contactRow.id }] });
  });

  it("licences.reactivate after a suspend: each licence with its state before and after", async () => {
    const { fleetId, ids } = await placeOrder(p, 2);
    const suspended = await p.t.call("POST", UPDATE_URL, stateUpdate("suspended", ...ids));
    expect(suspended.body.state, suspended.text).toBe("completed");

    const res = await p.t.call("POST", UPDATE_URL, stateUpdate("active", ...ids));
    expect(res.body.state, res.text).toBe("completed");
    const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: res.body.externalReference.id } });
    const { body: sent } = await theCommandFor(p, update.id);
    expect(sent.type).toBe("licences.reactivate");
    expect(sent.data.request).toEqual({ kind: "update", id: update.id, orangeReference: res.body.externalReference.id });
    expect(sent.data.licences).toEqual(
      ids.map((id) => ({
        id,
        fleetId,
        before: { state: "inactive", externalState: "suspended", offer: PRO },
        after: { state: "active", externalState: "active", offer: PRO },
      })),
    );
    expect((await licenceRows(p, ids)).map((l) => l.state)).toEqual(["active", "active"]);
    expect(ids.map((id) => p.partner.store.licences[id]!.state)).toEqual(["active", "active"]);
  });

  it("licences.terminate on delete", async () => {
    const { fleetId, ids } = await placeOrder(p, 2);
    const res = await p.t.call("POST", UPDATE_URL, stateUpdate("deleted", ids[0]!));
    expect(res.body.state, res.text).toBe("completed");
    const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: res.body.externalReference.id } });
    const { body: sent } = await theCommandFor(p, update.id);
    expect(sent.type).toBe("licences.terminate");
    expect(sent.data.licences).toEqual([
      { id: ids[0], fleetId, before: { state: "active", offer: PRO }, after: { state: "terminated", externalState: "deleted", offer: PRO } },
    ]);
    expect((await licenceRows(p, ids)).map((l) => [l.id, l.state])).toEqual(ids.map((id, i) => [id, i === 0 ? "terminated" : "active"]).sort());
    expect(p.partner.store.licences[ids[0]!]!.state).toBe("terminated");
    expect(p.partner.store.licences[ids[1]!]!.state).toBe("active");
  });

  it("licences.change_offer on a swap: the offer before and after", async () => {
    const { fleetId, ids } = await placeOrder(p, 1);
    const body = { externalReference: orange(ref("UPD")), userService: [{ id: ids[0]!, productOfferingOperation: swap(PREMIUM) }] };
    const res = await p.t.call("POST", UPDATE_URL, body);
    expect(res.body.state, res.text).toBe("completed");
    const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } });
    const { body: sent } = await theCommandFor(p, update.id);
    expect(sent.type).toBe("licences.change_offer");
    expect(sent.data.licences).toEqual([{ id: ids[0], fleetId, before: { state: "active", offer: PRO }, after: { state: "active", offer: PREMIUM } }]);
    expect((await licenceRows(p, ids))[0]!.offerCode).toBe(PREMIUM);
    expect(p.partner.store.licences[ids[0]!]!.offer).toBe(PREMIUM);
  });

  it("licences.update for an update mixing kinds of change (a suspend and a swap)", async () => {
    const { fleetId, ids } = await placeOrder(p, 2);
    const [a, b] = ids as [string, string];
    const body = {
      externalReference: orange(ref("UPD")),
      userService: [
        { id: a, externalState: "suspended" },
        { id: b, productOfferingOperation: swap(PREMIUM) },
      ],
    };
    const res = await p.t.call("POST", UPDATE_URL, body);
    expect(res.body.state, res.text).toBe("completed");
    const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } });
    const { body: sent } = await theCommandFor(p, update.id);
    expect(sent.type).toBe("licences.update");
    expect(sent.data.licences).toEqual([
      { id: a, fleetId, before: { state: "active", offer: PRO }, after: { state: "inactive", externalState: "suspended", offer: PRO } },
      { id: b, fleetId, before: { state: "active", offer: PRO }, after: { state: "active", offer: PREMIUM } },
    ]);
    expect(p.partner.store.licences[a]!.state).toBe("inactive");
    expect(p.partner.store.licences[b]!.offer).toBe(PREMIUM);
  });
});

describe("an application that refuses an update", () => {
  const cases = [
    { status: 409, reason: "seat us_x is locked by an open invoice" },
    { status: 422, reason: "the plan premium is not sold to this customer" },
  ];

  describe("sync: Orange's answer is failed with the application's reason, nothing changes", () => {
    let p: Provisioned;
    beforeAll(async () => {
      p = await startProvisioned({ UPDATE_MODE: "sync" });
    });
    afterAll(async () => p?.close());
    afterEach(() => {
      p.front.answer = undefined;
    });

    it.each(cases)("HTTP $status", async ({ status, reason }) => {
      const { ids } = await placeOrder(p, 2);
      const [a, b] = ids as [string, string];
      const before = await licenceRows(p, ids);
      const seatsBefore = structuredClone(ids.map((id) => p.partner.store.licences[id]));
      p.front.answer = (body) => (body.includes('"type":"licences.update"') ? { status, body: { reason } } : undefined);
      const body = {
        externalReference: orange(ref("UPD")),
        userService: [
          { id: a, externalState: "suspended" },
          { id: b, productOfferingOperation: swap(PREMIUM) },
        ],
      };
      const res = await p.t.call("POST", UPDATE_URL, body);
      expect(res.status, res.text).toBe(200);
      expect(res.body).toMatchObject({ state: "failed", note: { text: expect.stringContaining(reason) } });
      // Orange sees the licences as they are.
      expect(res.body.userService).toMatchObject([
        { id: a, state: "active" },
        { id: b, state: "active", productOffering: { externalReference: orange(PRO) } },
      ]);

      const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } });
      expect(update).toMatchObject({ state: "failed", failureReason: expect.stringContaining(reason) });
      const { command } = await theCommandFor(p, update.id);
      expect(command).toMatchObject({ state: "refused", lastStatus: status, attempts: 1 });
      expect(command.attemptRows).toMatchObject([{ attempt: 1, outcome: "refused", status }]);
      expect(await licenceRows(p, ids)).toEqual(before);
      expect(ids.map((id) => p.partner.store.licences[id])).toEqual(seatsBefore);
      const list = await p.t.call("GET", `${LIST_URL}?id=${a},${b}`);
      expect(list.body.map((l: { state: string; productOffering: { externalReference: { id: string } } }) => [l.state, l.productOffering.externalReference.id])).toEqual([
        ["active", PRO],
        ["active", PRO],
      ]);
    });

    it("the reference application's own refusal (409, refuse mode) fails the update the same way", async () => {
      const { ids } = await placeOrder(p, 1);
      const before = await licenceRows(p, ids);
      p.partner.setMode({ mode: "refuse", reason: "this seat is in a legal hold" });
      try {
        const res = await p.t.call("POST", UPDATE_URL, stateUpdate("deleted", ids[0]!));
        expect(res.body).toMatchObject({ state: "failed", note: { text: expect.stringContaining("this seat is in a legal hold") } });
        expect(await licenceRows(p, ids)).toEqual(before);
        expect(p.partner.store.licences[ids[0]!]!.state).toBe("active");
      } finally {
        p.partner.setMode({ mode: "ok" });
      }
    });
  });

  describe("async: the failed updateNotification carries the reason, nothing changes", () => {
    let p: Provisioned;
    let gw: MockGateway;
    let worker: WorkerHarness;
    beforeAll(async () => {
      gw = await startMockGateway();
      p = await startProvisioned({ ORDERING_MODE: "sync", UPDATE_MODE: "async" });
      worker = await startWorker(gw, p.t.url, { tasks: p.t.services.requestTasks, sweepRequests: p.t.services.sweepRequests });
    });
    afterAll(async () => {
      await worker?.stop();
      await p?.close();
      await gw?.close();
    });
    afterEach(() => {
      p.front.answer = undefined;
    });

    it.each(cases)("HTTP $status", async ({ status, reason }) => {
      const { fleetId, ids } = await placeOrder(p, 2);
      const before = await licenceRows(p, ids);
      p.front.answer = (body) => (body.includes('"type":"licences.suspend"') ? { status, body: { reason } } : undefined);
      const body = stateUpdate("suspended", ...ids);
      const ack = await p.t.call("POST", UPDATE_URL, body);
      expect(ack.body.state, ack.text).toBe("acknowledged");

      const event = await waitFor("the update's event", () =>
        gw.delivered().find((r) => JSON.stringify((r.body as { resource: unknown }).resource).includes(body.externalReference.id)),
      );
      expect(event.body).toMatchObject({
        type: "updateNotification",
        resource: {
          externalReference: orange(body.externalReference.id),
          state: "failed",
          note: { text: expect.stringContaining(reason) },
          userService: ids.map((id) => ({ id, relatedProductRefId: fleetId, state: "active" })),
        },
      });
      const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } });
      expect(update.state).toBe("failed");
      const { command } = await theCommandFor(p, update.id);
      expect(command).toMatchObject({ state: "refused", lastStatus: status });
      expect(await licenceRows(p, ids)).toEqual(before);
      // Told once.
      expect(gw.delivered().filter((r) => JSON.stringify(r.body).includes(body.externalReference.id))).toHaveLength(1);
    });
  });
});

describe("UPDATE_MODE=auto with the application in between", () => {
  let p: Provisioned;
  let gw: MockGateway;
  let worker: WorkerHarness;
  beforeAll(async () => {
    gw = await startMockGateway();
    p = await startProvisioned({
      UPDATE_MODE: "auto",
      // Wide enough for an application that answers at once on a loaded machine.
      PROVISIONING_SYNC_DEADLINE_MS: "2000",
      ORANGE_CLIENT_ID: gw.clientId,
      ORANGE_CLIENT_SECRET: gw.clientSecret,
    });
    worker = await startWorker(gw, p.t.url, { tasks: p.t.services.requestTasks, sweepRequests: p.t.services.sweepRequests });
  });
  afterAll(async () => {
    await worker?.stop();
    await p?.close();
    await gw?.close();
  });

  it("answers within the deadline synchronously, with no event", async () => {
    const { ids } = await placeOrder(p, 1);
    const res = await p.t.call("POST", UPDATE_URL, stateUpdate("suspended", ids[0]!));
    expect(res.status, res.text).toBe(200);
    expect(res.body).toMatchObject({ state: "completed", userService: [{ id: ids[0], state: "inactive" }] });
    const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: res.body.externalReference.id } });
    expect(update).toMatchObject({ state: "completed", answerMode: "auto" });
    expect(await p.t.db.outboxEvent.count({ where: { updateId: update.id } })).toBe(0);
    expect((await licenceRows(p, ids))[0]!.state).toBe("inactive");
  });

  it("past the deadline answers acknowledged, and the outcome reaches Orange as an event", async () => {
    const { fleetId, ids } = await placeOrder(p, 1);
    p.partner.setMode({ mode: "slow", delayMs: 4_000 });
    try {
      const body = stateUpdate("suspended", ids[0]!);
      const res = await p.t.call("POST", UPDATE_URL, body);
      expect(res.status, res.text).toBe(200);
      expect(res.body.state).toBe("acknowledged");
      // Not applied before the application confirmed.
      expect((await licenceRows(p, ids))[0]!.state).toBe("active");

      const event = await waitFor("the update's event", () =>
        gw.delivered().find((r) => JSON.stringify((r.body as { resource: unknown }).resource).includes(body.externalReference.id)),
      );
      expect(event.body).toMatchObject({
        type: "updateNotification",
        resource: { state: "completed", userService: [{ id: ids[0], relatedProductRefId: fleetId, state: "inactive", externalState: "suspended" }] },
      });
      expect((await licenceRows(p, ids))[0]!.state).toBe("inactive");
      const update = await p.t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: body.externalReference.id } });
      expect(update.state).toBe("completed");
      // The call cut at the deadline is sent again by the worker under the same webhook-id; the
      // application carried it out once and answered the repeat from what it recorded.
      const { command } = await theCommandFor(p, update.id, { resent: true });
      expect(command.state).toBe("done");
      expect(command.attemptRows.at(-1)).toMatchObject({ outcome: "done", status: 200 });
      const carriedOut = p.partner.received.filter((r) => r.id === command.id && !r.replayed);
      expect(carriedOut).toHaveLength(1);
      expect(p.partner.store.licences[ids[0]!]!.state).toBe("inactive");
      expect(gw.delivered().filter((r) => JSON.stringify(r.body).includes(body.externalReference.id))).toHaveLength(1);
    } finally {
      p.partner.setMode({ mode: "ok" });
    }
  });
});

describe("one call per order, whatever its size", () => {
  let p: Provisioned;
  beforeAll(async () => {
    // A deadline far above what 10,000 licences take here: the answer must be the outcome.
    p = await startProvisioned({ PROVISIONING_SYNC_DEADLINE_MS: "240000", PROVISIONING_TIMEOUT_MS: "120000" });
  });
  afterAll(async () => p?.close());

  it("a UC2 of 10,000 licences: one call listing the 10,000 licence ids", async () => {
    const quantity = 10_000;
    const res = await p.t.call("POST", ORDER_URL, uc2({ quantity }));
    expect(res.status, res.text.slice(0, 500)).toBe(201);
    expect(res.body.state).toBe("completed");

    expect(p.front.calls).toHaveLength(1);
    const { body: sent, command } = await theCommandFor(p, res.body.id);
    expect(sent.type).toBe("licences.provision");
    const sentIds = (sent.data.licences as { id: string }[]).map((l) => l.id);
    expect(sentIds).toHaveLength(quantity);
    expect(new Set(sentIds).size).toBe(quantity);
    const stored = await p.t.db.licence.findMany({ where: { orderId: res.body.id }, select: { id: true }, orderBy: { id: "asc" } });
    expect(stored.map((l) => l.id)).toEqual([...sentIds].sort());
    expect(command).toMatchObject({ state: "done", attempts: 1 });
    expect(Object.keys(p.partner.store.licences).filter((id) => sentIds.includes(id))).toHaveLength(quantity);
  }, 240_000);
});
