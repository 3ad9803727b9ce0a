import type { Db, Tx } from "../db/prisma.js";
import { scheduleRequestJob } from "../events/jobs.js";
import { enqueueEvent } from "../events/outbox.js";
import type { Catalogue } from "./catalogue.js";
import type { Clock } from "../lib/clock.js";
import { replayOrConflict, type StoredRequest } from "./idempotency.js";
import type { IdGenerator } from "../lib/ids.js";
import type { JsonObject, JsonValue } from "../lib/json.js";

/**
 * Product orders: UC1 (customer and contacts), UC2 (new fleet and N licences), UC3 (N more
 * licences in a known fleet). One order is one transaction: the order row (with Orange's raw
 * request) is written first, so that the order is durable before it is answered and a retry of
 * the same reference waits on it and then answers what it produced.
 */

export interface CustomerData {
  orangeRef: string;
  tradingName?: string;
  name?: string;
  organizationCode?: string;
  postalAddress?: JsonObject;
  characteristics?: JsonValue[];
}

export interface ContactData {
  orangeRef?: string;
  role?: string;
  title?: string;
  givenName?: string;
  familyName?: string;
  email?: string;
  fixedTelephoneNumber?: JsonObject;
  mobileNumber?: JsonObject;
  characteristics?: JsonValue[];
}

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

export interface PlaceOrderCommand {
  /** Orange's order reference or the Idempotency-Key header. */
  idempotencyKey?: string;
  orangeRef?: string;
  requestHash: string;
  request: JsonValue;
  customer?: CustomerData;
  contacts: ContactData[];
  item?: OrderItemData;
}

export type UseCase = "UC1" | "UC2" | "UC3";

export interface OrderOutcome {
  orderId: string;
  useCase: UseCase;
  state: "completed" | "failed";
  reason?: string;
  completedAt: Date;
  customerId?: string;
  /** Partner ids of the contacts, in the order of the command. */
  contactIds: string[];
  fleetId?: string;
  licenceIds: string[];
  /** Partner id of the end user of each seed, in the order of the command. */
  endUserIds: (string | undefined)[];
}

export interface OrderReply {
  /** True when this is a retry answered from the stored result of the first call. */
  replayed: boolean;
  response: unknown;
}

/** How the `process_order` job reads a stored request and renders the final order (src/orange owns both). */
export interface OrderWire {
  toCommand(request: JsonValue): PlaceOrderCommand;
  render(request: JsonValue, outcome: OrderOutcome): unknown;
}

export interface OrderServiceDeps {
  db: Db;
  catalogue: Catalogue;
  clock: Clock;
  ids: IdGenerator;
  transactionTimeoutMs: number;
}

export function useCaseOf(cmd: Pick<PlaceOrderCommand, "item">): UseCase {
  if (!cmd.item) return "UC1";
  return cmd.item.fleetId === undefined ? "UC2" : "UC3";
}

class OrderFailed extends Error {}

