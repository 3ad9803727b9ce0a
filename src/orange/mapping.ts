import { createHash } from "node:crypto";
import type { Catalogue } from "../domain/catalogue.js";
import type { JsonObject, JsonValue } from "../lib/json.js";
import type {
  AppliedLicenceChange,
  CharacteristicAction,
  EndUserAction,
  LicenceChangeItem,
  RealizingResourceAction,
  RightAction,
} from "../domain/licence-changes.js";
import type { LicenceRecord } from "../domain/licences.js";
import type { LicenceChange, UpdateLicencesCommand, UpdateOutcome } from "../domain/updates.js";
import type { ContactData, CustomerData, OrderOutcome, PlaceOrderCommand } from "../domain/orders.js";
import { MissingBodyField } from "../errors.js";
import type {
  Characteristic,
  ExternalReferenceField,
  Individual,
  LoginKeyValue,
  Organization,
  ProductOrderRequest,
  ProductOrderResponse,
  RealizingResource,
  UserService,
  UserServiceChangeNotification,
  UserServiceUpdateRequest,
  UserServiceUpdateResponse,
} from "./schemas.js";

/**
 * Wire <-> domain mapping for Orange's APIs. Lenient in (requests are validated by ./schemas.ts
 * and kept raw), exact out: responses carry only contract fields, and never an empty optional
 * node ({}, [], null), which Orange's parser rejects.
 */

// ---------------------------------------------------------------------------------------------
// Generic helpers

/** Drops undefined, null, {} and [] recursively; Orange's parser rejects empty optional nodes. */
export function compact<T>(value: T): T {
  return compactValue(value) as T;
}

function compactValue(value: unknown): unknown {
  if (Array.isArray(value)) {
    const out = value.map(compactValue).filter((v) => v !== undefined);
    return out.length > 0 ? out : undefined;
  }
  if (value instanceof Date) return value.toISOString();
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    let any = false;
    for (const [k, v] of Object.entries(value)) {
      const c = compactValue(v);
      if (c !== undefined) {
        out[k] = c;
        any = true;
      }
    }
    return any ? out : undefined;
  }
  return value === null ? undefined : value;
}

