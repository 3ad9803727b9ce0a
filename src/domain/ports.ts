/**
 * What the domain needs from the outside, declared here and implemented elsewhere (the
 * composition root hands the implementations in): the domain imports none of them.
 *
 * - Outbox: tell Orange about a finished request or a partner-side change (src/events/outbox.ts).
 * - JobQueue: run work later, in the worker (src/events/queue.ts, over graphile-worker).
 * - InlineRunner: run a job in this process as soon as its transaction commits, without queueing
 *   it (src/events/worker.ts); optional.
 * - RequestCodec: Orange's wire for one operation (src/orange/codecs.ts): the stored request read
 *   back as a command, an outcome written as the answer, the acknowledgement.
 * - Telemetry: what the operators' metrics count of the domain's work (src/metrics.ts); optional.
 */
import type { Queryable, Tx } from "../db/sql.js";
import type { JsonObject, JsonValue } from "../lib/json.js";

/** What Orange is told, in the domain's words; src/events picks the Orange API and event type. */
export type Announcement =
  | { about: "order"; state: "completed" | "failed"; orderId: string; fleetId?: string; resource: JsonValue }
  | { about: "update"; state: "completed" | "failed"; updateId: string; fleetId?: string; resource: JsonValue }
  | { about: "licence-change"; fleetId: string; resource: JsonValue };

export interface Outbox {
  /**
   * Writes the announcement in the caller's transaction (commit: it will be delivered; rollback:
   * it never existed). One fleet's announcements reach Orange in the order they were written.
   */
  announce(tx: Tx, announcement: Announcement): Promise<{ id: string }>;
}

export interface Job {
  task: string;
  payload: JsonObject;
  /** At most one waiting job per key: adding a job under a key replaces the waiting one. */
  key?: string;
  /** Not before (default: now). */
  runAt?: Date;
}

export interface JobQueue {
  /** Adds the job in the caller's transaction: it exists once the transaction commits. */
  add(q: Queryable, job: Job): Promise<void>;
  /**
   * The keys, among these, that have no job left that can still run (gone, or out of attempts;
   * with `heldLongerThanMs`, also one a worker has held longer than that: its worker is presumed
   * dead, though the queue keeps its lock for its own, longer, lease).
   */
  withoutLiveJob(q: Queryable, keys: string[], heldLongerThanMs?: number): Promise<string[]>;
}

/**
 * Carries out a job in this process right after the transaction that made it commits, instead of
 * queueing it: no job is stored, claimed and completed, and no worker slot is waited for. What it
 * runs must be found again without its job: if the process stops before the run ends, the sweep
 * gives the work a job (acknowledged requests without one, once past a grace period).
 */
export interface InlineRunner {
  /** A slot for one run, or undefined (none free, the runner stopping): queue the job then. */
  reserve(): InlineSlot | undefined;
}

export interface InlineSlot {
  /**
   * Runs the job in the background, now or once a slot is free (a run that fails is queued as a
   * job by the runner). Resolves once it has started, or once it has waited for a slot longer
   * than the runner's bound: the acknowledgement is answered then (backpressure: callers that
   * send faster than the runs go are slowed down instead of piling up runs, and events, behind
   * each other in memory).
   */
  start(job: Job): Promise<void>;
  /**
   * Runs `work` in the slot, now or once a slot is free within the runner's bound, for a caller
   * that waits for its result; the events its transactions committed are then delivered in the
   * slot, in the background. Undefined when no slot came free within the bound (or the runner is
   * stopping): `work` never ran, the slot is given back. Work that throws frees the slot.
   */
  runNow<T>(work: () => Promise<T>): Promise<{ result: T } | undefined>;
  /** Gives the slot back unused (the transaction rolled back). */
  release(): void;
}

/** How a job's run is told about its history and the worker's shutdown. */
export interface JobContext {
  /** This run included. */
  attempt: number;
  signal: AbortSignal;
  /**
   * Inline runs only: runs this job again in this process after `delayMs`, without a job row;
   * false when it cannot (the runner stopping or full, or the job already run again this way a
   * few times): then the task queues its job.
   */
  runAgain?(delayMs: number): boolean;
}

export type TaskHandler = (payload: unknown, context: JobContext) => Promise<void>;

/**
 * What the operators' metrics count of the domain's work (src/metrics.ts implements it). Told
 * once the transaction that recorded the fact has committed: a rolled-back attempt counts nothing.
 */
export interface Telemetry {
  /** A request reached its final state; `useCase`: UC1, UC2 or UC3 for an order, `update` for an update. */
  requestFinished(finished: { kind: "order" | "update"; useCase: string; state: "completed" | "failed" }): void;
  /** A request was answered `acknowledged`; `run`: carried out inline (at once, here) or queued as a job. */
  requestAcknowledged?(acknowledged: { kind: "order" | "update"; run: "inline" | "queued" }): void;
}

/** Orange's wire for one operation, so that the domain never reads nor writes it itself. */
export interface RequestCodec<C, O> {
  /** A stored request (validated when it was received) read back as the command, with the wire schema. */
  decode(request: JsonValue): C;
  /** The final answer: the sync reply, stored for retries, and the resource of the event in async mode. */
  answer(request: JsonValue, outcome: O): JsonValue;
  /** The asynchronous answer: the request is stored and will be carried out. */
  acknowledgement(request: JsonValue, requestId: string): JsonValue;
}

/**
 * The partner's own application, which carries out every order and change (PROVISIONING_MODE=
 * webhook): src/provisioning implements the call (a signed webhook) and the wire of its body.
 */

/** What the application may tell about a licence it provisioned or changed; stored on the licence. */
export interface AppLicenceData {
  id: string;
  realizingResource?: JsonObject;
  login?: { key: string; value: string };
  serviceCharacteristic?: { name: string; value: string }[];
}

/** One command to the application, as it is sent on every attempt. */
export interface ProvisioningCall {
  /** The command's id: the `webhook-id`, the same on every retry and after a restart. */
  id: string;
  type: string;
  /** The body as stored when the command was prepared: the same bytes on every attempt. */
  body: string;
}

/** How the application answered one attempt. */
export type ProvisioningAnswer =
  /** 2xx (but 202): done; what it tells about the licences, if anything. */
  | { outcome: "done"; status: number; licences: AppLicenceData[] }
  /** 202: accepted, the result comes later through the result route. */
  | { outcome: "accepted"; status: number }
  /** 409 or 422: a business refusal, with the application's reason. */
  | { outcome: "refused"; status: number; reason: string }
  /** 5xx, 408, 429, timeout, connection error: worth another attempt later. */
  | { outcome: "retry"; status?: number; error: string; retryAfterMs?: number }
  /** Any other answer (400, 401, 403, 404…, or a 2xx body that breaks the contract): not worth retrying as is. */
  | { outcome: "rejected"; status?: number; error: string };

export interface Provisioner {
  /** One attempt, within the configured timeout; never throws for what the application does. */
  send(call: ProvisioningCall, signal?: AbortSignal): Promise<ProvisioningAnswer & { responseBody?: string; durationMs: number }>;
}
