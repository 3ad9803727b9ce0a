import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startPartnerApp, WEBHOOK_PATH, type PartnerApp } from "../examples/partner-app/app.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { freePort } from "../src/simulator/self-host.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { gatewayEnv, startServerProcess, type ServerProcess } from "./support/server-process.js";

/**
 * kill -9 of the real server at each point of a command's life: stored and not yet carried out
 * (the application down, the command retrying), while the application carries it out (it has
 * recorded its answer and not sent it yet), and after the application's 2xx reached the server,
 * before the server could commit it. After a restart the order ends exactly once: no licence
 * twice, the application sees the command again only with the same webhook-id, and Orange gets
 * its outcome once (an event, or the answer to its retry).
 */

const SECRET = `whsec_${randomBytes(32).toString("base64")}`;
const ORDER_URL = "/productordering/v2/productOrder";

let database: TestDatabase;
let gw: MockGateway;
let partner: PartnerApp;
let partnerPort: number;
const servers: ServerProcess[] = [];

/**
 * A door in front of the application: it forwards each command and passes the answer back. Armed
 * with a server, it sends that answer's status and all of its body but the last byte, then kills
 * the server with SIGKILL: the application has answered 2xx, the server cannot have read (let alone
 * committed) it. Disarmed after that once.
 */
let front: Server;
let frontPort: number;
let killOnAnswer: ServerProcess | undefined;

beforeAll(async () => {
  partnerPort = await freePort();
  [database, gw, partner] = await Promise.all([
    createTestDatabase(),
    startMockGateway(),
    startPartnerApp({ secrets: [SECRET], port: partnerPort, host: "127.0.0.1" }),
  ]);
  front = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const headers: Record<string, string> = {};
      for (const name of ["content-type", "webhook-id", "webhook-timestamp", "webhook-signature"]) headers[name] = String(req.headers[name]);
      void (async () => {
        const answer = await fetch(`http://127.0.0.1:${partnerPort}${WEBHOOK_PATH}`, { method: "POST", headers, body: Buffer.concat(chunks) });
        const body = Buffer.from(await answer.arrayBuffer());
        const victim = killOnAnswer;
        if (victim === undefined || answer.status >= 300) {
          res.writeHead(answer.status, { "content-type": "application/json" }).end(body);
          return;
        }
        killOnAnswer = undefined;
        res.writeHead(answer.status, { "content-type": "application/json", "content-length": String(body.length) });
        await new Promise<void>((resolve) => res.write(body.subarray(0, body.length - 1), () => resolve()));
        victim.child.kill("SIGKILL");
        await until("the server's death", () => (victim.alive() ? undefined : true));
        res.destroy();
      })().catch(() => res.destroy());
    });
  });
  await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
  frontPort = (front.address() as AddressInfo).port;
});
afterEach(async () => {
  killOnAnswer = undefined;
  await Promise.all(servers.splice(0).map((s) => s.stop(5_000)));
});
afterAll(async () => {
  front?.closeAllConnections();
  await new Promise((resolve) => front?.close(resolve));
  await partner?.close();
  await gw?.close();
  await database?.drop();
});

async function server(mode: "sync" | "async", o: { viaFront?: boolean; env?: Record<string, string> } = {}): Promise<ServerProcess> {
  const s = await startServerProcess({
    env: {
      DATABASE_URL: database.url,
      ROLE: "all",
      ORDERING_MODE: mode,
      ...gatewayEnv(gw),
      PROVISIONING_MODE: "webhook",
      PROVISIONING_URL: `http://127.0.0.1:${o.viaFront ? frontPort : partnerPort}${WEBHOOK_PATH}`,
      PROVISIONING_SECRET: SECRET,
      PROVISIONING_TIMEOUT_MS: "1500",
      PROVISIONING_RETRY_BASE_MS: "50",
      PROVISIONING_RETRY_MAX_MS: "200",
      PROVISIONING_SYNC_DEADLINE_MS: "4000",
      WORKER_SWEEP_INTERVAL_MS: "300",
      ...o.env,
    },
  });
  servers.push(s);
  return s;
}

