import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AUTH, createTestApp, findEmptyNodes, type TestApp } from "./support/app.js";
import { uc2Request } from "./support/examples.js";

/**
 * One smoke test over a real TCP port with the platform's fetch: the server listens, answers
 * ping, takes a UC2 order, lists the new fleet's licences and applies an update, as Orange would
 * see it on the wire.
 */

const UC2_REQUEST = uc2Request();

const ISO_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const PRO = { name: "Caisse Pro", externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } };
const PREMIUM = { name: "Caisse Premium", externalReference: { type: "orange", id: "MBA-CAISSE-PREMIUM" } };

describe("smoke test over a real port", () => {
  let t: TestApp;
  let base: string;
  beforeAll(async () => {
    t = await createTestApp();
    await t.app.listen({ port: 0, host: "127.0.0.1" });
    const address = t.app.server.address() as AddressInfo;
    base = `http://127.0.0.1:${address.port}`;
  });
  afterAll(async () => t.close());

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  async function call(method: string, path: string, body?: unknown): Promise<{ status: number; body: any; response: Response }> {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: {
        accept: "application/json",
        ...AUTH,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    expect(response.headers.get("content-type")).toMatch(/^application\/json/);
    const parsed: unknown = await response.json();
    expect(findEmptyNodes(parsed), `empty nodes in the answer to ${method} ${path}`).toEqual([]);
    return { status: response.status, body: parsed, response };
  }

  it("pings, takes a UC2 order, lists the fleet's licences and updates them", async () => {
    // Availability, without credentials.
    const ping = await fetch(`${base}/ping`);
    expect(ping.status).toBe(200);
    expect(await ping.json()).toEqual({ status: "ok" });

    // UC2: a new fleet with three licences, the first one pre-configured for Paul.
    const order = await call("POST", "/productordering/v2/productOrder", UC2_REQUEST);
    expect(order.status).toBe(201);
    expect(order.response.headers.get("idempotent-replayed")).toBe("false");
    expect(order.body).toMatchObject({
      externalReference: UC2_REQUEST.externalReference,
      category: "production",
      state: "completed",
      orderDate: "2026-05-02T09:20:00.000Z",
      customer: { externalReference: UC2_REQUEST.customer.externalReference, tradingName: "Boulangerie Martin" },
      orderItem: [
        {
          id: "1",
          action: "add",
          state: "completed",
          productOffering: PRO,
          productRef: { userServiceQuantity: 3, characteristic: [{ name: "storageSize", value: "50GB" }] },
          endUserConfiguration: [
            { endUser: { givenName: "Paul", familyName: "Martin", email: "paul@boulangerie-martin.example" } },
          ],
        },
      ],
    });
    expect(order.body.id).toMatch(/^po_/);
    expect(order.body.customer.id).toMatch(/^cu_/);
    expect(order.body.completionDate).toMatch(ISO_MS);
    const fleetId: string = order.body.orderItem[0].productRef.id;
    expect(fleetId).toMatch(/^fl_/);
    const paulId: string = order.body.orderItem[0].endUserConfiguration[0].endUser.id;
    expect(paulId).toMatch(/^eu_/);

    // The fleet's licences.
    const list = await call("GET", `/userservice/v2/userService?productRefId=${encodeURIComponent(fleetId)}`);
    expect(list.status).toBe(200);
    expect(list.body).toHaveLength(3);
    for (const licence of list.body) {
      expect(licence).toMatchObject({ relatedProductRefId: fleetId, state: "active", productOffering: PRO });
      expect(licence.id).toMatch(/^us_/);
      expect(licence.externalState).toBeUndefined();
      expect(licence.creationDate).toMatch(ISO_MS);
      expect(licence.lastUpdate).toMatch(ISO_MS);
    }
    const ids: string[] = list.body.map((l: { id: string }) => l.id);
    expect(new Set(ids).size).toBe(3);
    const withPaul = list.body.filter((l: { endUser?: { id: string } }) => l.endUser !== undefined);
    expect(withPaul).toHaveLength(1);
    expect(withPaul[0].endUser).toMatchObject({ id: paulId, givenName: "Paul", familyName: "Martin" });

    // Suspend one licence, delete another, move the third to Premium: one transaction.
    const [suspended, deleted, swapped] = ids as [string, string, string];
    const updateRef = { type: "orange", id: "UPD-2026-004411" };
    const update = await call("POST", "/userservice/v2/userService/update", {
      externalReference: updateRef,
      userService: [
        { id: suspended, externalState: "suspended" },
        { id: deleted, externalState: "deleted" },
        {
          id: swapped,
          productOfferingOperation: {
            action: "swap",
            productOffering: { externalReference: { type: "orange", id: "MBA-CAISSE-PREMIUM" } },
          },
        },
      ],
    });
    expect(update.status).toBe(200);
    expect(update.body.externalReference).toEqual(updateRef);
    expect(update.body.state).toBe("completed");
    expect(update.body.note).toBeUndefined();
    const after = new Map<string, Record<string, unknown>>(
      update.body.userService.map((l: { id: string }) => [l.id, l]),
    );
    expect(after.size).toBe(3);
    expect(after.get(suspended)).toMatchObject({ relatedProductRefId: fleetId, state: "inactive", externalState: "suspended", productOffering: PRO });
    expect(after.get(deleted)).toMatchObject({ relatedProductRefId: fleetId, state: "terminated", externalState: "deleted", productOffering: PRO });
    expect(after.get(swapped)).toMatchObject({ relatedProductRefId: fleetId, state: "active", productOffering: PREMIUM });

    // The consultation shows the change.
    const again = await call("GET", `/userservice/v2/userService?productRefId=${encodeURIComponent(fleetId)}`);
    expect(again.status).toBe(200);
    const states = Object.fromEntries(again.body.map((l: { id: string; state: string }) => [l.id, l.state]));
    expect(states).toEqual({ [suspended]: "inactive", [deleted]: "terminated", [swapped]: "active" });
  });

  it("answers an open GET /ping over the port with the bytes and headers of the Fastify route", async () => {
    // Over a real port an open GET /ping is answered before routing (src/orange/ping.ts);
    // inject reaches the Fastify route: both must say exactly the same thing.
    const fast = await fetch(`${base}/ping`);
    const routed = await t.app.inject({ method: "GET", url: "/ping" });
    expect(fast.status).toBe(routed.statusCode);
    expect(await fast.text()).toBe(routed.body);
    expect(fast.headers.get("content-type")).toBe(routed.headers["content-type"]);
    expect(fast.headers.get("content-length")).toBe(String(routed.headers["content-length"]));

    // What the fast path does not take still gets Fastify's answers.
    const html = await fetch(`${base}/ping`, { headers: { accept: "text/html" } });
    expect(html.status).toBe(406);
    expect(((await html.json()) as { code: number }).code).toBe(62);
    const post = await fetch(`${base}/ping`, { method: "POST", headers: AUTH });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET");
    await post.body?.cancel();
    const query = await fetch(`${base}/ping?probe=1`);
    expect(query.status).toBe(200);
    expect(await query.text()).toBe(routed.body);
  });
});
