import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { ORDER_URL, orange, orderItem, PRO, ref, type ItemOptions } from "./support/fixtures.js";

/**
 * POST /productordering/v2/productOrder (contract sections 0, 2, 5, 7, 8): UC1 to UC3, business
 * failures, validation, idempotency, volume and concurrency, each checked on the answer and then
 * in the database.
 */

const PARTNER_NAME = "Caisse Test SAS";

function customer(customerRef: string, extra: Record<string, unknown> = {}) {
  return {
    externalReference: orange(customerRef),
    tradingName: "Boulangerie Martin",
    organizationCode: "41234567800019",
    postalAddress: { streetAddress: "12 rue des Lilas", postcode: "69003", locality: "Lyon", country: "FR" },
    ...extra,
  };
}

function contacts(contactRef: string) {
  return [
    {
      role: "customerFleetManager",
      externalReference: orange(contactRef),
      givenName: "Claire",
      familyName: "Martin",
      email: "claire.martin@boulangerie-martin.example",
      mobileNumber: { cc: "33", sn: "612345678" },
    },
    { role: "orangeSalesContact", givenName: "Hugo", familyName: "Leroy", email: "hugo.leroy@orange.example" },
  ];
}

function uc1(orderRef: string, customerRef: string, contactRef = ref("CT")) {
  return {
    externalReference: orange(orderRef),
    category: "production",
    orderDate: "2026-05-02T09:15:00.000Z",
    customer: customer(customerRef),
    relatedContact: contacts(contactRef),
  };
}

function uc2(orderRef: string, customerRef: string, o: Omit<ItemOptions, "fleetId">) {
  return {
    externalReference: orange(orderRef),
    category: "production",
    orderDate: "2026-05-02T09:20:00.000Z",
    customer: { externalReference: orange(customerRef), tradingName: "Boulangerie Martin" },
    orderItem: [orderItem(o)],
  };
}

function uc3(orderRef: string, fleetId: string, o: Omit<ItemOptions, "fleetId">, customerRef?: string) {
  return {
    externalReference: orange(orderRef),
    category: "production",
    ...(customerRef !== undefined ? { customer: { externalReference: orange(customerRef) } } : {}),
    orderItem: [orderItem({ ...o, fleetId })],
  };
}

async function postOrder(t: TestApp, body: unknown, headers?: Record<string, string | null>): Promise<CallResult> {
  return t.call("POST", ORDER_URL, body, headers);
}

/** Creates a customer and its fleet through UC2; returns the fleet id and the customer row id. */
async function newFleet(t: TestApp, quantity: number, customerRef = ref("CUST")) {
  const res = await postOrder(t, uc2(ref("ORD"), customerRef, { quantity }));
  expect(res.status).toBe(201);
  expect(res.body.state).toBe("completed");
  return { fleetId: res.body.orderItem[0].productRef.id as string, customerId: res.body.customer.id as string, customerRef };
}

async function orderRow(t: TestApp, orderRef: string) {
  const rows = await t.db.productOrder.findMany({ where: { orangeRef: orderRef } });
  expect(rows, `product_order rows for ${orderRef}`).toHaveLength(1);
  return rows[0]!;
}

async function totals(t: TestApp) {
  const [customers, contactCount, fleets, licences, orders] = await Promise.all([
    t.db.customer.count(),
    t.db.contact.count(),
    t.db.fleet.count(),
    t.db.licence.count(),
    t.db.productOrder.count(),
  ]);
  return { customers, contacts: contactCount, fleets, licences, orders };
}

function expectOrangeError(res: CallResult, status: number, code: number, descriptionMatches: RegExp | string) {
  expect(res.status).toBe(status);
  expect(res.headers["content-type"]).toMatch(/application\/json/);
  expect(Object.keys(res.body).sort()).toEqual(["code", "description", "message"]);
  expect(res.body.code).toBe(code);
  expect(typeof res.body.message).toBe("string");
  expect(res.body.message.length).toBeGreaterThan(0);
  if (typeof descriptionMatches === "string") expect(res.body.description).toContain(descriptionMatches);
  else expect(res.body.description).toMatch(descriptionMatches);
}