export function createOrderService(deps: OrderServiceDeps) {
  const { db, catalogue, clock, ids } = deps;

  async function claimOrder(tx: Tx, cmd: PlaceOrderCommand, orderId: string, now: Date) {
    const useCase = useCaseOf(cmd);
    // ON CONFLICT waits for a concurrent transaction holding the same key, so two identical
    // requests never both create licences: the second sees the first's row once it commits.
    const inserted = await tx.$queryRaw<{ id: string }[]>`
      INSERT INTO product_order (id, idempotency_key, orange_ref, request_hash, request, state,
                                 use_case, quantity, created_at)
      VALUES (${orderId}, ${cmd.idempotencyKey ?? null}, ${cmd.orangeRef ?? null}, ${cmd.requestHash},
              ${JSON.stringify(cmd.request)}::json, 'acknowledged'::"RequestState", ${useCase},
              ${cmd.item?.quantity ?? null}, ${now})
      ON CONFLICT (idempotency_key) DO NOTHING
      RETURNING id`;
    if (inserted.length > 0) return null;
    const [stored] = await tx.$queryRaw<StoredRequest[]>`
      SELECT id, request_hash, response FROM product_order WHERE idempotency_key = ${cmd.idempotencyKey ?? null}`;
    return replayOrConflict("order", stored, cmd);
  }

  /** Every business rule is checked before anything is written, so a failed order writes nothing but itself. */
  async function check(tx: Tx, cmd: PlaceOrderCommand): Promise<{ customerId?: string }> {
    const item = cmd.item;
    if (!item) return {};
    if (item.action !== "add") {
      throw new OrderFailed(`orderItem action ${JSON.stringify(item.action)} is not supported; only "add" is`);
    }
    if (!catalogue.find(item.offerCode)) {
      throw new OrderFailed(
        `offer ${JSON.stringify(item.offerCode)} is not in the partner's catalogue (known: ${catalogue.codes().join(", ")})`,
      );
    }
    if (item.fleetId === undefined) return {};
    // The fleet row is locked so that concurrent orders on one fleet serialise cleanly.
    const [fleet] = await tx.$queryRaw<{ id: string; customer_id: string; orange_ref: string }[]>`
      SELECT f.id, f.customer_id, c.orange_ref
      FROM fleet f JOIN customer c ON c.id = f.customer_id
      WHERE f.id = ${item.fleetId}
      FOR UPDATE OF f`;
    if (!fleet) throw new OrderFailed(`fleet (productRef.id) ${JSON.stringify(item.fleetId)} does not exist`);
    if (cmd.customer && cmd.customer.orangeRef !== fleet.orange_ref) {
      throw new OrderFailed(
        `fleet ${item.fleetId} belongs to customer ${JSON.stringify(fleet.orange_ref)}, not to ${JSON.stringify(cmd.customer.orangeRef)}`,
      );
    }
    return { customerId: fleet.customer_id };
  }

  async function upsertCustomer(tx: Tx, c: CustomerData, now: Date): Promise<string> {
    const [row] = await tx.$queryRaw<{ id: string }[]>`
      INSERT INTO customer (id, orange_ref, trading_name, name, organization_code, postal_address,
                            characteristics, created_at, updated_at)
      VALUES (${ids.next("cu")}, ${c.orangeRef}, ${c.tradingName ?? null}, ${c.name ?? null},
              ${c.organizationCode ?? null}, ${json(c.postalAddress)}::jsonb, ${json(c.characteristics)}::jsonb,
              ${now}, ${now})
      ON CONFLICT (orange_ref) DO UPDATE SET
        trading_name      = COALESCE(EXCLUDED.trading_name, customer.trading_name),
        name              = COALESCE(EXCLUDED.name, customer.name),
        organization_code = COALESCE(EXCLUDED.organization_code, customer.organization_code),
        postal_address    = COALESCE(EXCLUDED.postal_address, customer.postal_address),
        characteristics   = COALESCE(EXCLUDED.characteristics, customer.characteristics),
        updated_at        = EXCLUDED.updated_at
      RETURNING id`;
    return row!.id;
  }

  /**
   * A contact is matched by Orange's id when it has one, else by role and e-mail, so that a
   * customer re-sent by Orange updates its contacts instead of duplicating them.
   */
  async function upsertContact(tx: Tx, customerId: string, c: ContactData, now: Date): Promise<string> {
    let existingId: string | undefined;
    if (c.orangeRef !== undefined) {
      [existingId] = (
        await tx.$queryRaw<{ id: string }[]>`
          SELECT id FROM contact WHERE customer_id = ${customerId} AND orange_ref = ${c.orangeRef} FOR UPDATE`
      ).map((r) => r.id);
    } else if (c.email !== undefined) {
      [existingId] = (
        await tx.$queryRaw<{ id: string }[]>`
          SELECT id FROM contact
          WHERE customer_id = ${customerId} AND orange_ref IS NULL
            AND role IS NOT DISTINCT FROM ${c.role ?? null} AND lower(email) = lower(${c.email})
          ORDER BY created_at LIMIT 1 FOR UPDATE`
      ).map((r) => r.id);
    }
    if (existingId !== undefined) {
      await tx.$executeRaw`
        UPDATE contact SET
          role = COALESCE(${c.role ?? null}, role),
          title = COALESCE(${c.title ?? null}, title),
          given_name = COALESCE(${c.givenName ?? null}, given_name),
          family_name = COALESCE(${c.familyName ?? null}, family_name),
          email = COALESCE(${c.email ?? null}, email),
          fixed_telephone_number = COALESCE(${json(c.fixedTelephoneNumber)}::jsonb, fixed_telephone_number),
          mobile_number = COALESCE(${json(c.mobileNumber)}::jsonb, mobile_number),
          characteristics = COALESCE(${json(c.characteristics)}::jsonb, characteristics),
          updated_at = ${now}
        WHERE id = ${existingId}`;
      return existingId;
    }
    const id = ids.next("ct");
    // ON CONFLICT covers two concurrent orders creating the same Orange contact.
    const [row] = await tx.$queryRaw<{ id: string }[]>`
      INSERT INTO contact (id, customer_id, orange_ref, role, title, given_name, family_name, email,
                           fixed_telephone_number, mobile_number, characteristics, created_at, updated_at)
      VALUES (${id}, ${customerId}, ${c.orangeRef ?? null}, ${c.role ?? null}, ${c.title ?? null},
              ${c.givenName ?? null}, ${c.familyName ?? null}, ${c.email ?? null},
              ${json(c.fixedTelephoneNumber)}::jsonb, ${json(c.mobileNumber)}::jsonb,
              ${json(c.characteristics)}::jsonb, ${now}, ${now})
      ON CONFLICT (customer_id, orange_ref) DO UPDATE SET updated_at = EXCLUDED.updated_at
      RETURNING id`;
    return row!.id;
  }

  async function addLicences(
    tx: Tx,
    orderId: string,
    fleetId: string,
    item: OrderItemData,
    now: Date,
  ): Promise<{ licenceIds: string[]; endUserIds: (string | undefined)[] }> {
    const licenceIds = Array.from({ length: item.quantity }, () => ids.next("us"));
    const endUserIds: (string | undefined)[] = [];
    const seeds = item.seeds.map((seed) => {
      const endUser = seed.endUser ? { ...seed.endUser, id: ids.next("eu") } : undefined;
      endUserIds.push(endUser?.id as string | undefined);
      return { endUser: endUser ?? null, realizingResource: seed.realizingResource ?? null };
    });
    // One statement for the whole order: the ids travel as one array and the (few) seeds as
    // one JSON array joined by position, instead of one INSERT per licence.
    await tx.$executeRaw`
      INSERT INTO licence (id, fleet_id, order_id, state, offer_code, end_user, realizing_resource,
                           created_at, updated_at)
      SELECT u.id, ${fleetId}, ${orderId}, 'active'::"LicenceState", ${item.offerCode},
             NULLIF(s.value -> 'endUser', 'null'::jsonb), NULLIF(s.value -> 'realizingResource', 'null'::jsonb),
             ${now}, ${now}
      FROM unnest(${licenceIds}::text[]) WITH ORDINALITY AS u(id, n)
      LEFT JOIN jsonb_array_elements(${JSON.stringify(seeds)}::jsonb) WITH ORDINALITY AS s(value, n) USING (n)`;
    return { licenceIds, endUserIds };
  }

  /**
   * Carries out a claimed order in `tx`: the one business path of both modes. A business failure
   * (unknown offer, unknown fleet…) is an outcome, not an exception; anything thrown is a
   * technical error and rolls the transaction back.
   */
  async function carryOut(tx: Tx, orderId: string, cmd: PlaceOrderCommand, now: Date): Promise<OrderOutcome> {
    const outcome: OrderOutcome = {
      orderId,
      useCase: useCaseOf(cmd),
      state: "completed",
      completedAt: now,
      contactIds: [],
      licenceIds: [],
      endUserIds: [],
    };
    try {
      const checked = await check(tx, cmd);
      outcome.customerId = checked.customerId;
      if (cmd.customer) outcome.customerId = await upsertCustomer(tx, cmd.customer, now);
      if (outcome.customerId !== undefined) {
        for (const contact of cmd.contacts) {
          outcome.contactIds.push(await upsertContact(tx, outcome.customerId, contact, now));
        }
      }
      const item = cmd.item;
      if (item) {
        if (item.fleetId === undefined) {
          outcome.fleetId = ids.next("fl");
          await tx.$executeRaw`
            INSERT INTO fleet (id, customer_id, offer_code, characteristics, created_at, updated_at)
            VALUES (${outcome.fleetId}, ${outcome.customerId!}, ${item.offerCode},
                    ${json(item.fleetCharacteristics)}::jsonb, ${now}, ${now})`;
        } else {
          outcome.fleetId = item.fleetId;
          if (item.fleetCharacteristics !== undefined) {
            await tx.$executeRaw`
              UPDATE fleet SET characteristics = ${json(item.fleetCharacteristics)}::jsonb, updated_at = ${now}
              WHERE id = ${item.fleetId}`;
          }
        }
        Object.assign(outcome, await addLicences(tx, orderId, outcome.fleetId, item, now));
      }
    } catch (err) {
      if (!(err instanceof OrderFailed)) throw err;
      outcome.state = "failed";
      outcome.reason = err.message;
    }
    return outcome;
  }

  /** Records the outcome on the order row; `response` null keeps the stored answer (async: the acknowledgement). */
  async function finish(tx: Tx, outcome: OrderOutcome, response: unknown): Promise<void> {
    await tx.$executeRaw`
      UPDATE product_order SET
        state = ${outcome.state}::"RequestState",
        response = COALESCE(${response === null ? null : JSON.stringify(response)}::json, response),
        failure_reason = ${outcome.reason ?? null}, customer_id = ${outcome.customerId ?? null},
        fleet_id = ${outcome.fleetId ?? null}, completed_at = ${outcome.completedAt}
      WHERE id = ${outcome.orderId}`;
  }

  const txOptions = { timeout: deps.transactionTimeoutMs, maxWait: deps.transactionTimeoutMs };

  /** Sync mode: the order is carried out in the request's transaction and answered final. */
  async function placeOrder(cmd: PlaceOrderCommand, render: (outcome: OrderOutcome) => unknown): Promise<OrderReply> {
    return db.$transaction(async (tx) => {
      const now = clock.now();
      const orderId = ids.next("po");
      const stored = await claimOrder(tx, cmd, orderId, now);
      if (stored !== null) return { replayed: true, response: stored };
      const outcome = await carryOut(tx, orderId, cmd, now);
      const response = render(outcome);
      await finish(tx, outcome, response);
      return { replayed: false, response };
    }, txOptions);
  }

  /**
   * Async mode: the order is stored `acknowledged` with its acknowledgement (what a retry of the
   * same reference answers, before and after the order is carried out) and its `process_order`
   * job, in one transaction. Nothing else is written until the job runs.
   */
  async function acknowledgeOrder(
    cmd: PlaceOrderCommand,
    renderAcknowledgement: (orderId: string) => unknown,
  ): Promise<OrderReply> {
    return db.$transaction(async (tx) => {
      const orderId = ids.next("po");
      const stored = await claimOrder(tx, cmd, orderId, clock.now());
      if (stored !== null) return { replayed: true, response: stored };
      const response = renderAcknowledgement(orderId);
      await tx.$executeRaw`UPDATE product_order SET response = ${JSON.stringify(response)}::json WHERE id = ${orderId}`;
      await scheduleRequestJob(tx, "order", orderId);
      return { replayed: false, response };
    }, txOptions);
  }

  /**
   * The `process_order` job: carries out an acknowledged order and, in the same transaction,
   * marks it completed/failed and enqueues the event carrying `render(outcome)` (the ProductOrder
   * a sync answer would have been). The licences become visible with the completed state, at
   * commit. A second run (the job retried after its commit) finds the order no longer
   * acknowledged and does nothing.
   */
  async function processOrder(orderId: string, wire: OrderWire): Promise<"processed" | "skipped"> {
    return db.$transaction(async (tx) => {
      // The row lock makes two runs of the job for one order queue behind each other.
      const [row] = await tx.$queryRaw<{ request: JsonValue; state: string }[]>`
        SELECT request, state FROM product_order WHERE id = ${orderId} FOR UPDATE`;
      if (row?.state !== "acknowledged") return "skipped";
      const cmd = wire.toCommand(row.request);
      const outcome = await carryOut(tx, orderId, cmd, clock.now());
      await finish(tx, outcome, null);
      await enqueueEvent(
        tx,
        {
          api: "productordering",
          type: outcome.state === "completed" ? "completedStateNotification" : "failedStateNotification",
          resource: wire.render(row.request, outcome),
          // Ordering key: UC2 the new fleet, UC3 the given fleet (even one that turned out
          // unknown), UC1 and a failed UC2 the order.
          fleetId: outcome.fleetId ?? cmd.item?.fleetId,
          orderId,
        },
        clock,
        ids,
      );
      return "processed";
    }, txOptions);
  }

  return { placeOrder, acknowledgeOrder, processOrder };
}

export type OrderService = ReturnType<typeof createOrderService>;

function json(value: JsonValue | undefined): string | null {
  return value === undefined ? null : JSON.stringify(value);
}
