/**
 * The operators' console in a real browser: Debian's chromium driven by playwright-core, against
 * the real server process. Shared by the console's test and `npm run screenshots`, which both
 * need the same scene: a customer whose first order's event Orange refused (parked, holding its
 * fleet, a later order of the fleet waiting behind it), orders delivered, one failed, an update.
 */
import { existsSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";
import { chromium, type Browser } from "playwright-core";
import { request } from "undici";
import type { MockGateway } from "../../src/simulator/gateway.js";
import { ORDER_URL, PAUL, UPDATE_URL, contact, ref, stateUpdate, uc2, uc3 } from "./fixtures.js";
import type { ServerProcess } from "./server-process.js";

/** Where chromium is: CHROMIUM_PATH, else Debian's package (what .ci/run installs). */
export function chromiumPath(): string | undefined {
  const candidates = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"];
  return candidates.find((p): p is string => p !== undefined && p !== "" && existsSync(p));
}

export async function launchChromium(): Promise<Browser> {
  const executablePath = chromiumPath();
  if (executablePath === undefined) throw new Error("no chromium: install Debian's chromium package or set CHROMIUM_PATH");
  // As root (containers, CI), chromium refuses to start without --no-sandbox.
  return chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
}

interface Answer {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

async function http(server: ServerProcess, method: "GET" | "POST", path: string, token: string, body?: unknown): Promise<Answer> {
  const res = await request(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  });
  const text = await res.body.text();
  return { status: res.statusCode, body: text === "" ? undefined : JSON.parse(text) };
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(100);
  }
}

export interface ConsoleScene {
  /** The order whose completion event Orange refused (400): parked, holding its fleet. */
  parked: { orderId: string; orangeRef: string; fleetId: string; eventId: string };
  /** The fleet's later order (UC3): its event waits behind the parked one. */
  held: { orderId: string; eventId: string };
  /** An order of another customer, delivered. */
  delivered: { orderId: string; orangeRef: string; fleetId: string };
}

/**
 * Builds the scene on a server in ORDERING_MODE=async with ADMIN_TOKEN `adminToken`, delivering
 * to `gateway`; waits until every event is where the scene says.
 */
export async function buildConsoleScene(server: ServerProcess, gateway: MockGateway, adminToken: string): Promise<ConsoleScene> {
  const orange = (path: string, body: unknown) => http(server, "POST", path, server.token, body);
  const admin = (path: string) => http(server, "GET", path, adminToken);
  const eventsOf = async (orderId: string) => (await admin(`/admin/v1/events?orderId=${orderId}`)).body as { id: string; state: string }[];
  const settled = (orderId: string, state: string) =>
    until(`the event of ${orderId} ${state}`, async () => (await eventsOf(orderId)).find((e) => e.state === state));

  // Orange refuses the first event: it is parked.
  gateway.scriptEvents({ status: 400, body: { code: 24, message: "Invalid body field", description: "orderItem[0].state: unexpected" } }, 1);
  const parkedRef = ref("ORD");
  const first = await orange(ORDER_URL, {
    ...uc2({ quantity: 3, orderRef: parkedRef, withContact: true, endUserConfiguration: [{ endUser: PAUL }] }),
  });
  if (first.status !== 201) throw new Error(`the first order was answered ${first.status}: ${JSON.stringify(first.body)}`);
  const dead = await settled(first.body.id, "dead");
  const order = (await admin(`/admin/v1/orders/${first.body.id}`)).body as { fleetId: string };

  // A later order of the same fleet: held behind the parked event.
  const later = await orange(ORDER_URL, uc3(order.fleetId, { quantity: 2 }));
  if (later.status !== 201) throw new Error(`the UC3 order was answered ${later.status}: ${JSON.stringify(later.body)}`);
  const waiting = await until("the UC3 order's event", async () => (await eventsOf(later.body.id)).find((e) => e.state === "pending"));

  // Another customer's order, delivered; one that fails (an offer the catalogue lacks); an update.
  const otherRef = ref("ORD");
  const other = await orange(ORDER_URL, { ...uc2({ quantity: 2, orderRef: otherRef }), relatedContact: [contact()] });
  await settled(other.body.id, "delivered");
  const failed = await orange(ORDER_URL, uc2({ quantity: 1, offer: "MBA-CAISSE-UNKNOWN" }));
  await settled(failed.body.id, "delivered");
  const otherOrder = (await admin(`/admin/v1/orders/${other.body.id}`)).body as { fleetId: string };
  const licences = (await admin(`/admin/v1/licences?fleetId=${otherOrder.fleetId}`)).body as { id: string }[];
  const update = await orange(UPDATE_URL, stateUpdate("suspended", licences[0]!.id));
  if (update.status !== 200) throw new Error(`the update was answered ${update.status}: ${JSON.stringify(update.body)}`);

  return {
    parked: { orderId: first.body.id, orangeRef: parkedRef, fleetId: order.fleetId, eventId: dead.id },
    held: { orderId: later.body.id, eventId: waiting.id },
    delivered: { orderId: other.body.id, orangeRef: otherRef, fleetId: otherOrder.fleetId },
  };
}
