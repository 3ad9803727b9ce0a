/**
 * The licence state machine (contract section 4).
 *
 *   active ──suspended/inactive──> inactive ──active──> active
 *   active|inactive ──deleted──> terminated   (final: nothing leaves it)
 *
 * Asking for the state a licence is already in is accepted and changes only `externalState`
 * (Orange retries; a repeated suspend must not fail). Any request on a terminated licence fails.
 */
export type LicenceState = "active" | "inactive" | "terminated";
export type ExternalState = "active" | "inactive" | "suspended" | "deleted";

export type Transition = { ok: true; state: LicenceState } | { ok: false; reason: string };

const TARGET: Record<ExternalState, LicenceState> = {
  active: "active",
  inactive: "inactive",
  suspended: "inactive",
  deleted: "terminated",
};

export function transition(current: LicenceState, requested: ExternalState): Transition {
  if (current === "terminated") {
    return {
      ok: false,
      reason:
        requested === "active"
          ? "is terminated and cannot be reactivated"
          : `is terminated; it cannot be set to ${requested}`,
    };
  }
  return { ok: true, state: TARGET[requested] };
}

/** Whether an offer swap may be applied to a licence in this state. */
export function canSwapOffer(current: LicenceState): Transition {
  return current === "terminated"
    ? { ok: false, reason: "is terminated; its offer cannot be changed" }
    : { ok: true, state: current };
}