function uc2(orderRef: string) {
  return {
    externalReference: { type: "orange", id: orderRef },
    customer: { externalReference: { type: "orange", id: `CUS-${orderRef}` }, tradingName: "Boulangerie Martin" },
    orderItem: [
      { id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } }, productRef: { userServiceQuantity: 3 } },
    ],
  };
}

async function post(s: ServerProcess, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await request(`${s.url}${ORDER_URL}`, {
    method: "POST",
    headers: { authorization: `Bearer ${s.token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    headersTimeout: 20_000,
  });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Everything about one order: the store's rows, what the application holds and what it received. */
async function carriedOutOnce(orderRef: string) {
  const prisma = database.prisma;
  const order = await prisma.productOrder.findFirstOrThrow({ where: { orangeRef: orderRef } });
  const command = await prisma.provisioningCommand.findFirstOrThrow({ where: { requestId: order.id }, include: { attemptRows: true } });
  const licences = await prisma.licence.findMany({ where: { orderId: order.id }, orderBy: { id: "asc" } });
  const received = partner.received.filter((r) => r.body.includes(order.id));
  const seats = Object.values(partner.store.licences).filter((l) => licences.some((x) => x.id === l.id));
  return { order, command, licences, received, seats };
}

describe("kill -9 of the server while the partner's application carries out a command", () => {
  it("async: after a restart the command is sent again with the same webhook-id, the order completes once, its event goes out", async () => {
    partner.setMode({ mode: "slow", delayMs: 2_500 });
    const first = await server("async");
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const ack = await post(first, uc2(orderRef));
    expect(ack.body.state).toBe("acknowledged");
    await until("the application to receive the command", () => partner.received.find((r) => r.body.includes(String(ack.body.id))));
    first.child.kill("SIGKILL");
    await until("the first server's death", () => (first.alive() ? undefined : true));

    partner.setMode({ mode: "ok" });
    await server("async");
    const event = await until("the order's event", () =>
      gw.delivered().find((r) => (r.body as { resource: { id?: string } }).resource.id === ack.body.id),
    );
    expect(event.body).toMatchObject({ type: "completedStateNotification", resource: { state: "completed" } });

    const { order, command, licences, received, seats } = await carriedOutOnce(orderRef);
    expect(order.state).toBe("completed");
    expect(command.state).toBe("done");
    expect(licences).toHaveLength(3);
    expect(seats).toHaveLength(3);
    // Seen again, always under the one webhook-id; applied once on both sides.
    expect(received.length).toBeGreaterThanOrEqual(2);
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set([command.id]));
    expect(command.attemptRows.map((a) => a.outcome).sort()).toEqual(["done", "interrupted"]);
    expect(gw.delivered().filter((r) => (r.body as { resource: { id?: string } }).resource.id === ack.body.id)).toHaveLength(1);
    // The secret signs every call and never shows in what the server writes.
    for (const s of servers) expect(s.output()).not.toContain(SECRET.slice("whsec_".length));
  }, 90_000);

  it("sync: Orange's call is cut; its retry with the same reference gets the one outcome, nothing created twice", async () => {
    partner.setMode({ mode: "slow", delayMs: 2_500 });
    const first = await server("sync");
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const cut = post(first, uc2(orderRef)).then(
      () => "answered",
      () => "cut",
    );
    await until("the application to receive the command", () => partner.received.find((r) => r.body.includes(orderRef)));
    first.child.kill("SIGKILL");
    expect(await cut).toBe("cut");

    partner.setMode({ mode: "ok" });
    const second = await server("sync");
    const retry = await until("Orange's retry to get the outcome", async () => {
      const res = await post(second, uc2(orderRef));
      return res.status === 201 ? res : undefined;
    });
    expect(retry.body).toMatchObject({ state: "completed" });

    const { order, command, licences, received, seats } = await carriedOutOnce(orderRef);
    expect(retry.body.id).toBe(order.id);
    expect(command.state).toBe("done");
    expect(licences).toHaveLength(3);
    expect(seats).toHaveLength(3);
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set([command.id]));
    expect(await database.prisma.productOrder.count({ where: { orangeRef: orderRef } })).toBe(1);
  }, 90_000);
});

/** The order's event(s) at the mock gateway. */
const eventsOf = (orderId: unknown) => gw.delivered().filter((r) => (r.body as { resource: { id?: string } }).resource.id === orderId);

describe("kill -9 of the server before the application carried the command out, and after its 2xx", () => {
  it("async, stored and retrying (the application down): after a restart it is sent under the same webhook-id, carried out once", async () => {
    partner.setMode({ mode: "down" });
    // Bounds far away: the command must still be retrying when the server dies.
    const first = await server("async", { env: { PROVISIONING_MAX_ATTEMPTS: "1000", PROVISIONING_MAX_AGE_MS: "600000" } });
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const ack = await post(first, uc2(orderRef));
    expect(ack.body.state).toBe("acknowledged");
    const retrying = await until("two refused attempts", async () => {
      const c = await database.prisma.provisioningCommand.findFirst({ where: { requestId: String(ack.body.id) }, include: { attemptRows: true } });
      return c && c.attemptRows.filter((a) => a.outcome === "retry").length >= 2 ? c : undefined;
    });
    expect(retrying.state === "retrying" || retrying.state === "sending").toBe(true);
    first.child.kill("SIGKILL");
    await until("the first server's death", () => (first.alive() ? undefined : true));
    // Dead: nothing reached the application's store, nor Orange, nor our licences.
    expect(await database.prisma.licence.count({ where: { orderId: String(ack.body.id) } })).toBe(0);
    expect(eventsOf(ack.body.id)).toHaveLength(0);

    partner.setMode({ mode: "ok" });
    await server("async", { env: { PROVISIONING_MAX_ATTEMPTS: "1000", PROVISIONING_MAX_AGE_MS: "600000" } });
    const event = await until("the order's event", () => eventsOf(ack.body.id)[0], 60_000); // the second server starts (tsx), then the command's lease may have to pass: on a loaded machine, more than 30 s
    expect(event.body).toMatchObject({ type: "completedStateNotification", resource: { state: "completed" } });

    const { order, command, licences, received, seats } = await carriedOutOnce(orderRef);
    expect(order.state).toBe("completed");
    expect(command.state).toBe("done");
    expect(licences).toHaveLength(3);
    expect(seats).toHaveLength(3);
    // The ids the application was given are the ones stored.
    const sentIds = (JSON.parse(command.body!) as { data: { licences: { id: string }[] } }).data.licences.map((l) => l.id).sort();
    expect(licences.map((l) => l.id)).toEqual(sentIds);
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set([command.id]));
    expect(new Set(received.map((r) => r.body))).toEqual(new Set([command.body]));
    // Refused while down, carried out once when back.
    expect(received.filter((r) => r.status === 503).length).toBeGreaterThanOrEqual(2);
    expect(received.filter((r) => r.status === 200 && !r.replayed)).toHaveLength(1);
    const outcomes = [...command.attemptRows].sort((a, b) => a.attempt - b.attempt).map((a) => a.outcome);
    expect(outcomes.at(-1)).toBe("done");
    expect(outcomes.slice(0, -1).every((o) => o === "retry" || o === "interrupted")).toBe(true);
    expect(command.attempts).toBe(outcomes.length);
    // Orange told once, a little later: no second event.
    await new Promise((r) => setTimeout(r, 500));
    expect(eventsOf(ack.body.id)).toHaveLength(1);
  }, 90_000);

  it("async, killed after the application's 2xx and before the commit: sent again under the same webhook-id, the order completes once", async () => {
    partner.setMode({ mode: "ok" });
    const first = await server("async", { viaFront: true });
    killOnAnswer = first;
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const ack = await post(first, uc2(orderRef));
    expect(ack.body.state).toBe("acknowledged");
    await until("the first server's death", () => (first.alive() ? undefined : true));
    expect(first.exit()?.signal).toBe("SIGKILL");
    // The application carried it out; the server did not get to store it.
    const sent = await database.prisma.provisioningCommand.findFirstOrThrow({ where: { requestId: String(ack.body.id) } });
    expect(sent.state).toBe("sending");
    expect(await database.prisma.licence.count({ where: { orderId: String(ack.body.id) } })).toBe(0);
    expect(Object.values(partner.store.licences).filter((l) => sent.body!.includes(l.id))).toHaveLength(3);

    await server("async", { viaFront: true });
    const event = await until("the order's event", () => eventsOf(ack.body.id)[0]);
    expect(event.body).toMatchObject({ type: "completedStateNotification", resource: { state: "completed" } });

    const { order, command, licences, received, seats } = await carriedOutOnce(orderRef);
    expect(order.state).toBe("completed");
    expect(command.state).toBe("done");
    expect(licences).toHaveLength(3);
    expect(seats).toHaveLength(3);
    const sentIds = (JSON.parse(command.body!) as { data: { licences: { id: string }[] } }).data.licences.map((l) => l.id).sort();
    expect(licences.map((l) => l.id)).toEqual(sentIds);
    expect(await database.prisma.licence.count({ where: { fleetId: licences[0]!.fleetId } })).toBe(3);
    // Seen twice under the one webhook-id: carried out the first time, answered from its record the second.
    expect(received).toHaveLength(2);
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set([command.id]));
    expect(received.map((r) => r.replayed)).toEqual([false, true]);
    expect([...command.attemptRows].sort((a, b) => a.attempt - b.attempt).map((a) => a.outcome)).toEqual(["interrupted", "done"]);
    // The licences carry what the application answered (the replayed answer is the first one).
    const seat = partner.store.licences[licences[0]!.id]!;
    expect(licences[0]!.realizingResource).toEqual(seat.realizingResource);
    await new Promise((r) => setTimeout(r, 500));
    expect(eventsOf(ack.body.id)).toHaveLength(1);
  }, 90_000);

  it("sync, killed after the application's 2xx and before the commit: Orange's retry gets completed, nothing created twice", async () => {
    partner.setMode({ mode: "ok" });
    const first = await server("sync", { viaFront: true });
    killOnAnswer = first;
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const cut = await post(first, uc2(orderRef)).then(
      () => "answered",
      () => "cut",
    );
    expect(cut).toBe("cut");
    await until("the first server's death", () => (first.alive() ? undefined : true));
    expect(first.exit()?.signal).toBe("SIGKILL");

    const second = await server("sync", { viaFront: true });
    const retry = await until("Orange's retry to get the outcome", async () => {
      const res = await post(second, uc2(orderRef));
      return res.status === 201 ? res : undefined;
    });
    expect(retry.body).toMatchObject({ state: "completed" });

    const { order, command, licences, received, seats } = await carriedOutOnce(orderRef);
    expect(retry.body.id).toBe(order.id);
    expect(order.state).toBe("completed");
    expect(command.state).toBe("done");
    expect(licences).toHaveLength(3);
    expect(seats).toHaveLength(3);
    expect(await database.prisma.productOrder.count({ where: { orangeRef: orderRef } })).toBe(1);
    expect(received).toHaveLength(2);
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set([command.id]));
    expect(received.map((r) => r.replayed)).toEqual([false, true]);
    expect([...command.attemptRows].sort((a, b) => a.attempt - b.attempt).map((a) => a.outcome)).toEqual(["interrupted", "done"]);
    // A sync order is answered, not announced.
    expect(eventsOf(order.id)).toHaveLength(0);
  }, 90_000);
});