describe("POST /productordering/v2/productOrder", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(async () => t.close());

  // -------------------------------------------------------------------------------------------
  describe("UC1: customer and contacts, no order item", () => {
    it("creates the customer and its contacts with partner ids and answers 201 completed", async () => {
      const orderRef = ref("ORD");
      const customerRef = ref("CUST");
      const contactRef = ref("CT");
      const res = await postOrder(t, uc1(orderRef, customerRef, contactRef));

      expect(res.status).toBe(201);
      expect(res.headers["idempotent-replayed"]).toBe("false");
      expect(res.body).toMatchObject({
        externalReference: orange(orderRef),
        category: "production",
        state: "completed",
        orderDate: "2026-05-02T09:15:00.000Z",
        customer: {
          externalReference: orange(customerRef),
          tradingName: "Boulangerie Martin",
          organizationCode: "41234567800019",
          postalAddress: { streetAddress: "12 rue des Lilas", postcode: "69003", locality: "Lyon", country: "FR" },
        },
      });
      expect(res.body.id).toMatch(/^po_/);
      expect(res.body.completionDate).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(res.body.customer.id).toMatch(/^cu_/);
      expect(res.body.orderItem).toBeUndefined();
      expect(res.body.note).toBeUndefined();
      expect(res.body.relatedContact).toHaveLength(2);
      const [claire, hugo] = res.body.relatedContact;
      expect(claire).toMatchObject({ role: "customerFleetManager", externalReference: orange(contactRef), givenName: "Claire" });
      expect(hugo).toMatchObject({ role: "orangeSalesContact", givenName: "Hugo", familyName: "Leroy" });
      expect(claire.id).toMatch(/^ct_/);
      expect(hugo.id).toMatch(/^ct_/);
      expect(claire.id).not.toBe(hugo.id);

      const row = await t.db.customer.findUnique({ where: { orangeRef: customerRef }, include: { contacts: true } });
      expect(row).toMatchObject({
        id: res.body.customer.id,
        tradingName: "Boulangerie Martin",
        organizationCode: "41234567800019",
        postalAddress: { streetAddress: "12 rue des Lilas", postcode: "69003", locality: "Lyon", country: "FR" },
      });
      const byId = new Map(row!.contacts.map((c) => [c.id, c]));
      expect(byId.size).toBe(2);
      expect(byId.get(claire.id)).toMatchObject({
        orangeRef: contactRef,
        role: "customerFleetManager",
        givenName: "Claire",
        familyName: "Martin",
        email: "claire.martin@boulangerie-martin.example",
        mobileNumber: { cc: "33", sn: "612345678" },
      });
      expect(byId.get(hugo.id)).toMatchObject({ orangeRef: null, role: "orangeSalesContact", email: "hugo.leroy@orange.example" });

      const order = await orderRow(t, orderRef);
      expect(order).toMatchObject({ id: res.body.id, state: "completed", useCase: "UC1", customerId: row!.id, fleetId: null });
      expect(await t.db.fleet.count({ where: { customerId: row!.id } })).toBe(0);
    });

    it("updates the known customer and its contacts instead of duplicating them when UC1 is re-sent with another order reference", async () => {
      const customerRef = ref("CUST");
      const contactRef = ref("CT");
      const first = await postOrder(t, uc1(ref("ORD"), customerRef, contactRef));
      expect(first.status).toBe(201);

      const resend = uc1(ref("ORD"), customerRef, contactRef);
      resend.customer.tradingName = "Boulangerie Martin & Fils";
      resend.customer.postalAddress.streetAddress = "14 rue des Lilas";
      resend.relatedContact[0]!.familyName = "Martin-Durand";
      resend.relatedContact[1]!.mobileNumber = { cc: "33", sn: "698765432" };
      const second = await postOrder(t, resend);

      expect(second.status).toBe(201);
      expect(second.body.state).toBe("completed");
      expect(second.headers["idempotent-replayed"]).toBe("false");
      expect(second.body.id).not.toBe(first.body.id);
      expect(second.body.customer.id).toBe(first.body.customer.id);
      expect(second.body.relatedContact.map((c: { id: string }) => c.id)).toEqual(
        first.body.relatedContact.map((c: { id: string }) => c.id),
      );

      const rows = await t.db.customer.findMany({ where: { orangeRef: customerRef }, include: { contacts: true } });
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({
        id: first.body.customer.id,
        tradingName: "Boulangerie Martin & Fils",
        postalAddress: { streetAddress: "14 rue des Lilas" },
      });
      expect(rows[0]!.contacts).toHaveLength(2);
      const claire = rows[0]!.contacts.find((c) => c.orangeRef === contactRef);
      const hugo = rows[0]!.contacts.find((c) => c.role === "orangeSalesContact");
      expect(claire?.familyName).toBe("Martin-Durand");
      expect(hugo?.mobileNumber).toEqual({ cc: "33", sn: "698765432" });
      expect(await t.db.productOrder.count({ where: { customerId: rows[0]!.id } })).toBe(2);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("UC2: first order, new fleet", () => {
    it("creates the fleet and its N active licences and returns the fleet id", async () => {
      const orderRef = ref("ORD");
      const customerRef = ref("CUST");
      const body = uc2(orderRef, customerRef, { quantity: 3, characteristic: [{ name: "storageSize", value: "50GB" }] });
      const res = await postOrder(t, body);

      expect(res.status).toBe(201);
      expect(res.body).toMatchObject({
        externalReference: orange(orderRef),
        state: "completed",
        customer: { externalReference: orange(customerRef), tradingName: "Boulangerie Martin" },
        orderItem: [
          {
            id: "1",
            action: "add",
            state: "completed",
            productOffering: { name: "Caisse Pro", externalReference: orange(PRO) },
            productRef: { userServiceQuantity: 3, characteristic: [{ name: "storageSize", value: "50GB" }] },
          },
        ],
      });
      expect(res.body.orderItem).toHaveLength(1);
      const fleetId = res.body.orderItem[0].productRef.id;
      expect(fleetId).toMatch(/^fl_/);

      const fleet = await t.db.fleet.findUnique({ where: { id: fleetId }, include: { customer: true, licences: true } });
      expect(fleet).not.toBeNull();
      expect(fleet!.customer.orangeRef).toBe(customerRef);
      expect(fleet!.customerId).toBe(res.body.customer.id);
      expect(fleet!.offerCode).toBe(PRO);
      expect(fleet!.characteristics).toEqual([{ name: "storageSize", value: "50GB" }]);
      expect(fleet!.licences).toHaveLength(3);
      for (const l of fleet!.licences) {
        expect(l).toMatchObject({ state: "active", offerCode: PRO, orderId: res.body.id, externalState: null, endUser: null });
      }
      expect(await t.db.fleet.count({ where: { customerId: fleet!.customerId } })).toBe(1);

      const order = await orderRow(t, orderRef);
      expect(order).toMatchObject({
        id: res.body.id,
        state: "completed",
        useCase: "UC2",
        quantity: 3,
        fleetId,
        customerId: fleet!.customerId,
        failureReason: null,
      });
      expect(order.response).toEqual(res.body);
    });

    it("applies endUserConfiguration to the first licences: end users get partner ids, realizingResource is kept", async () => {
      const body = uc2(ref("ORD"), ref("CUST"), {
        quantity: 4,
        endUserConfiguration: [
          {
            endUser: {
              externalReference: orange("EU-1"),
              givenName: "Paul",
              familyName: "Martin",
              email: "paul@boulangerie-martin.example",
            },
            realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://caisse.example/martin" }] },
          },
          { endUser: { givenName: "Lea", familyName: "Bernard", email: "lea@boulangerie-martin.example" } },
          { realizingResource: { type: "mobile", characteristic: [{ name: "msisdn", value: "33612345678" }] } },
        ],
      });
      const res = await postOrder(t, body);

      expect(res.status).toBe(201);
      expect(res.body.state).toBe("completed");
      const config = res.body.orderItem[0].endUserConfiguration;
      expect(config).toHaveLength(3);
      expect(config[0].endUser).toMatchObject({ externalReference: orange("EU-1"), givenName: "Paul", familyName: "Martin" });
      expect(config[0].endUser.id).toMatch(/^eu_/);
      expect(config[0].realizingResource).toEqual({
        type: "url",
        characteristic: [{ name: "url", value: "https://caisse.example/martin" }],
      });
      expect(config[1].endUser).toMatchObject({ givenName: "Lea", familyName: "Bernard" });
      expect(config[1].endUser.id).toMatch(/^eu_/);
      expect(config[1].endUser.id).not.toBe(config[0].endUser.id);
      expect(config[1].realizingResource).toBeUndefined();
      expect(config[2].endUser).toBeUndefined();
      expect(config[2].realizingResource).toEqual({ type: "mobile", characteristic: [{ name: "msisdn", value: "33612345678" }] });

      const fleetId = res.body.orderItem[0].productRef.id;
      const licences = await t.db.licence.findMany({ where: { fleetId }, orderBy: { id: "asc" } });
      expect(licences).toHaveLength(4);
      expect(licences[0]!.endUser).toMatchObject({ id: config[0].endUser.id, givenName: "Paul", email: "paul@boulangerie-martin.example" });
      expect(licences[0]!.realizingResource).toEqual(config[0].realizingResource);
      expect(licences[1]!.endUser).toMatchObject({ id: config[1].endUser.id, givenName: "Lea" });
      expect(licences[1]!.realizingResource).toBeNull();
      expect(licences[2]!.endUser).toBeNull();
      expect(licences[2]!.realizingResource).toEqual(config[2].realizingResource);
      expect(licences[3]!.endUser).toBeNull();
      expect(licences[3]!.realizingResource).toBeNull();
      expect(licences.every((l) => l.state === "active")).toBe(true);
    });

    it("accepts the customer given as a relatedParty entry with role customer", async () => {
      const orderRef = ref("ORD");
      const customerRef = ref("CUST");
      const body = {
        externalReference: orange(orderRef),
        category: "production",
        relatedParty: [
          { role: "seller", externalReference: orange("ORANGE-FR") },
          { role: "customer", externalReference: orange(customerRef), tradingName: "Fromagerie Dupont" },
        ],
        orderItem: [orderItem({ quantity: 2 })],
      };
      const res = await postOrder(t, body);

      expect(res.status).toBe(201);
      expect(res.body.state).toBe("completed");
      expect(res.body.customer).toMatchObject({ externalReference: orange(customerRef), tradingName: "Fromagerie Dupont" });
      expect(res.body.customer.id).toMatch(/^cu_/);
      const fleetId = res.body.orderItem[0].productRef.id;

      const row = await t.db.customer.findUnique({ where: { orangeRef: customerRef }, include: { fleets: true } });
      expect(row).toMatchObject({ id: res.body.customer.id, tradingName: "Fromagerie Dupont" });
      expect(row!.fleets.map((f) => f.id)).toEqual([fleetId]);
      expect(await t.db.licence.count({ where: { fleetId } })).toBe(2);
      expect(await t.db.customer.count({ where: { orangeRef: "ORANGE-FR" } })).toBe(0);
    });

    it("accepts unknown fields, keeps them in product_order.request and does not echo them", async () => {
      const orderRef = ref("ORD");
      const body = {
        "@type": "ProductOrder",
        priority: "4",
        externalReference: { ...orange(orderRef), href: "https://orange.example/orders/1" },
        category: "trial",
        customer: { ...customer(ref("CUST")), segment: "TPE", "@referredType": "Organization" },
        relatedContact: [{ ...contacts(ref("CT"))[0], preferredLanguage: "fr" }],
        orderItem: [
          {
            ...orderItem({ quantity: 1 }),
            quantityUnit: "licence",
            productRef: { userServiceQuantity: 1, billingAccount: { id: "BA-1" } },
          },
        ],
        channel: [{ id: "1", name: "EspaceClient" }],
      };
      const res = await postOrder(t, body);

      expect(res.status).toBe(201);
      expect(res.body.state).toBe("completed");
      expect(res.body.category).toBe("trial");
      for (const unknown of ["@type", "priority", "href", "segment", "@referredType", "preferredLanguage", "quantityUnit", "billingAccount", "channel"]) {
        expect(res.text, `${unknown} must not be echoed`).not.toContain(`"${unknown}"`);
      }

      const order = await orderRow(t, orderRef);
      expect(order.state).toBe("completed");
      expect(order.request).toEqual(body);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("UC3: more licences in a known fleet", () => {
    it("adds N licences to the same fleet, returns the same fleet id and the fleet holds the sum", async () => {
      const { fleetId, customerId } = await newFleet(t, 3);
      const orderRef = ref("ORD");
      const res = await postOrder(t, uc3(orderRef, fleetId, { quantity: 2 }));

      expect(res.status).toBe(201);
      expect(res.body).toMatchObject({
        externalReference: orange(orderRef),
        state: "completed",
        orderItem: [{ state: "completed", productRef: { id: fleetId, userServiceQuantity: 2 } }],
      });
      expect(res.body.customer).toBeUndefined();

      expect(await t.db.fleet.count({ where: { customerId } })).toBe(1);
      expect(await t.db.licence.count({ where: { fleetId } })).toBe(5);
      expect(await t.db.licence.count({ where: { fleetId, orderId: res.body.id, state: "active" } })).toBe(2);
      expect(await orderRow(t, orderRef)).toMatchObject({ state: "completed", useCase: "UC3", fleetId, customerId, quantity: 2 });
    });

    it("accepts UC3 with the customer that owns the fleet and new fleet characteristics", async () => {
      const { fleetId, customerRef } = await newFleet(t, 1);
      const res = await postOrder(
        t,
        uc3(ref("ORD"), fleetId, { quantity: 4, characteristic: [{ name: "storageSize", value: "100GB" }] }, customerRef),
      );

      expect(res.status).toBe(201);
      expect(res.body.state).toBe("completed");
      expect(res.body.orderItem[0].productRef.id).toBe(fleetId);
      const fleet = await t.db.fleet.findUnique({ where: { id: fleetId } });
      expect(fleet!.characteristics).toEqual([{ name: "storageSize", value: "100GB" }]);
      expect(await t.db.licence.count({ where: { fleetId } })).toBe(5);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("business failures: 201 failed with the reason, nothing created", () => {
    function expectFailed(res: CallResult, reason: RegExp) {
      expect(res.status).toBe(201);
      expect(res.body.state).toBe("failed");
      expect(res.body.note.text).toMatch(reason);
      expect(res.body.note.author).toBe(PARTNER_NAME);
      expect(res.body.note.date).toMatch(/Z$/);
      expect(res.body.completionDate).toMatch(/Z$/);
      expect(res.body.orderItem[0].state).toBe("failed");
    }

    async function expectFailedRow(orderRef: string, res: CallResult) {
      const row = await orderRow(t, orderRef);
      expect(row).toMatchObject({ id: res.body.id, state: "failed", failureReason: res.body.note.text, fleetId: null });
      expect(await t.db.licence.count({ where: { orderId: row.id } })).toBe(0);
      return row;
    }

    it("fails an order for an offer code that is not in the catalogue and creates nothing", async () => {
      const orderRef = ref("ORD");
      const customerRef = ref("CUST");
      const before = await totals(t);
      const res = await postOrder(t, uc2(orderRef, customerRef, { quantity: 2, offer: "MBA-UNKNOWN" }));

      expectFailed(res, /MBA-UNKNOWN/);
      expect(res.body.orderItem[0].productOffering.externalReference).toEqual(orange("MBA-UNKNOWN"));
      expect(res.body.orderItem[0].productRef.id).toBeUndefined();
      expect(res.body.customer.id).toBeUndefined();
      await expectFailedRow(orderRef, res);
      expect(await t.db.customer.count({ where: { orangeRef: customerRef } })).toBe(0);
      expect(await totals(t)).toEqual({ ...before, orders: before.orders + 1 });
    });

    it("fails an order whose item action is not add and creates nothing", async () => {
      const orderRef = ref("ORD");
      const before = await totals(t);
      const res = await postOrder(t, uc2(orderRef, ref("CUST"), { quantity: 2, action: "modify" }));

      expectFailed(res, /modify/);
      expect(res.body.orderItem[0].action).toBe("modify");
      await expectFailedRow(orderRef, res);
      expect(await totals(t)).toEqual({ ...before, orders: before.orders + 1 });
    });

    it("fails UC3 on an unknown fleet id, echoes that id and creates nothing", async () => {
      const orderRef = ref("ORD");
      const before = await totals(t);
      const res = await postOrder(t, uc3(orderRef, "fl_doesnotexist", { quantity: 2 }));

      expectFailed(res, /fl_doesnotexist/);
      expect(res.body.orderItem[0].productRef.id).toBe("fl_doesnotexist");
      await expectFailedRow(orderRef, res);
      expect(await t.db.fleet.count({ where: { id: "fl_doesnotexist" } })).toBe(0);
      expect(await totals(t)).toEqual({ ...before, orders: before.orders + 1 });
    });

    it("fails UC3 when the customer of the order does not own the fleet and adds no licence", async () => {
      const owner = await newFleet(t, 2);
      const otherRef = ref("CUST");
      expect((await postOrder(t, uc1(ref("ORD"), otherRef))).status).toBe(201);
      const orderRef = ref("ORD");
      const before = await totals(t);
      const res = await postOrder(t, uc3(orderRef, owner.fleetId, { quantity: 3 }, otherRef));

      expectFailed(res, new RegExp(otherRef));
      expect(res.body.customer.id).toBeUndefined();
      await expectFailedRow(orderRef, res);
      expect(await t.db.licence.count({ where: { fleetId: owner.fleetId } })).toBe(2);
      expect(await totals(t)).toEqual({ ...before, orders: before.orders + 1 });
    });

    it("answers the failed result again on a retry of a failed order", async () => {
      const orderRef = ref("ORD");
      const body = uc2(orderRef, ref("CUST"), { quantity: 1, offer: "MBA-NOPE" });
      const first = await postOrder(t, body);
      expectFailed(first, /MBA-NOPE/);
      const retry = await postOrder(t, body);

      expect(retry.status).toBe(201);
      expect(retry.headers["idempotent-replayed"]).toBe("true");
      expect(retry.body).toEqual(first.body);
      await expectFailedRow(orderRef, first);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("validation: 400 in Orange's error format, nothing stored", () => {
    async function expectRejected(
      body: Record<string, unknown> & { externalReference: { id: string } },
      code: 23 | 24,
      description: RegExp | string,
    ) {
      const before = await totals(t);
      const res = await postOrder(t, body);
      expectOrangeError(res, 400, code, description);
      expect(await t.db.productOrder.count({ where: { orangeRef: body.externalReference.id } })).toBe(0);
      expect(await totals(t)).toEqual(before);
      return res;
    }

    it.each([0, -2, 1.5])("rejects userServiceQuantity %s with code 24 naming the field", async (quantity) => {
      const res = await expectRejected(
        uc2(ref("ORD"), ref("CUST"), { quantity }),
        24,
        "orderItem[0].productRef.userServiceQuantity",
      );
      expect(res.body.description).toContain(String(quantity));
    });

    it("rejects a missing userServiceQuantity with code 23 naming the field", async () => {
      const body = uc2(ref("ORD"), ref("CUST"), { quantity: 1 });
      delete (body.orderItem[0]!.productRef as { userServiceQuantity?: number }).userServiceQuantity;
      await expectRejected(body, 23, "orderItem[0].productRef.userServiceQuantity");
    });

    it("rejects an endUserConfiguration longer than userServiceQuantity with code 24", async () => {
      const endUser = (n: number) => ({ endUser: { givenName: `User${n}` } });
      await expectRejected(
        uc2(ref("ORD"), ref("CUST"), { quantity: 2, endUserConfiguration: [endUser(1), endUser(2), endUser(3)] }),
        24,
        "orderItem[0].endUserConfiguration",
      );
    });

    it("rejects UC2 without a customer with code 23 naming customer", async () => {
      const body: Record<string, unknown> & { externalReference: { id: string } } = uc2(ref("ORD"), ref("CUST"), {
        quantity: 2,
      });
      delete body.customer;
      await expectRejected(body, 23, /\bcustomer\b/);
    });

    it("rejects UC1 without a customer with code 23 naming customer", async () => {
      const body: Record<string, unknown> & { externalReference: { id: string } } = uc1(ref("ORD"), ref("CUST"));
      delete body.customer;
      await expectRejected(body, 23, /\bcustomer\b/);
    });

    it("rejects an order with 2 order items with code 24 naming orderItem", async () => {
      const body = uc2(ref("ORD"), ref("CUST"), { quantity: 1 });
      body.orderItem.push({ ...orderItem({ quantity: 1 }), id: "2" });
      await expectRejected(body, 24, /^orderItem\b/);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("idempotency on Orange's order reference (contract section 8)", () => {
    it("answers the stored result with idempotent-replayed: true and creates nothing when the same order is re-sent", async () => {
      const orderRef = ref("ORD");
      const body = uc2(orderRef, ref("CUST"), { quantity: 3, endUserConfiguration: [{ endUser: { givenName: "Paul" } }] });
      const first = await postOrder(t, body);
      expect(first.status).toBe(201);
      expect(first.headers["idempotent-replayed"]).toBe("false");
      const after = await totals(t);

      const retry = await postOrder(t, body);
      expect(retry.status).toBe(201);
      expect(retry.headers["idempotent-replayed"]).toBe("true");
      expect(retry.body).toEqual(first.body);
      // The very bytes of the first answer, key order included.
      expect(retry.text).toBe(first.text);
      expect(await totals(t)).toEqual(after);
      expect(await t.db.licence.count({ where: { fleetId: first.body.orderItem[0].productRef.id } })).toBe(3);
    });

    it("replays a re-sent order whose keys come in another order", async () => {
      const orderRef = ref("ORD");
      const customerRef = ref("CUST");
      const body = uc2(orderRef, customerRef, { quantity: 2, characteristic: [{ name: "storageSize", value: "50GB" }] });
      const first = await postOrder(t, body);
      expect(first.status).toBe(201);
      const after = await totals(t);

      const reordered = {
        orderItem: [
          {
            productRef: { characteristic: [{ value: "50GB", name: "storageSize" }], userServiceQuantity: 2 },
            productOffering: { externalReference: { id: PRO, type: "orange" }, name: "Caisse Pro" },
            action: "add",
            id: "1",
          },
        ],
        customer: { tradingName: "Boulangerie Martin", externalReference: { id: customerRef, type: "orange" } },
        orderDate: "2026-05-02T09:20:00.000Z",
        category: "production",
        externalReference: { id: orderRef, type: "orange" },
      };
      const retry = await postOrder(t, reordered);
      expect(retry.status).toBe(201);
      expect(retry.headers["idempotent-replayed"]).toBe("true");
      expect(retry.body).toEqual(first.body);
      // The very bytes of the first answer, key order included.
      expect(retry.text).toBe(first.text);
      expect(await totals(t)).toEqual(after);
    });

    it("answers 409 code 63 when the same order reference comes with another body, and changes nothing", async () => {
      const orderRef = ref("ORD");
      const customerRef = ref("CUST");
      const first = await postOrder(t, uc2(orderRef, customerRef, { quantity: 2 }));
      expect(first.status).toBe(201);
      const after = await totals(t);

      const res = await postOrder(t, uc2(orderRef, customerRef, { quantity: 5 }));
      expectOrangeError(res, 409, 63, orderRef);
      expect(await totals(t)).toEqual(after);
      expect(await t.db.licence.count({ where: { fleetId: first.body.orderItem[0].productRef.id } })).toBe(2);
      expect(await orderRow(t, orderRef)).toMatchObject({ id: first.body.id, quantity: 2 });
    });

    it("uses the Idempotency-Key header the same way: replay on the same body, 409 on another body", async () => {
      const key = ref("IDEM");
      const customerRef = ref("CUST");
      const body: Record<string, unknown> = uc2("unused", customerRef, { quantity: 2 });
      delete body.externalReference;

      const first = await postOrder(t, body, { "idempotency-key": key });
      expect(first.status).toBe(201);
      expect(first.headers["idempotent-replayed"]).toBe("false");
      expect(first.body.state).toBe("completed");
      const after = await totals(t);

      const retry = await postOrder(t, body, { "idempotency-key": key });
      expect(retry.status).toBe(201);
      expect(retry.headers["idempotent-replayed"]).toBe("true");
      expect(retry.body).toEqual(first.body);
      // The very bytes of the first answer, key order included.
      expect(retry.text).toBe(first.text);
      expect(await totals(t)).toEqual(after);

      const other = await postOrder(t, uc2("unused", customerRef, { quantity: 7 }), { "idempotency-key": key });
      expectOrangeError(other, 409, 63, key);
      expect(await totals(t)).toEqual(after);

      const rows = await t.db.productOrder.findMany({ where: { idempotencyKey: key } });
      expect(rows).toHaveLength(1);
      expect(await t.db.licence.count({ where: { orderId: rows[0]!.id } })).toBe(2);
    });

    it("identifies the order by the orange entry when externalReference is an array", async () => {
      const orderRef = ref("ORD");
      const body = {
        ...uc2("unused", ref("CUST"), { quantity: 2 }),
        externalReference: [{ type: "crm", id: "CRM-1" }, orange(orderRef)],
      };
      const first = await postOrder(t, body);
      expect(first.status).toBe(201);
      expect(first.body.externalReference).toEqual([{ type: "crm", id: "CRM-1" }, orange(orderRef)]);
      const retry = await postOrder(t, body);
      expect(retry.headers["idempotent-replayed"]).toBe("true");
      expect(retry.body).toEqual(first.body);
      expect(await orderRow(t, orderRef)).toMatchObject({ id: first.body.id, idempotencyKey: orderRef });
      expect(await t.db.licence.count({ where: { orderId: first.body.id } })).toBe(2);
    });

    it("treats orders without reference nor Idempotency-Key as distinct orders", async () => {
      const { fleetId } = await newFleet(t, 1);
      const body: Record<string, unknown> = uc3("unused", fleetId, { quantity: 2 });
      delete body.externalReference;
      const first = await postOrder(t, body);
      const second = await postOrder(t, body);
      expect(first.status).toBe(201);
      expect(second.status).toBe(201);
      expect(second.headers["idempotent-replayed"]).toBe("false");
      expect(second.body.id).not.toBe(first.body.id);
      expect(await t.db.licence.count({ where: { fleetId } })).toBe(5);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("volume and concurrency", () => {
    it("lands every licence of a 5,000-licence order", async () => {
      const orderRef = ref("ORD");
      const res = await postOrder(t, uc2(orderRef, ref("CUST"), { quantity: 5000 }));

      expect(res.status).toBe(201);
      expect(res.body.state).toBe("completed");
      expect(res.body.orderItem[0].productRef.userServiceQuantity).toBe(5000);
      const fleetId = res.body.orderItem[0].productRef.id;
      expect(await t.db.licence.count({ where: { fleetId } })).toBe(5000);
      expect(await t.db.licence.count({ where: { fleetId, orderId: res.body.id, state: "active", offerCode: PRO } })).toBe(5000);
      const [distinct] = await t.db.$queryRaw<{ n: bigint }[]>`
        SELECT count(DISTINCT id) AS n FROM licence WHERE fleet_id = ${fleetId}`;
      expect(Number(distinct!.n)).toBe(5000);
    });

    it("completes two concurrent UC3 orders on the same fleet and the fleet holds the sum", async () => {
      const { fleetId } = await newFleet(t, 1);
      const [a, b] = await Promise.all([
        postOrder(t, uc3(ref("ORD"), fleetId, { quantity: 30 })),
        postOrder(t, uc3(ref("ORD"), fleetId, { quantity: 45 })),
      ]);

      for (const res of [a!, b!]) {
        expect(res.status).toBe(201);
        expect(res.body.state).toBe("completed");
        expect(res.body.orderItem[0].productRef.id).toBe(fleetId);
        expect(res.headers["idempotent-replayed"]).toBe("false");
      }
      expect(await t.db.licence.count({ where: { fleetId } })).toBe(1 + 30 + 45);
      expect(await t.db.licence.count({ where: { orderId: a!.body.id } })).toBe(30);
      expect(await t.db.licence.count({ where: { orderId: b!.body.id } })).toBe(45);
    });

    it("creates the licences once when the same order arrives twice at the same time (one call replays)", async () => {
      const orderRef = ref("ORD");
      const customerRef = ref("CUST");
      const body = uc2(orderRef, customerRef, { quantity: 20 });
      const before = await totals(t);
      const [a, b] = await Promise.all([postOrder(t, body), postOrder(t, body)]);

      expect(a!.status).toBe(201);
      expect(b!.status).toBe(201);
      expect([a!.headers["idempotent-replayed"], b!.headers["idempotent-replayed"]].sort()).toEqual(["false", "true"]);
      expect(b!.body).toEqual(a!.body);
      expect(a!.body.state).toBe("completed");

      const order = await orderRow(t, orderRef);
      expect(order.id).toBe(a!.body.id);
      const customerRow = await t.db.customer.findUnique({ where: { orangeRef: customerRef }, include: { fleets: true } });
      expect(customerRow!.fleets).toHaveLength(1);
      expect(await t.db.licence.count({ where: { fleetId: customerRow!.fleets[0]!.id } })).toBe(20);
      expect(await totals(t)).toEqual({
        ...before,
        customers: before.customers + 1,
        fleets: before.fleets + 1,
        licences: before.licences + 20,
        orders: before.orders + 1,
      });
    });

    it("creates one customer and one set of contacts when two UC1 orders for a new customer arrive at the same time", async () => {
      const customerRef = ref("CUST");
      const contactRef = ref("CT");
      const [a, b] = await Promise.all([
        postOrder(t, uc1(ref("ORD"), customerRef, contactRef)),
        postOrder(t, uc1(ref("ORD"), customerRef, contactRef)),
      ]);

      expect(a!.status).toBe(201);
      expect(b!.status).toBe(201);
      expect(a!.body.state).toBe("completed");
      expect(b!.body.state).toBe("completed");
      expect(b!.body.customer.id).toBe(a!.body.customer.id);
      const rows = await t.db.customer.findMany({ where: { orangeRef: customerRef }, include: { contacts: true } });
      expect(rows).toHaveLength(1);
      expect(rows[0]!.contacts).toHaveLength(2);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("consultation after the order", () => {
    it("lists the licences of a completed order through GET userService?productRefId=<fleet>", async () => {
      const res = await postOrder(
        t,
        uc2(ref("ORD"), ref("CUST"), {
          quantity: 3,
          endUserConfiguration: [
            {
              endUser: { givenName: "Paul", familyName: "Martin", email: "paul@boulangerie-martin.example" },
              realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://caisse.example/martin" }] },
            },
          ],
        }),
      );
      expect(res.status).toBe(201);
      const fleetId = res.body.orderItem[0].productRef.id;
      const endUserId = res.body.orderItem[0].endUserConfiguration[0].endUser.id;
      const more = await postOrder(t, uc3(ref("ORD"), fleetId, { quantity: 2 }));
      expect(more.body.state).toBe("completed");

      const list = await t.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`);
      expect(list.status).toBe(200);
      expect(list.body).toHaveLength(5);
      const rows = await t.db.licence.findMany({ where: { fleetId }, select: { id: true } });
      expect(list.body.map((l: { id: string }) => l.id).sort()).toEqual(rows.map((r) => r.id).sort());
      for (const l of list.body) {
        expect(l).toMatchObject({
          relatedProductRefId: fleetId,
          state: "active",
          productOffering: { name: "Caisse Pro", externalReference: orange(PRO) },
        });
        expect(l.externalState).toBeUndefined();
        expect(l.creationDate).toMatch(/Z$/);
        expect(l.lastUpdate).toMatch(/Z$/);
      }
      const withEndUser = list.body.filter((l: { endUser?: unknown }) => l.endUser !== undefined);
      expect(withEndUser).toHaveLength(1);
      expect(withEndUser[0]).toMatchObject({
        endUser: { id: endUserId, givenName: "Paul", familyName: "Martin", email: "paul@boulangerie-martin.example" },
        realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://caisse.example/martin" }] },
      });
    });
  });
});

// ---------------------------------------------------------------------------------------------
describe("POST /productordering/v2/productOrder with ORDER_MAX_QUANTITY=50", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { ORDER_MAX_QUANTITY: "50" } });
  });
  afterAll(async () => t.close());

  it("rejects a quantity above ORDER_MAX_QUANTITY with 400 code 24 and stores nothing", async () => {
    const orderRef = ref("ORD");
    const customerRef = ref("CUST");
    const before = await totals(t);
    const res = await postOrder(t, uc2(orderRef, customerRef, { quantity: 51 }));

    expectOrangeError(res, 400, 24, "orderItem[0].productRef.userServiceQuantity");
    expect(res.body.description).toContain("50");
    expect(res.body.description).toContain("51");
    expect(await totals(t)).toEqual(before);
  });

  it("rejects a UC3 quantity above ORDER_MAX_QUANTITY and adds nothing to the fleet", async () => {
    const { fleetId } = await newFleet(t, 1);
    const before = await totals(t);
    const res = await postOrder(t, uc3(ref("ORD"), fleetId, { quantity: 1000 }));

    expectOrangeError(res, 400, 24, "orderItem[0].productRef.userServiceQuantity");
    expect(await totals(t)).toEqual(before);
    expect(await t.db.licence.count({ where: { fleetId } })).toBe(1);
  });

  it("accepts a quantity equal to ORDER_MAX_QUANTITY", async () => {
    const res = await postOrder(t, uc2(ref("ORD"), ref("CUST"), { quantity: 50 }));
    expect(res.status).toBe(201);
    expect(res.body.state).toBe("completed");
    expect(await t.db.licence.count({ where: { fleetId: res.body.orderItem[0].productRef.id } })).toBe(50);
  });
});
