/**
 * Product orders: UC1 (customer and contacts), UC2 (new fleet and N licences), UC3 (N more
 * licences in a known fleet). Their rules, for the request lifecycle (lifecycle.ts): every rule
 * is checked before anything is written, so a refused order writes nothing but itself.
 */
import type { Tx } from "../db/sql.js";
import type { Clock } from "../lib/clock.js";
import type { IdGenerator } from "../lib/ids.js";
import { prune, type JsonObject, type JsonValue } from "../lib/json.js";
import type { Catalogue } from "./catalogue.js";
import type { AppLicenceData } from "./ports.js";
import * as customers from "./customers.dal.js";
import type { ContactData, CustomerData } from "./customers.dal.js";
import * as fleets from "./fleets.dal.js";
import * as licences from "./licences.dal.js";
import type { FinalOutcome, Planned, RequestCommand, RequestHandler } from "./lifecycle.js";

export type { ContactData, CustomerData };

/** Pre-configuration of one new licence (endUserConfiguration entry). */
export interface LicenceSeed {
  endUser?: JsonObject;
  realizingResource?: JsonObject;
}

export interface OrderItemData {
  action: string;
  offerCode: string;
  /** Present in UC3: the fleet to add to. */
  fleetId?: string;
  quantity: number;
  fleetCharacteristics?: JsonValue[];
  seeds: LicenceSeed[];
}

export interface PlaceOrderCommand extends RequestCommand {
  customer?: CustomerData;
  contacts: ContactData[];
  item?: OrderItemData;
}

export type UseCase = "UC1" | "UC2" | "UC3";

export interface OrderOutcome extends FinalOutcome {
  useCase: UseCase;
  customerId?: string;
  /** Partner ids of the contacts, in the order of the command. */
  contactIds: string[];
  fleetId?: string;
  licenceIds: string[];
  /** Partner id of the end user of each seed, in the order of the command. */
  endUserIds: (string | undefined)[];
  /** What the partner's application told about the new licences (webhook mode), in licence order. */
  appLicences?: AppLicenceData[];
}

/**
 * What an accepted order will write, with the partner ids decided: the partner's application is
 * told these ids before anything is written (webhook mode), so they are decided with the plan.
 */
export interface OrderPlan {
  /** The customer: the fleet's (UC3), the one with that Orange reference, or a new one. */
  customer?: { id: string; orangeRef: string; existing: boolean };
  /** The contacts' ids, in the order of the command (the one of an earlier match, or a new one). */
  contactIds: string[];
  /** UC2: a new fleet with this id; UC3: the fleet given. */
  fleetId?: string;
  newFleet: boolean;
  licenceIds: string[];
  /** The seeds with their end users' new partner ids. */
  seeds: { endUser: JsonObject | null; realizingResource: JsonObject | null }[];
  endUserIds: (string | undefined)[];
}

export function useCaseOf(cmd: Pick<PlaceOrderCommand, "item">): UseCase {
  if (!cmd.item) return "UC1";
  return cmd.item.fleetId === undefined ? "UC2" : "UC3";
}

export interface OrderHandlerDeps {
  catalogue: Catalogue;
  clock: Clock;
  ids: IdGenerator;
}

