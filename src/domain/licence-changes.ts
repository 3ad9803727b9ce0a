import type { Db, Tx } from "../db/sql.js";
import type { Clock } from "../lib/clock.js";
import type { IdGenerator } from "../lib/ids.js";
import { prune, type JsonObject, type JsonValue } from "../lib/json.js";
import * as history from "./history.dal.js";
import { licenceChangeEntries, type HistoryEntry } from "./history.js";
import * as licences from "./licences.dal.js";
import type { LicenceRecord } from "./licences.dal.js";
import type { Outbox } from "./ports.js";

/**
 * Partner-initiated licence changes (UC5): an operator changes the end user, the technical
 * resource, the login or the service characteristics of licences, and Orange is told with an
 * `updateNotification` event.
 *
 * One request is one transaction: the licences are locked (id order, like every other writer),
 * every operation is checked against the locked rows, and either all apply, together with their
 * event(s), or nothing does. The event is ordered by fleet, so a request touching licences of
 * several fleets writes one event per fleet (in fleet id order), each in its fleet's queue.
 *
 * A password given with a login operation is never stored nor put in an event: Orange's events
 * must not carry one, and the partner's identity system (outside this server) sends it.
 */

export type EndUserAction = "add" | "modify" | "swap" | "delete";
export type RealizingResourceAction = "add" | "modify" | "swap" | "delete";
export type RightAction = "add" | "modify" | "reset";
export type CharacteristicAction = "add" | "modify" | "delete";
export type OperationKind = "endUser" | "realizingResource" | "right" | "serviceCharacteristic";

export interface LoginData {
  key: string;
  value: string;
}

export interface CharacteristicData {
  name: string;
  value: string;
}

/** The changes asked for one licence; payloads hold contract fields only. */
export interface LicenceChangeItem {
  licenceId: string;
  endUser?: { action: EndUserAction; endUser?: JsonObject };
  realizingResource?: { action: RealizingResourceAction; realizingResource?: JsonObject };
  right?: { action: RightAction; login?: LoginData; email: string };
  serviceCharacteristic?: { action: CharacteristicAction; characteristic: CharacteristicData };
}

export interface LicenceChangesCommand {
  changes: LicenceChangeItem[];
}

/** What happened to one licence, as its event reports it. */
export interface AppliedLicenceChange {
  licenceId: string;
  fleetId: string;
  /** The end user after the change; for delete, the one removed. */
  endUser?: { action: EndUserAction; endUser: JsonObject };
  /** The resource after the change; for delete, the one removed. */
  realizingResource?: { action: RealizingResourceAction; realizingResource: JsonObject };
  /** Never a password; on reset, no login either. */
  right?: { action: RightAction; login?: LoginData; email: string };
  /** The characteristic after the change; for delete, the one removed. */
  serviceCharacteristic?: { action: CharacteristicAction; characteristic: CharacteristicData };
}

export interface LicenceChangesOutcome {
  /** The licences after the change, in the order of the request. */
  licences: LicenceRecord[];
  /** One event per fleet, in fleet id order. */
  events: { id: string; fleetId: string }[];
}

/**
 * A change that cannot apply; nothing was changed. `index` is the position of the licence in the
 * request, `operation` the operation at fault (none: the licence itself).
 */
export class LicenceChangeRejected extends Error {
  constructor(
    readonly kind: "unknown_licence" | "conflict" | "invalid",
    readonly index: number,
    readonly operation: OperationKind | undefined,
    readonly detail: string,
  ) {
    super(detail);
    this.name = "LicenceChangeRejected";
  }
}

export interface LicenceChangeServiceDeps {
  db: Db;
  clock: Clock;
  ids: IdGenerator;
  outbox: Outbox;
  /** Orange's wire (src/orange): the changes of one fleet as the resource of their event. */
  notification(changes: AppliedLicenceChange[]): JsonValue;
}

const show = (v: unknown) => JSON.stringify(v);

/** Characteristics merged by name: given ones replace same-named ones, others are kept. */
function mergeCharacteristics(current: JsonValue | undefined, given: JsonValue | undefined): JsonValue | undefined {
  if (!Array.isArray(given)) return current;
  const out = Array.isArray(current) ? [...current] : [];
  for (const c of given) {
    const name = (c as JsonObject).name;
    const at = out.findIndex((x) => (x as JsonObject).name === name);
    if (at >= 0) out[at] = c;
    else out.push(c);
  }
  return out;
}

