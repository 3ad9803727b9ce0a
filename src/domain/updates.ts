/**
 * Licence updates Orange asks for (userService/update): suspend, reactivate, delete, move to
 * another offer. Their rules, for the request lifecycle (lifecycle.ts): all or nothing, the first
 * change that is not allowed fails the whole list and nothing is written.
 */
import type { Tx } from "../db/sql.js";
import type { Clock } from "../lib/clock.js";
import type { Catalogue } from "./catalogue.js";
import { canSwapOffer, transition, type ExternalState } from "./licence-state.js";
import * as licences from "./licences.dal.js";
import type { LicenceRecord } from "./licences.dal.js";
import type { FinalOutcome, Planned, RequestCommand, RequestHandler } from "./lifecycle.js";

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

  async function apply(tx: Tx, requestId: string, cmd: UpdateLicencesCommand, p: UpdatePlan): Promise<UpdateOutcome> {
    // The change time is read once the rows are locked (plan): an update that waited behind
    // another one must not stamp its change (lastUpdate) earlier than the change it waited for.
    const now = clock.now();
    const after = await licences.updateStatesAndOffers(tx, p.next, now);
    return { requestId, state: "completed", completedAt: now, licences: orderLike(after, requested(cmd)) };
  }

  return {
    kind: "update",
    describe: (cmd) => ({ update: { licenceIds: requested(cmd) } }),
    plan,
    apply,
    failure: (requestId, _cmd, reason, now) => ({ requestId, state: "failed", reason, completedAt: now, licences: [] }),
    finished: () => ({}),
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