export function createOrderHandler(deps: OrderHandlerDeps): RequestHandler<PlaceOrderCommand, OrderPlan, OrderOutcome> {
  const { catalogue, clock, ids } = deps;

  function outcome(requestId: string, cmd: PlaceOrderCommand | undefined, now: Date): OrderOutcome {
    return {
      requestId,
      useCase: cmd ? useCaseOf(cmd) : "UC1",
      state: "completed",
      completedAt: now,
      contactIds: [],
      licenceIds: [],
      endUserIds: [],
    };
  }

  function failure(requestId: string, cmd: PlaceOrderCommand | undefined, reason: string, now: Date): OrderOutcome {
    return { ...outcome(requestId, cmd, now), state: "failed", reason };
  }

  async function plan(tx: Tx, requestId: string, cmd: PlaceOrderCommand): Promise<Planned<OrderPlan, OrderOutcome>> {
    const refuse = (reason: string) => ({ refusal: failure(requestId, cmd, reason, clock.now()) });
    const item = cmd.item;
    if (item && item.action !== "add") {
      return refuse(`orderItem action ${JSON.stringify(item.action)} is not supported; only "add" is`);
    }
    if (item && !catalogue.find(item.offerCode)) {
      return refuse(
        `offer ${JSON.stringify(item.offerCode)} is not in the partner's catalogue (known: ${catalogue.codes().join(", ")})`,
      );
    }
    let customer: OrderPlan["customer"];
    if (item?.fleetId !== undefined) {
      const fleet = await fleets.lockFleet(tx, item.fleetId);
      if (!fleet) return refuse(`fleet (productRef.id) ${JSON.stringify(item.fleetId)} does not exist`);
      if (cmd.customer && cmd.customer.orangeRef !== fleet.orange_ref) {
        return refuse(
          `fleet ${item.fleetId} belongs to customer ${JSON.stringify(fleet.orange_ref)}, not to ${JSON.stringify(cmd.customer.orangeRef)}`,
        );
      }
      customer = { id: fleet.customer_id, orangeRef: fleet.orange_ref, existing: true };
    } else if (cmd.customer) {
      const existing = await customers.lockCustomerByOrangeRef(tx, cmd.customer.orangeRef);
      customer = { id: existing ?? ids.next("cu"), orangeRef: cmd.customer.orangeRef, existing: existing !== undefined };
    }
    const contactIds = customer ? await planContacts(tx, customer, cmd.contacts) : [];
    const empty: OrderPlan = { customer, contactIds, newFleet: false, licenceIds: [], seeds: [], endUserIds: [] };
    if (!item) return { plan: empty };
    const endUserIds: (string | undefined)[] = [];
    const seeds = item.seeds.map((seed) => {
      const endUser = seed.endUser ? { ...seed.endUser, id: ids.next("eu") } : undefined;
      endUserIds.push(endUser?.id as string | undefined);
      return { endUser: endUser ?? null, realizingResource: seed.realizingResource ?? null };
    });
    return {
      plan: {
        ...empty,
        fleetId: item.fleetId ?? ids.next("fl"),
        newFleet: item.fleetId === undefined,
        licenceIds: Array.from({ length: item.quantity }, () => ids.next("us")),
        seeds,
        endUserIds,
      },
    };
  }

  /** The id each contact of the command will have: the one it matches (see upsertContact), or a new one. */
  async function planContacts(tx: Tx, customer: NonNullable<OrderPlan["customer"]>, contacts: ContactData[]): Promise<string[]> {
    const planned: string[] = [];
    for (const [i, c] of contacts.entries()) {
      const earlier = contacts.slice(0, i).findIndex((e) => sameContact(e, c));
      if (earlier >= 0) planned.push(planned[earlier]!);
      else planned.push((customer.existing ? await findContact(tx, customer.id, c) : undefined) ?? ids.next("ct"));
    }
    return planned;
  }

  /**
   * A contact is matched by Orange's id when it has one, else by role and e-mail, so that a
   * customer re-sent by Orange updates its contacts instead of duplicating them.
   */
  async function findContact(tx: Tx, customerId: string, c: ContactData): Promise<string | undefined> {
    if (c.orangeRef !== undefined) return customers.lockContactByOrangeRef(tx, customerId, c.orangeRef);
    if (c.email !== undefined) return customers.lockContactByEmail(tx, customerId, c.role, c.email);
    return undefined;
  }

  /** Looked up again when written: a concurrent order of the same new customer may have created it meanwhile. */
  async function upsertContact(tx: Tx, customerId: string, c: ContactData, plannedId: string, now: Date): Promise<string> {
    const existing = await findContact(tx, customerId, c);
    if (existing !== undefined) {
      await customers.updateContact(tx, existing, c, now);
      return existing;
    }
    return customers.insertContact(tx, plannedId, customerId, c, now);
  }

  async function apply(
    tx: Tx,
    requestId: string,
    cmd: PlaceOrderCommand,
    p: OrderPlan,
    app?: AppLicenceData[],
  ): Promise<OrderOutcome> {
    const now = clock.now();
    const done = outcome(requestId, cmd, now);
    done.customerId = p.customer?.id;
    if (cmd.customer && p.customer) done.customerId = await customers.upsertCustomer(tx, p.customer.id, cmd.customer, now);
    if (done.customerId !== undefined) {
      for (const [i, contact] of cmd.contacts.entries()) {
        done.contactIds.push(await upsertContact(tx, done.customerId, contact, p.contactIds[i] ?? ids.next("ct"), now));
      }
    }
    const item = cmd.item;
    if (item && p.fleetId !== undefined) {
      if (p.newFleet) {
        await fleets.insertFleet(
          tx,
          { id: p.fleetId, customerId: done.customerId!, offerCode: item.offerCode, characteristics: item.fleetCharacteristics },
          now,
        );
      } else if (item.fleetCharacteristics !== undefined) {
        await fleets.setFleetCharacteristics(tx, p.fleetId, item.fleetCharacteristics, now);
      }
      const known = new Set(p.licenceIds);
      const reported = (app ?? []).filter((l) => known.has(l.id));
      await licences.insertLicences(
        tx,
        { ids: p.licenceIds, fleetId: p.fleetId, orderId: requestId, offerCode: item.offerCode, seeds: p.seeds, app: reported },
        now,
      );
      done.fleetId = p.fleetId;
      done.licenceIds = p.licenceIds;
      done.endUserIds = p.endUserIds;
      if (reported.length > 0) {
        const byId = new Map(reported.map((l) => [l.id, l]));
        done.appLicences = p.licenceIds.map((id) => byId.get(id) ?? { id });
      }
    }
    return done;
  }

  /** What the partner's application is asked to carry out: the order with every partner id. */
  function command(requestId: string, cmd: PlaceOrderCommand, p: OrderPlan): { type: string; data: JsonObject } {
    const useCase = useCaseOf(cmd);
    const c = cmd.customer;
    const customer: JsonObject = {
      id: p.customer?.id ?? null,
      orangeReference: p.customer?.orangeRef ?? null,
      ...(c && {
        tradingName: c.tradingName ?? null,
        name: c.name ?? null,
        organizationCode: c.organizationCode ?? null,
        postalAddress: c.postalAddress ?? null,
        characteristic: c.characteristics ?? null,
      }),
      contacts: cmd.contacts.map((ct, i) => ({
        id: p.contactIds[i] ?? null,
        orangeReference: ct.orangeRef ?? null,
        role: ct.role ?? null,
        title: ct.title ?? null,
        givenName: ct.givenName ?? null,
        familyName: ct.familyName ?? null,
        email: ct.email ?? null,
        fixedTelephoneNumber: ct.fixedTelephoneNumber ?? null,
        mobileNumber: ct.mobileNumber ?? null,
      })),
    };
    const request = { kind: "order", id: requestId, orangeReference: cmd.orangeRef ?? null, useCase };
    const item = cmd.item;
    if (!item || p.fleetId === undefined) return { type: "customer.upserted", data: prune({ request, customer }) };
    const offer = catalogue.find(item.offerCode);
    return {
      type: "licences.provision",
      data: prune({
        request,
        customer,
        fleet: {
          id: p.fleetId,
          new: p.newFleet,
          offer: { code: item.offerCode, name: offer?.name ?? null, plan: offer?.plan ?? null },
          characteristic: item.fleetCharacteristics ?? null,
        },
        licences: p.licenceIds.map((id, i) => ({
          id,
          endUser: p.seeds[i]?.endUser ?? null,
          realizingResource: p.seeds[i]?.realizingResource ?? null,
        })),
      }),
    };
  }

  async function lanes(tx: Tx, _requestId: string, cmd: PlaceOrderCommand): Promise<string[]> {
    return [
      ...(cmd.customer ? [`customer:${cmd.customer.orangeRef}`] : []),
      ...(cmd.item?.fleetId !== undefined ? [`fleet:${cmd.item.fleetId}`] : []),
    ];
  }

  return {
    kind: "order",
    describe: (cmd) => ({ order: { useCase: useCaseOf(cmd), quantity: cmd.item?.quantity } }),
    plan,
    apply,
    failure,
    refused: (requestId, cmd, _plan, reason, now) => failure(requestId, cmd, reason, now),
    lanes,
    command,
    finished: (o) => ({ customerId: o.customerId, fleetId: o.fleetId }),
    // One entry for the order, however many licences it created: a licence's own history starts
    // with its later changes.
    summary: (o) => ({
      customerId: o.customerId,
      data: prune({ useCase: o.useCase, licences: o.licenceIds.length > 0 ? o.licenceIds.length : undefined }) as JsonObject,
    }),
    // Ordering key: UC2 the new fleet, UC3 the given fleet (even one that turned out unknown),
    // UC1 and a failed UC2 the order.
    split: (o, cmd) => [{ fleetId: o.fleetId ?? cmd?.item?.fleetId, outcome: o }],
  };
}

function sameContact(a: ContactData, b: ContactData): boolean {
  if (a.orangeRef !== undefined || b.orangeRef !== undefined) return a.orangeRef === b.orangeRef;
  return a.email !== undefined && b.email !== undefined && a.role === b.role && a.email.toLowerCase() === b.email.toLowerCase();
}