export function createLicenceChangeService(deps: LicenceChangeServiceDeps) {
  const { db, clock, ids, outbox } = deps;

  /** The partner end user id to use: the one given when it still exists on a licence, else a new one. */
  async function endUserId(tx: Tx, given: JsonValue | undefined): Promise<string> {
    if (typeof given === "string" && given.length > 0 && (await licences.endUserExists(tx, given))) return given;
    return ids.next("eu");
  }

  /** Checks one licence's operations against its locked row; the licence after, and what to report. */
  async function plan(tx: Tx, index: number, item: LicenceChangeItem, cur: LicenceRecord) {
    const reject = (operation: OperationKind | undefined, detail: string, kind: "conflict" | "invalid" = "conflict") =>
      new LicenceChangeRejected(kind, index, operation, detail);
    if (cur.state === "terminated") {
      throw reject(undefined, `licence ${cur.id} is terminated; a terminated licence cannot be changed`);
    }
    const next: LicenceRecord = { ...cur };
    const applied: AppliedLicenceChange = { licenceId: cur.id, fleetId: cur.fleetId };

    if (item.endUser) {
      const { action, endUser } = item.endUser;
      const currentId = cur.endUser?.id;
      if (action === "add" && cur.endUser) {
        throw reject("endUser", `"add" needs a licence without end user; licence ${cur.id} has end user ${show(currentId)}: use modify, swap or delete`);
      }
      if (action !== "add" && !cur.endUser) {
        throw reject("endUser", `${show(action)} needs an end user; licence ${cur.id} has none: use add`);
      }
      if (action !== "delete" && !endUser) throw reject("endUser", `${show(action)} needs endUser`, "invalid");
      if (action === "modify") {
        if (endUser!.id !== undefined && endUser!.id !== currentId) {
          throw reject(
            "endUser",
            `"modify" changes the current end user ${show(currentId)}, not ${show(endUser!.id)}: use swap to link another end user`,
          );
        }
        next.endUser = { ...cur.endUser!, ...endUser!, id: currentId! };
        const characteristic = mergeCharacteristics(cur.endUser!.characteristic, endUser!.characteristic);
        if (characteristic !== undefined) next.endUser.characteristic = characteristic;
      } else if (action === "delete") {
        next.endUser = null;
      } else {
        next.endUser = { ...endUser!, id: await endUserId(tx, endUser!.id) };
      }
      applied.endUser = { action, endUser: action === "delete" ? cur.endUser! : next.endUser! };
    }

    if (item.realizingResource) {
      const { action, realizingResource: given } = item.realizingResource;
      if (action === "add" && cur.realizingResource) {
        throw reject("realizingResource", `"add" needs a licence without realizing resource; licence ${cur.id} has one: use modify, swap or delete`);
      }
      if (action !== "add" && !cur.realizingResource) {
        throw reject("realizingResource", `${show(action)} needs a realizing resource; licence ${cur.id} has none: use add`);
      }
      if (action !== "delete" && !given) throw reject("realizingResource", `${show(action)} needs realizingResource`, "invalid");
      if (action === "modify") {
        next.realizingResource = { ...cur.realizingResource!, ...given! };
        const characteristic = mergeCharacteristics(cur.realizingResource!.characteristic, given!.characteristic);
        if (characteristic !== undefined) next.realizingResource.characteristic = characteristic;
      } else {
        next.realizingResource = action === "delete" ? null : given!;
      }
      applied.realizingResource = {
        action,
        realizingResource: action === "delete" ? cur.realizingResource! : next.realizingResource!,
      };
    }

    if (item.right) {
      const { action, login, email } = item.right;
      if (action === "add" && cur.login) {
        throw reject("right", `"add" needs a licence without login (at most one per licence); licence ${cur.id} has login ${show(cur.login.value)}: use modify or reset`);
      }
      if (action !== "add" && !cur.login) {
        throw reject("right", `${show(action)} needs a login; licence ${cur.id} has none: use add`);
      }
      if (action === "reset") {
        if (login && (login.key !== cur.login!.key || login.value !== cur.login!.value)) {
          throw reject("right", `"reset" applies to the licence's login ${show(cur.login!.value)}, not ${show(login.value)}`);
        }
        applied.right = { action, email };
      } else {
        if (!login) throw reject("right", `${show(action)} needs loginKeyValue`, "invalid");
        next.login = { key: login.key, value: login.value };
        applied.right = { action, login: { key: login.key, value: login.value }, email };
      }
    }

    if (item.serviceCharacteristic) {
      const { action, characteristic } = item.serviceCharacteristic;
      const list = (cur.serviceCharacteristics ?? []) as JsonObject[];
      const at = list.findIndex((c) => c.name === characteristic.name);
      if (action === "add" && at >= 0) {
        throw reject("serviceCharacteristic", `"add": licence ${cur.id} already has characteristic ${show(characteristic.name)}: use modify`);
      }
      if (action !== "add" && at < 0) {
        throw reject("serviceCharacteristic", `${show(action)}: licence ${cur.id} has no characteristic ${show(characteristic.name)}`);
      }
      const entry = { name: characteristic.name, value: characteristic.value };
      let out: JsonObject[];
      if (action === "add") out = [...list, entry];
      else if (action === "modify") out = list.map((c, i) => (i === at ? entry : c));
      else out = list.filter((_, i) => i !== at);
      next.serviceCharacteristics = out.length > 0 ? out : null;
      const removed = list[at];
      applied.serviceCharacteristic = {
        action,
        characteristic:
          action === "delete" && removed ? { name: String(removed.name), value: String(removed.value) } : entry,
      };
    }
    return { next, applied };
  }

  /**
   * Applies every change or none, together with the event(s) that tell Orange and the history:
   * one entry per fleet (who asked: `by`, the credential), one per licence (before and after).
   */
  async function applyChanges(cmd: LicenceChangesCommand, by?: string): Promise<LicenceChangesOutcome> {
    const licenceIds = cmd.changes.map((c) => c.licenceId);
    return db.transaction(async (tx) => {
      const found = new Map((await licences.lockLicencesOfCompletedOrders(tx, licenceIds)).map((l) => [l.id, l]));
      const missing = cmd.changes.findIndex((c) => !found.has(c.licenceId));
      if (missing >= 0) {
        throw new LicenceChangeRejected("unknown_licence", missing, undefined, `licence ${show(licenceIds[missing])} does not exist`);
      }
      const planned: { next: LicenceRecord; applied: AppliedLicenceChange }[] = [];
      for (const [i, item] of cmd.changes.entries()) planned.push(await plan(tx, i, item, found.get(item.licenceId)!));

      const now = clock.now();
      const after: LicenceRecord[] = [];
      for (const { next } of planned) after.push(await licences.updateDetails(tx, next, now));

      const byFleet = new Map<string, AppliedLicenceChange[]>();
      for (const { applied } of planned) byFleet.set(applied.fleetId, [...(byFleet.get(applied.fleetId) ?? []), applied]);
      const events: { id: string; fleetId: string }[] = [];
      // Fleet order: two requests spanning the same fleets take the fleets' locks in the same order.
      for (const fleetId of [...byFleet.keys()].sort()) {
        const { id } = await outbox.announce(tx, {
          about: "licence-change",
          fleetId,
          resource: deps.notification(byFleet.get(fleetId)!),
        });
        events.push({ id, fleetId });
      }
      const eventOf = new Map(events.map((e) => [e.fleetId, e.id]));
      const perFleet: HistoryEntry[] = events.map((e) => ({
        at: now,
        kind: "licences.changed",
        customerId: found.get(byFleet.get(e.fleetId)![0]!.licenceId)?.customerId,
        fleetId: e.fleetId,
        eventId: e.id,
        actor: by,
        data: { licences: byFleet.get(e.fleetId)!.map((c) => c.licenceId) },
      }));
      const perLicence = licenceChangeEntries(
        after.map((a) => ({ before: found.get(a.id)!, after: a })),
        now,
        {
          eventIds: eventOf,
          operations: new Map(
            cmd.changes.map((c) => [
              c.licenceId,
              prune({
                endUser: c.endUser?.action,
                realizingResource: c.realizingResource?.action,
                right: c.right?.action,
                serviceCharacteristic: c.serviceCharacteristic?.action,
              }) as JsonObject,
            ]),
          ),
          actor: by,
          source: "licence-change",
        },
      );
      await history.insertEntries(tx, [...perFleet, ...perLicence]);
      return { licences: after, events };
    });
  }

  return { applyChanges };
}

export type LicenceChangeService = ReturnType<typeof createLicenceChangeService>;
