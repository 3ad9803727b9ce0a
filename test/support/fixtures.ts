/**
 * The pieces of Orange's requests the tests build again and again: unique references, offers,
 * the routes, and orders of each use case. Every call returns a fresh object; every reference is
 * unique, so the tests of one file (and reruns) never see each other's rows.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

export const ORDER_URL = "/productordering/v2/productOrder";
export const UPDATE_URL = "/userservice/v2/userService/update";
export const LIST_URL = "/userservice/v2/userService";

/** The offers of the default catalogue (config/catalogue.json), by code, with their names. */
export const OFFER_NAMES: Record<string, string> = Object.fromEntries(
  (JSON.parse(readFileSync(new URL("../../config/catalogue.json", import.meta.url), "utf8")) as { offers: { code: string; name: string }[] }).offers.map(
    (o) => [o.code, o.name],
  ),
);
export const PRO = "MBA-CAISSE-PRO";
export const PREMIUM = "MBA-CAISSE-PREMIUM";
export const ESSENTIEL = "MBA-CAISSE-ESSENTIEL";

/** A reference no other test (nor a rerun) uses. */
export function ref(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

/** An externalReference of Orange's. */
export const orange = (id: string) => ({ type: "orange", id });

export function offering(code: string) {
  return { name: OFFER_NAMES[code] ?? code, externalReference: orange(code) };
}

export const PAUL = { givenName: "Paul", familyName: "Martin", email: "paul@boulangerie-martin.example" };

export function contact(contactRef = ref("CT")) {
  return {
    role: "customerFleetManager",
    externalReference: orange(contactRef),
    givenName: "Claire",
    familyName: "Martin",
    email: "claire.martin@boulangerie-martin.example",
  };
}

export interface ItemOptions {
  quantity: number;
  fleetId?: string;
  offer?: string;
  action?: string;
  endUserConfiguration?: unknown[];
  characteristic?: { name: string; value: string }[];
}

export function orderItem(o: ItemOptions) {
  return {
    id: "1",
    action: o.action ?? "add",
    productOffering: offering(o.offer ?? PRO),
    productRef: {
      ...(o.fleetId !== undefined ? { id: o.fleetId } : {}),
      userServiceQuantity: o.quantity,
      ...(o.characteristic ? { characteristic: o.characteristic } : {}),
    },
    ...(o.endUserConfiguration ? { endUserConfiguration: o.endUserConfiguration } : {}),
  };
}

export interface Uc2Options extends Omit<ItemOptions, "fleetId"> {
  orderRef?: string;
  customerRef?: string;
  /** With a contact of the customer (relatedContact). */
  withContact?: boolean;
}

/** UC2: a customer's first order, a new fleet of `quantity` licences. */
export function uc2(o: Uc2Options) {
  return {
    externalReference: orange(o.orderRef ?? ref("ORD")),
    category: "production",
    orderDate: "2026-05-02T09:20:00.000Z",
    customer: { externalReference: orange(o.customerRef ?? ref("CUS")), tradingName: "Boulangerie Martin", organizationCode: "41234567800019" },
    ...(o.withContact ? { relatedContact: [contact()] } : {}),
    orderItem: [orderItem(o)],
  };
}

/** UC3: `quantity` more licences in a known fleet. */
export function uc3(fleetId: string, o: Omit<ItemOptions, "fleetId"> & { orderRef?: string; customerRef?: string }) {
  return {
    externalReference: orange(o.orderRef ?? ref("ORD")),
    category: "production",
    ...(o.customerRef !== undefined ? { customer: { externalReference: orange(o.customerRef) } } : {}),
    orderItem: [orderItem({ ...o, fleetId })],
  };
}

/** An update: each licence to a state (suspended, active, deleted…). */
export function stateUpdate(state: string, ...licenceIds: string[]) {
  return { externalReference: orange(ref("UPD")), userService: licenceIds.map((id) => ({ id, externalState: state })) };
}
