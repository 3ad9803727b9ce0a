/**
 * Licence updates Orange asks for (userService/update): suspend, reactivate, delete, move to
 * another offer. Their rules, for the request lifecycle (lifecycle.ts): all or nothing, the first
 * change that is not allowed fails the whole list and nothing is written.
 */
import type { Tx } from "../db/sql.js";
import type { Clock } from "../lib/clock.js";
import { prune, type JsonObject } from "../lib/json.js";
import type { Catalogue } from "./catalogue.js";
import { canSwapOffer, transition, type ExternalState } from "./licence-state.js";
import * as history from "./history.dal.js";
import { licenceChangeEntries } from "./history.js";
import * as licences from "./licences.dal.js";
import type { LicenceRecord } from "./licences.dal.js";
import type { FinalOutcome, Planned, RequestCommand, RequestHandler } from "./lifecycle.js";
import type { AppLicenceData } from "./ports.js";

export interface LicenceChange {
  licenceId: string;
  externalState?: ExternalState;
  /** Orange offer code to move the licence to. */
  swapToOffer?: string;
}

export interface UpdateLicencesCommand extends RequestCommand {
  changes: LicenceChange[];
}

export interface UpdateOutcome extends FinalOutcome {
  /** The licences after the change (or unchanged when it failed), in the order of the request. */
  licences: LicenceRecord[];
}

/** The licences as they are (locked) and as they will be. */
export interface UpdatePlan {
  before: LicenceRecord[];
  next: LicenceRecord[];
}

export function orderLike(records: LicenceRecord[], ids: string[]): LicenceRecord[] {
  const byId = new Map(records.map((r) => [r.id, r]));
  return ids.flatMap((id) => {
    const r = byId.get(id);
    return r ? [r] : [];
  });
}

export function createUpdateHandler(deps: { catalogue: Catalogue; clock: Clock }): RequestHandler<
  UpdateLicencesCommand,
  UpdatePlan,
  UpdateOutcome
