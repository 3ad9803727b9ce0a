/**
 * Product orders: UC1 (customer and contacts), UC2 (new fleet and N licences), UC3 (N more
 * licences in a known fleet). Their rules, for the request lifecycle (lifecycle.ts): every rule
 * is checked before anything is written, so a refused order writes nothing but itself.
 */
import type { Tx } from "../db/sql.js";
import type { Clock } from "../lib/clock.js";
import type { IdGenerator } from "../lib/ids.js";
import type { JsonObject, JsonValue } from "../lib/json.js";
import type { Catalogue } from "./catalogue.js";
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
}

/** What an accepted order will write: the partner ids are decided with the plan. */
export interface OrderPlan {
  /** The fleet's customer (UC3); UC1/UC2 get theirs when the customer is written. */
  customerId?: string;
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
    const empty: OrderPlan = { newFleet: false, licenceIds: [], seeds: [], endUserIds: [] };
    if (!item) return { plan: empty };
    if (item.action !== "add") {
      return refuse(`orderItem action ${JSON.stringify(item.action)} is not supported; only "add" is`);
    }
    if (!catalogue.find(item.offerCode)) {
      return refuse(
        `offer ${JSON.stringify(item.offerCode)} is not in the partner's catalogue (known: ${catalogue.codes().join(", ")})`,
      );
    }
    let customerId: string | undefined;
    if (item.fleetId !== undefined) {
      const fleet = await fleets.lockFleet(tx, item.fleetId);
      if (!fleet) return refuse(`fleet (productRef.id) ${JSON.stringify(item.fleetId)} does not exist`);
      if (cmd.customer && cmd.customer.orangeRef !== fleet.orange_ref) {
        return refuse(
          `fleet ${item.fleetId} belongs to customer ${JSON.stringify(fleet.orange_ref)}, not to ${JSON.stringify(cmd.customer.orangeRef)}`,
        );
      }
      customerId = fleet.customer_id;
    }
    const endUserIds: (string | undefined)[] = [];
    const seeds = item.seeds.map((seed) => {
      const endUser = seed.endUser ? { ...seed.endUser, id: ids.next("eu") } : undefined;
      endUserIds.push(endUser?.id as string | undefined);
      return { endUser: endUser ?? null, realizingResource: seed.realizingResource ?? null };
    });
    return {
      plan: {
        customerId,
        fleetId: item.fleetId ?? ids.next("fl"),
        newFleet: item.fleetId === undefined,
        licenceIds: Array.from({ length: item.quantity }, () => ids.next("us")),
        seeds,
        endUserIds,
      },
    };
  }

  /**
   * A contact is matched by Orange's id when it has one, else by role and e-mail, so that a
   * customer re-sent by Orange updates its contacts instead of duplicating them.
   */
  async function upsertContact(tx: Tx, customerId: string, c: ContactData, now: Date): Promise<string> {
    const existing =
      c.orangeRef !== undefined
        ? await customers.lockContactByOrangeRef(tx, customerId, c.orangeRef)
        : c.email !== undefined
          ? await customers.lockContactByEmail(tx, customerId, c.role, c.email)
          : undefined;
    if (existing !== undefined) {
      await customers.updateContact(tx, existing, c, now);
      return existing;
    }
    return customers.insertContact(tx, ids.next("ct"), customerId, c, now);
  }

  async function apply(tx: Tx, requestId: string, cmd: PlaceOrderCommand, p: OrderPlan): Promise<OrderOutcome> {
    const now = clock.now();
    const done = outcome(requestId, cmd, now);
    done.customerId = p.customerId;
    if (cmd.customer) done.customerId = await customers.upsertCustomer(tx, ids.next("cu"), cmd.customer, now);
    if (done.customerId !== undefined) {
      for (const contact of cmd.contacts) done.contactIds.push(await upsertContact(tx, done.customerId, contact, now));
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
      await licences.insertLicences(
        tx,
        { ids: p.licenceIds, fleetId: p.fleetId, orderId: requestId, offerCode: item.offerCode, seeds: p.seeds },
        now,
      );
      done.fleetId = p.fleetId;
      done.licenceIds = p.licenceIds;
      done.endUserIds = p.endUserIds;
    }
    return done;
  }

  return {
    kind: "order",
    describe: (cmd) => ({ order: { useCase: useCaseOf(cmd), quantity: cmd.item?.quantity } }),
    plan,
    apply,
    failure,
    finished: (o) => ({ customerId: o.customerId, fleetId: o.fleetId }),
    // Ordering key: UC2 the new fleet, UC3 the given fleet (even one that turned out unknown),
    // UC1 and a failed UC2 the order.
    split: (o, cmd) => [{ fleetId: o.fleetId ?? cmd?.item?.fleetId, outcome: o }],
  };
}
