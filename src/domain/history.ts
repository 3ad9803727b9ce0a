/**
 * The domain's record of what happened, in its own words: the entries the request lifecycle,
 * the update rules and the partner-side changes write through history.dal.ts, in the
 * transaction of the change they record (a rollback leaves no entry of what did not happen).
 *
 * Cheap on the hot paths: one statement per transaction step whatever the number of entries
 * (`insertEntries` unnests arrays); a new order writes one entry for all its licences, a licence
 * gets entries of its own only for later changes; the events to Orange and their delivery
 * attempts are read from the outbox, not copied.
 */
import { prune, type JsonObject, type JsonValue } from "../lib/json.js";
import type { HistoryEntry } from "./history.dal.js";
import type { LicenceRecord } from "./licences.dal.js";

export type { HistoryEntry };

/** How Orange's call identified itself: the request id and Orange's correlation headers, as sent. */
export interface RequestTrace {
  /** The request id of the call (the `x-request-id` sent when valid, else the one the server gave). */
  requestId?: string;
  /** Orange's correlation headers present on the call (lower-case names), as sent. */
  headers?: Record<string, string>;
}

/** What a licence holds, as its history shows it over time. */
export function snapshot(l: LicenceRecord): JsonObject {
  return prune({
    state: l.state,
    externalState: l.externalState,
    offerCode: l.offerCode,
    endUser: l.endUser,
    login: l.login,
    realizingResource: l.realizingResource,
    serviceCharacteristics: l.serviceCharacteristics,
  }) as JsonObject;
}

/** Orange's request arrived (`replayed`: a retry of a known reference, answered from the stored answer). */
export function receivedEntry(
  r: { requestId: string; orangeRef?: string; idempotencyKey?: string; trace?: RequestTrace; mode?: string },
  at: Date,
  replayed = false,
): HistoryEntry {
  const data: Record<string, JsonValue | undefined> = {
    orangeRef: r.orangeRef,
    // Only when it is not Orange's reference: the Idempotency-Key header.
    idempotencyKey: r.idempotencyKey !== r.orangeRef ? r.idempotencyKey : undefined,
    mode: r.mode,
    httpRequestId: r.trace?.requestId,
    headers: r.trace?.headers && Object.keys(r.trace.headers).length > 0 ? r.trace.headers : undefined,
  };
  return { at, kind: replayed ? "request.replayed" : "request.received", requestId: r.requestId, actor: "orange", data: prune(data) as JsonObject };
}

/** What Orange was answered: a state (`acknowledged`, `completed`, `failed`), or an HTTP status to retry. */
export function answeredEntry(requestId: string, at: Date, answer: { state: string; reason?: string; status?: number }): HistoryEntry {
  return { at, kind: "request.answered", requestId, data: prune({ ...answer }) as JsonObject };
}

/** Licences changed after their order: one entry each, before and after. */
export function licenceChangeEntries(
  changes: { before: LicenceRecord; after: LicenceRecord }[],
  at: Date,
  about: {
    requestId?: string;
    /** The event of each fleet (partner-side changes). */
    eventIds?: Map<string, string>;
    /** What was asked of each licence (partner-side changes: the operations and their actions). */
    operations?: Map<string, JsonObject>;
    actor?: string;
    source: "update" | "licence-change";
  },
): HistoryEntry[] {
  return changes.map(({ before, after }) => ({
    at,
    kind: "licence.changed",
    requestId: about.requestId,
    licenceId: after.id,
    eventId: about.eventIds?.get(after.fleetId),
    actor: about.actor,
    data: prune({
      source: about.source,
      fleetId: after.fleetId,
      operations: about.operations?.get(after.id),
      before: snapshot(before),
      after: snapshot(after),
    }) as JsonObject,
  }));
}