> {
  const { catalogue, clock } = deps;

  /** Checks every change against the locked licences; the first violation fails the whole list. */
  function decide(cmd: UpdateLicencesCommand, found: Map<string, LicenceRecord>): { reason?: string; next: LicenceRecord[] } {
    const missing = cmd.changes.filter((c) => !found.has(c.licenceId)).map((c) => c.licenceId);
    if (missing.length > 0) {
      return { reason: `unknown licence id(s): ${missing.join(", ")}`, next: [] };
    }
    const owners = new Set([...found.values()].map((l) => l.customerId));
    if (owners.size > 1) {
      return { reason: "the licences belong to different customers; one update concerns one customer", next: [] };
    }
    const next: LicenceRecord[] = [];
    for (const change of cmd.changes) {
      const current = found.get(change.licenceId)!;
      let state = current.state;
      if (change.externalState !== undefined) {
        const t = transition(current.state, change.externalState);
        if (!t.ok) return { reason: `licence ${current.id} ${t.reason}`, next: [] };
        state = t.state;
      }
      let offerCode = current.offerCode;
      if (change.swapToOffer !== undefined) {
        const t = canSwapOffer(current.state);
        if (!t.ok) return { reason: `licence ${current.id} ${t.reason}`, next: [] };
        if (!catalogue.find(change.swapToOffer)) {
          return {
            reason: `offer ${JSON.stringify(change.swapToOffer)} is not in the partner's catalogue (known: ${catalogue.codes().join(", ")})`,
            next: [],
          };
        }
        offerCode = change.swapToOffer;
      }
      next.push({ ...current, state, externalState: change.externalState ?? current.externalState, offerCode });
    }
    return { next };
  }

  const requested = (cmd: UpdateLicencesCommand) => cmd.changes.map((c) => c.licenceId);

  async function plan(tx: Tx, requestId: string, cmd: UpdateLicencesCommand): Promise<Planned<UpdatePlan, UpdateOutcome>> {
    const before = await licences.lockLicences(tx, requested(cmd));
    const { reason, next } = decide(cmd, new Map(before.map((l) => [l.id, l])));
    if (reason === undefined) return { plan: { before, next } };
    return {
      refusal: {
        requestId,
        state: "failed",
        reason,
        // Read once the rows are locked, like the change time of an applied update.
        completedAt: clock.now(),
        licences: orderLike(before, requested(cmd)),
      },
    };
  }

  async function apply(
    tx: Tx,
    requestId: string,
    cmd: UpdateLicencesCommand,
    p: UpdatePlan,
    app?: AppLicenceData[],
  ): Promise<UpdateOutcome> {
    // The change time is read once the rows are locked (plan): an update that waited behind
    // another one must not stamp its change (lastUpdate) earlier than the change it waited for.
    const now = clock.now();
    const ids = new Set(requested(cmd));
    await licences.storeAppData(tx, (app ?? []).filter((l) => ids.has(l.id)), now);
    const after = await licences.updateStatesAndOffers(tx, p.next, now);
    const before = new Map(p.before.map((l) => [l.id, l]));
    await history.insertEntries(
      tx,
      licenceChangeEntries(
        orderLike(after, requested(cmd)).map((a) => ({ before: before.get(a.id)!, after: a })),
        now,
        { requestId, source: "update" },
      ),
    );
    return { requestId, state: "completed", completedAt: now, licences: orderLike(after, requested(cmd)) };
  }

  /** One command per update: its type says what every change does, `licences.update` for a mix. */
  function command(requestId: string, cmd: UpdateLicencesCommand, p: UpdatePlan): { type: string; data: JsonObject } {
    const before = new Map(p.before.map((l) => [l.id, l]));
    const kinds = new Set(cmd.changes.map(changeKind));
    const type = kinds.size === 1 && !kinds.has("mixed") ? `licences.${[...kinds][0]}` : "licences.update";
    const state = (l: LicenceRecord) => ({ state: l.state, externalState: l.externalState, offer: l.offerCode });
    return {
      type,
      data: prune({
        request: { kind: "update", id: requestId, orangeReference: cmd.orangeRef ?? null },
        customer: { id: p.next[0]?.customerId ?? null },
        licences: orderLike(p.next, requested(cmd)).map((next) => ({
          id: next.id,
          fleetId: next.fleetId,
          before: state(before.get(next.id)!),
          after: state(next),
        })),
      }),
    };
  }

  /** The fleets of the licences that exist (the others fail the update when its turn comes). */
  async function lanes(_tx: Tx, requestId: string, cmd: UpdateLicencesCommand): Promise<string[]> {
    const found = await licences.selectLicences(_tx, requested(cmd));
    const fleetLanes = [...new Set(found.map((l) => `fleet:${l.fleetId}`))];
    return fleetLanes.length > 0 ? fleetLanes : [`update:${requestId}`];
  }

  return {
    kind: "update",
    describe: (cmd) => ({ update: { licenceIds: requested(cmd) } }),
    plan,
    apply,
    failure: (requestId, _cmd, reason, now) => ({ requestId, state: "failed", reason, completedAt: now, licences: [] }),
    // The licences as they are: nothing was changed.
    refused: (requestId, cmd, p, reason, now) => ({ requestId, state: "failed", reason, completedAt: now, licences: orderLike(p.before, requested(cmd)) }),
    lanes,
    command,
    finished: () => ({}),
    // An update concerns one customer; its entry (one per fleet, like its events) counts the licences.
    summary: (o) => ({ customerId: o.licences[0]?.customerId, data: { licences: o.licences.length } }),
    // One announcement per fleet of the licences (events are ordered per fleet), each with its
    // fleet's licences; none of the licences found: one about the update itself.
    split: (o) => {
      const byFleet = new Map<string, LicenceRecord[]>();
      for (const l of o.licences) byFleet.set(l.fleetId, [...(byFleet.get(l.fleetId) ?? []), l]);
      if (byFleet.size === 0) return [{ outcome: o }];
      return [...byFleet].map(([fleetId, list]) => ({ fleetId, outcome: { ...o, licences: list } }));
    },
  };
}

function changeKind(c: LicenceChange): string {
  if (c.swapToOffer !== undefined) return c.externalState === undefined ? "change_offer" : "mixed";
  switch (c.externalState) {
    case "suspended":
    case "inactive":
      return "suspend";
    case "active":
      return "reactivate";
    case "deleted":
      return "terminate";
    default:
      return "mixed";
  }
}