/** Key-order independent sha256 of a JSON body: a retry with reordered keys is the same request. */
export function requestHash(body: unknown): string {
  return createHash("sha256").update(canonicalJson(body)).digest("hex");
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

/** Orange's identifier in an externalReference field: the entry of type "orange", else the first. */
export function orangeIdOf(ref: ExternalReferenceField | undefined): string | undefined {
  if (ref === undefined) return undefined;
  const refs = Array.isArray(ref) ? ref : [ref];
  return (refs.find((r) => r.type === "orange") ?? refs[0])?.id;
}

function pick<T extends object, K extends string>(obj: T | undefined, keys: readonly K[]): JsonObject | undefined {
  if (obj === undefined) return undefined;
  const out: JsonObject = {};
  for (const k of keys) {
    const v = (obj as Record<string, unknown>)[k];
    if (v !== undefined) out[k] = v as JsonValue;
  }
  return out;
}

const REF_KEYS = ["type", "id"] as const;
const PHONE_KEYS = ["cc", "sn"] as const;
const ADDRESS_KEYS = ["streetAddress", "postcode", "locality", "country"] as const;

function externalReferenceOut(ref: ExternalReferenceField | undefined): JsonValue | undefined {
  if (ref === undefined) return undefined;
  return Array.isArray(ref) ? ref.map((r) => pick(r, REF_KEYS)!) : pick(ref, REF_KEYS);
}

function characteristicsOut(list: Characteristic[] | JsonValue[] | undefined | null): JsonValue[] | undefined {
  if (!list) return undefined;
  return list.map((c) => pick(c as Characteristic, ["name", "value"] as const)!);
}

/** An Individual as sent out: only contract fields, with the partner id first. */
export function individualOut(p: Individual | JsonObject | undefined | null, id?: string): JsonObject | undefined {
  if (!p) return undefined;
  const i = p as Individual;
  return {
    id: id ?? i.id,
    externalReference: externalReferenceOut(i.externalReference),
    role: i.role,
    title: i.title,
    givenName: i.givenName,
    familyName: i.familyName,
    email: i.email,
    fixedTelephoneNumber: pick(i.fixedTelephoneNumber, PHONE_KEYS),
    mobileNumber: pick(i.mobileNumber, PHONE_KEYS),
    characteristic: characteristicsOut(i.characteristic),
  } as JsonObject;
}

function organizationOut(o: Organization, id: string | undefined): JsonObject {
  return {
    id,
    externalReference: externalReferenceOut(o.externalReference),
    tradingName: o.tradingName,
    name: o.name,
    organizationCode: o.organizationCode,
    postalAddress: pick(o.postalAddress, ADDRESS_KEYS),
    characteristic: characteristicsOut(o.characteristic),
  } as JsonObject;
}

function realizingResourceOut(r: JsonObject | { type: string; characteristic?: Characteristic[] } | undefined | null) {
  if (!r) return undefined;
  const rr = r as { type: string; characteristic?: Characteristic[] };
  return { type: rr.type, characteristic: characteristicsOut(rr.characteristic) };
}

/** Individual as stored in the domain: only contract fields, so raw extras never leak out. */
function individualData(p: Individual): JsonObject {
  return compact(individualOut(p) ?? {}) ?? {};
}

// ---------------------------------------------------------------------------------------------
// ProductOrder

/** The customer of an order: `customer`, or [decision] a relatedParty entry with role customer. */
export function customerOf(req: ProductOrderRequest): Organization | undefined {
  if (req.customer) return req.customer;
  const party = req.relatedParty?.find((p) => p.role === "customer");
  if (party?.externalReference === undefined) return undefined;
  return party as unknown as Organization;
}

export function toPlaceOrderCommand(req: ProductOrderRequest, idempotencyKeyHeader: string | undefined): PlaceOrderCommand {
  const item = req.orderItem?.[0];
  const org = customerOf(req);
  if (!item && !org) {
    throw new MissingBodyField("customer is required when the order has no orderItem (UC1: create the customer)");
  }
  if (item && item.productRef.id === undefined && !org) {
    throw new MissingBodyField(
      "customer is required when orderItem[0].productRef.id is absent (UC2: first order of a new fleet)",
    );
  }
  const customer: CustomerData | undefined = org
    ? {
        orangeRef: orangeIdOf(org.externalReference)!,
        tradingName: org.tradingName,
        name: org.name,
        organizationCode: org.organizationCode,
        postalAddress: pick(org.postalAddress, ADDRESS_KEYS),
        characteristics: characteristicsOut(org.characteristic),
      }
    : undefined;
  const contacts: ContactData[] = (req.relatedContact ?? []).map((c) => ({
    orangeRef: orangeIdOf(c.externalReference),
    role: c.role,
    title: c.title,
    givenName: c.givenName,
    familyName: c.familyName,
    email: c.email,
    fixedTelephoneNumber: pick(c.fixedTelephoneNumber, PHONE_KEYS),
    mobileNumber: pick(c.mobileNumber, PHONE_KEYS),
    characteristics: characteristicsOut(c.characteristic),
  }));
  const orangeRef = orangeIdOf(req.externalReference);
  return {
    idempotencyKey: idempotencyKeyHeader ?? orangeRef,
    orangeRef,
    requestHash: requestHash(req),
    request: req as unknown as JsonValue,
    customer,
    contacts,
    item: item && {
      action: item.action,
      offerCode: item.productOffering.externalReference.id,
      fleetId: item.productRef.id,
      quantity: item.productRef.userServiceQuantity,
      fleetCharacteristics: characteristicsOut(item.productRef.characteristic),
      seeds: (item.endUserConfiguration ?? []).map((c) => ({
        endUser: c.endUser ? individualData(c.endUser) : undefined,
        realizingResource: c.realizingResource
          ? (compact(realizingResourceOut(c.realizingResource as JsonObject)) as JsonObject)
          : undefined,
      })),
    },
  };
}

export interface RenderContext {
  catalogue: Catalogue;
  partnerName: string;
}

function offeringOut(code: string, sentName: string | undefined, catalogue: Catalogue): JsonObject {
  return {
    name: catalogue.find(code)?.name ?? sentName,
    externalReference: { type: "orange", id: code },
  } as JsonObject;
}

/**
 * The ProductOrder answered to Orange (sync mode, stored for retries) or carried by the
 * completed/failedStateNotification event (async mode): the request echoed with partner ids and states.
 */
export function renderOrder(req: ProductOrderRequest, o: OrderOutcome, ctx: RenderContext): ProductOrderResponse {
  return renderOrderBody(req, o, ctx);
}

/**
 * The async answer (contract section 5): `acknowledged` with the partner order id, the request
 * echoed without any other partner id (nothing is created yet), no completionDate.
 */
export function renderOrderAcknowledgement(req: ProductOrderRequest, orderId: string, ctx: RenderContext): ProductOrderResponse {
  return renderOrderBody(req, { requestId: orderId, state: "acknowledged" }, ctx);
}

type OrderView = OrderOutcome | { requestId: string; state: "acknowledged" };

function renderOrderBody(req: ProductOrderRequest, o: OrderView, ctx: RenderContext): ProductOrderResponse {
  const item = req.orderItem?.[0];
  const org = customerOf(req);
  // Partner ids and catalogue names only once something was created.
  const failed = o.state !== "completed";
  const done = o.state === "acknowledged" ? undefined : o;
  const body = {
    id: o.requestId,
    externalReference: externalReferenceOut(req.externalReference),
    category: req.category,
    state: o.state,
    orderDate: req.orderDate,
    requestedStartDate: req.requestedStartDate,
    completionDate: done?.completedAt.toISOString(),
    note:
      done?.state === "failed"
        ? { text: done.reason, date: done.completedAt.toISOString(), author: ctx.partnerName }
        : req.note && pick(req.note, ["text", "date", "author"] as const),
    customer: org ? organizationOut(org, failed ? undefined : done?.customerId) : undefined,
    relatedContact: (req.relatedContact ?? []).map((c, i) => individualOut(c, failed ? undefined : done?.contactIds[i])),
    orderItem: item && [
      {
        id: item.id ?? "1",
        action: item.action,
        state: o.state,
        productOffering: failed
          ? { name: item.productOffering.name, externalReference: pick(item.productOffering.externalReference, REF_KEYS) }
          : offeringOut(item.productOffering.externalReference.id, item.productOffering.name, ctx.catalogue),
        productRef: {
          id: failed ? item.productRef.id : done?.fleetId,
          userServiceQuantity: item.productRef.userServiceQuantity,
          characteristic: characteristicsOut(item.productRef.characteristic),
        },
        endUserConfiguration: item.endUserConfiguration?.map((c, i) => ({
          endUser: c.endUser ? individualOut(c.endUser, failed ? undefined : done?.endUserIds[i]) : undefined,
          // The technical resource the partner's application set up for that licence, if it said (webhook mode).
          realizingResource: realizingResourceOut(
            (done?.appLicences?.[i]?.realizingResource ?? c.realizingResource) as JsonObject | undefined,
          ),
        })),
      },
    ],
  };
  return compact(body) as ProductOrderResponse;
}

// ---------------------------------------------------------------------------------------------
// UserService

const offeringCache = new WeakMap<Catalogue, Map<string, JsonObject>>();

/** The ProductOfferingRef of a catalogue code, built once per code (fleet listings repeat it 10,000 times). */
function licenceOffering(code: string, catalogue: Catalogue): JsonObject {
  let byCode = offeringCache.get(catalogue);
  if (!byCode) offeringCache.set(catalogue, (byCode = new Map()));
  let offering = byCode.get(code);
  if (!offering) byCode.set(code, (offering = compact(offeringOut(code, undefined, catalogue))));
  return offering;
}

/**
 * One licence on the wire. The hot path of a fleet listing, so it is built field by field rather
 * than through compact(): absent optional nodes are `undefined` (JSON.stringify leaves them out),
 * and only the nodes that could hold something empty go through compact().
 */
export function renderUserService(l: LicenceRecord, catalogue: Catalogue): UserService {
  return {
    id: l.id,
    relatedProductRefId: l.fleetId,
    state: l.state,
    externalState: l.externalState ?? undefined,
    productOffering: licenceOffering(l.offerCode, catalogue) as UserService["productOffering"],
    endUser: l.endUser ? (compact(individualOut(l.endUser)) as UserService["endUser"]) : undefined,
    realizingResource: l.realizingResource
      ? (compact(realizingResourceOut(l.realizingResource)) as UserService["realizingResource"])
      : undefined,
    login: l.login ? (compact(pick(l.login, ["key", "value"] as const)) as UserService["login"]) : undefined,
    serviceCharacteristic: l.serviceCharacteristics
      ? (compact(characteristicsOut(l.serviceCharacteristics)) as UserService["serviceCharacteristic"])
      : undefined,
    creationDate: l.createdAt,
    lastUpdate: l.updatedAt,
  };
}

export function toUpdateCommand(req: UserServiceUpdateRequest, idempotencyKeyHeader: string | undefined): UpdateLicencesCommand {
  const orangeRef = orangeIdOf(req.externalReference);
  return {
    idempotencyKey: idempotencyKeyHeader ?? orangeRef,
    orangeRef,
    requestHash: requestHash(req),
    request: req as unknown as JsonValue,
    changes: req.userService.map(
      (u): LicenceChange => ({
        licenceId: u.id,
        externalState: u.externalState,
        swapToOffer: u.productOfferingOperation?.productOffering.externalReference.id,
      }),
    ),
  };
}

/**
 * The async answer to an update: the reference echoed and `acknowledged`, nothing else. The
 * licences as they are before the change would read as the result; the final ones travel in
 * the updateNotification event.
 */
export function renderUpdateAcknowledgement(req: UserServiceUpdateRequest): UserServiceUpdateResponse {
  return compact({
    externalReference: externalReferenceOut(req.externalReference),
    state: "acknowledged",
  }) as UserServiceUpdateResponse;
}

export function renderUpdate(req: UserServiceUpdateRequest, o: UpdateOutcome, ctx: RenderContext): UserServiceUpdateResponse {
  return compact({
    externalReference: externalReferenceOut(req.externalReference),
    state: o.state,
    note:
      o.state === "failed"
        ? { text: o.reason, date: o.completedAt.toISOString(), author: ctx.partnerName }
        : undefined,
    userService: o.licences.map((l) => renderUserService(l, ctx.catalogue)),
  }) as UserServiceUpdateResponse;
}

// ---------------------------------------------------------------------------------------------
// UC5: partner-initiated changes

/** One licence's UC5 operations as an operator sends them (the event's shapes, plus a password). */
export interface LicenceOperationsIn {
  id: string;
  endUserOperation?: { action: EndUserAction; endUser?: Individual };
  realizingResourceOperation?: { action: RealizingResourceAction; realizingResource?: RealizingResource };
  rightOperation?: { action: RightAction; loginKeyValue?: LoginKeyValue; email: string; password?: string };
  serviceCharacteristicOperation?: { action: CharacteristicAction; characteristic: Characteristic };
}

/** The domain command of one licence: contract fields only; the password goes nowhere. */
export function toLicenceChangeItem(op: LicenceOperationsIn): LicenceChangeItem {
  const eu = op.endUserOperation;
  const rr = op.realizingResourceOperation;
  const right = op.rightOperation;
  const sc = op.serviceCharacteristicOperation;
  return {
    licenceId: op.id,
    endUser: eu && { action: eu.action, endUser: eu.endUser ? individualData(eu.endUser) : undefined },
    realizingResource: rr && {
      action: rr.action,
      realizingResource: rr.realizingResource
        ? (compact(realizingResourceOut(rr.realizingResource as JsonObject)) as JsonObject)
        : undefined,
    },
    right: right && {
      action: right.action,
      login: right.loginKeyValue && { key: right.loginKeyValue.key, value: right.loginKeyValue.value },
      email: right.email,
    },
    serviceCharacteristic: sc && {
      action: sc.action,
      characteristic: { name: sc.characteristic.name, value: sc.characteristic.value },
    },
  };
}

/** `resource` of the UC5 updateNotification of one fleet. Never a password (none reaches here). */
export function renderChangeNotification(changes: AppliedLicenceChange[]): UserServiceChangeNotification {
  return compact({
    userService: changes.map((c) => ({
      id: c.licenceId,
      relatedProductRefId: c.fleetId,
      endUserOperation: c.endUser && { action: c.endUser.action, endUser: individualOut(c.endUser.endUser) },
      realizingResourceOperation: c.realizingResource && {
        action: c.realizingResource.action,
        realizingResource: realizingResourceOut(c.realizingResource.realizingResource),
      },
      rightOperation: c.right && {
        action: c.right.action,
        loginKeyValue: c.right.action === "reset" ? undefined : c.right.login,
        email: c.right.email,
      },
      serviceCharacteristicOperation: c.serviceCharacteristic && {
        action: c.serviceCharacteristic.action,
        characteristic: { name: c.serviceCharacteristic.characteristic.name, value: c.serviceCharacteristic.characteristic.value },
      },
    })),
  }) as UserServiceChangeNotification;
}
