/**
 * The one lifecycle of a request Orange sends (an order or an update), written once:
 *
 *   receive ─▶ claim (idempotency) ─┬─ sync ──▶ carry out ─▶ finish ─▶ answer the final state
 *                                   └─ async ─▶ acknowledge + job ─▶ answer `acknowledged`
 *                                                  job (worker) ─▶ carry out ─▶ finish + announce
 *
 *   carry out = plan (check the rules against the store, lock what changes, decide the ids)
 *               ─▶ [provisioning stage: the partner's application, outside the transaction]
 *               ─▶ apply (write the plan)
 *
 * - Claim: the request is stored under its idempotency key (Orange's reference) before anything
 *   else, in the transaction that answers it, so it is durable when answered; a retry of the same
 *   reference gets the stored answer, another body under it a conflict.
 * - A rule that refuses the request is an outcome (`failed`, nothing written), not an exception;
 *   an exception is a technical error and rolls the whole transaction back.
 * - Async: the worker runs `process` until the request left `acknowledged`. A run that fails is
 *   counted on the request; a run that keeps failing for a reason that is not transient (not the
 *   database out of reach, not a conflict) ends the request `failed` after `maxAttempts`, and so
 *   does the sweep for a request whose job is gone past that bound: never `acknowledged` forever.
 * - Each kind of request brings its own rules and tables (a RequestHandler: orders.ts, updates.ts);
 *   Orange's wire comes in through a RequestCodec, Orange is told through the Outbox.
 */
import type { Db, Tx } from "../db/sql.js";
import type { Clock } from "../lib/clock.js";
import type { IdGenerator } from "../lib/ids.js";
import type { JsonValue } from "../lib/json.js";
import { replayOrConflict } from "./idempotency.js";
import type { Announcement, Job, JobQueue, Outbox, RequestCodec } from "./ports.js";
import * as requests from "./requests.dal.js";
import type { NewRequest, RequestKind } from "./requests.dal.js";

export type { RequestKind };
export type AnswerMode = "sync" | "async";

/** What every command of a request carries, whatever its kind. */
export interface RequestCommand {
  /** Orange's reference of the request or the Idempotency-Key header. */
  idempotencyKey?: string;
  orangeRef?: string;
  /** sha256 of the canonical request body: the same key with another body is a conflict. */
  requestHash: string;
  /** The request as received, stored and answered from. */
  request: JsonValue;
}

/** The final outcome of a request, whatever its kind. */
export interface FinalOutcome {
  requestId: string;
  state: "completed" | "failed";
  reason?: string;
  completedAt: Date;
}

export interface Reply {
  /** The partner id of the request (the first call's, for a retry). */
  requestId: string;
  /** True when this is a retry answered from the stored answer of the first call. */
  replayed: boolean;
  response: JsonValue;
}

/** What the rules decided: the plan to write, or the refusal (a `failed` outcome, nothing written). */
export type Planned<P, O> = { plan: P } | { refusal: O };

/** What a kind of request brings to the lifecycle: its rules, over its own tables. */
export interface RequestHandler<C extends RequestCommand, P, O extends FinalOutcome> {
  readonly kind: RequestKind;
  /** The kind's own columns of the stored request. */
  describe(cmd: C): Pick<NewRequest, "order" | "update">;
  /** Checks the rules against the store, locking what the change touches, and decides what to write. */
  plan(tx: Tx, requestId: string, cmd: C): Promise<Planned<P, O>>;
  /** Writes the plan; the outcome. */
  apply(tx: Tx, requestId: string, cmd: C, plan: P): Promise<O>;
  /** A `failed` outcome for a request that could not be carried out at all (nothing written). */
  failure(requestId: string, cmd: C | undefined, reason: string, now: Date): O;
  /** The kind's columns of the finished request. */
  finished(outcome: O): Pick<requests.FinishedRequest, "customerId" | "fleetId">;
  /**
   * The announcements of an outcome: one per fleet the outcome concerns (events are ordered per
   * fleet), each with the part of the outcome about that fleet; no fleet: one about the request.
   */
  split(outcome: O, cmd: C | undefined): { fleetId?: string; outcome: O }[];
}

export interface LifecycleDeps<C extends RequestCommand, P, O extends FinalOutcome> {
  db: Db;
  clock: Clock;
  ids: IdGenerator;
  outbox: Outbox;
  jobs: JobQueue;
  codec: RequestCodec<C, O>;
  handler: RequestHandler<C, P, O>;
  /** Failed runs of an acknowledged request, for a reason that is not transient, before it ends `failed`. */
  maxAttempts: number;
}

const ID_PREFIX = { order: "po", update: "upd" } as const;

/** The job that carries out an acknowledged request: task, payload and key are defined here only. */
export const REQUEST_JOBS = {
  order: { task: "process_order", payloadKey: "orderId" },
  update: { task: "process_update", payloadKey: "updateId" },
} as const satisfies Record<RequestKind, { task: string; payloadKey: string }>;

export function requestJob(kind: RequestKind, id: string): Job {
  const { task, payloadKey } = REQUEST_JOBS[kind];
  // The key makes a second add for the same request replace the first instead of doubling it.
  return { task, payload: { [payloadKey]: id }, key: `${kind}:${id}` };
}

/** What Orange is told when a request failed for a technical reason (the detail stays with operators). */
export function technicalFailureReason(kind: RequestKind, id: string): string {
  return `the partner could not carry out the ${kind} because of a technical error (reference ${id}); it was not applied`;
}

export interface RequestLifecycle<C extends RequestCommand = RequestCommand> {
  readonly kind: RequestKind;
  /** Orange's call: answered final (sync) or `acknowledged` with a job to carry it out (async). */
  receive(cmd: C, mode: AnswerMode): Promise<Reply>;
  /** The job's work on an acknowledged request. */
  process(id: string): Promise<"processed" | "skipped">;
  /** Ends an acknowledged request `failed` without carrying it out; false when it was no longer acknowledged. */
  giveUp(id: string, reason: string): Promise<boolean>;
  /** A run of `process` failed: true when it must be tried again, false when the request ended `failed`. */
  failedRun(id: string, error: unknown, transient: boolean): Promise<boolean>;
}

export function createRequestLifecycle<C extends RequestCommand, P, O extends FinalOutcome>(
  deps: LifecycleDeps<C, P, O>,
): RequestLifecycle<C> {
  const { db, clock, ids, outbox, jobs, codec, handler } = deps;
  const kind = handler.kind;

  async function claim(tx: Tx, cmd: C): Promise<{ id: string } | { replay: JsonValue; id: string }> {
    const id = ids.next(ID_PREFIX[kind]);
    const inserted = await requests.insertRequest(tx, kind, {
      id,
      idempotencyKey: cmd.idempotencyKey,
      orangeRef: cmd.orangeRef,
      requestHash: cmd.requestHash,
      request: cmd.request,
      createdAt: clock.now(),
      ...handler.describe(cmd),
    });
    if (inserted) return { id };
    const stored = await requests.findByIdempotencyKey(tx, kind, cmd.idempotencyKey);
    return { replay: replayOrConflict(kind, stored, cmd), id: stored!.id };
  }

  async function carryOut(tx: Tx, id: string, cmd: C): Promise<O> {
    const planned = await handler.plan(tx, id, cmd);
    if ("refusal" in planned) return planned.refusal;
    // The provisioning stage goes here: the plan is what the partner's application is asked to
    // carry out, outside this transaction, before `apply` writes it.
    return handler.apply(tx, id, cmd, planned.plan);
  }

  async function finish(tx: Tx, outcome: O, response: JsonValue | null): Promise<void> {
    await requests.finishRequest(
      tx,
      kind,
      { id: outcome.requestId, state: outcome.state, reason: outcome.reason, completedAt: outcome.completedAt, ...handler.finished(outcome) },
      response,
    );
  }

  async function announce(tx: Tx, request: JsonValue, outcome: O, cmd: C | undefined): Promise<void> {
    // Fleet order: two requests announcing to the same fleets take their locks in the same order.
    const parts = handler.split(outcome, cmd).sort((a, b) => (a.fleetId ?? "").localeCompare(b.fleetId ?? ""));
    for (const part of parts) {
      const resource = codec.answer(request, part.outcome);
      const announcement: Announcement =
        kind === "order"
          ? { about: "order", state: outcome.state, orderId: outcome.requestId, fleetId: part.fleetId, resource }
          : { about: "update", state: outcome.state, updateId: outcome.requestId, fleetId: part.fleetId, resource };
      await outbox.announce(tx, announcement);
    }
  }

  /** Orange's call: answered final (sync) or `acknowledged` with a job to carry it out (async). */
  async function receive(cmd: C, mode: AnswerMode): Promise<Reply> {
    return db.transaction(async (tx) => {
      const claimed = await claim(tx, cmd);
      if ("replay" in claimed) return { requestId: claimed.id, replayed: true, response: claimed.replay };
      if (mode === "async") {
        const response = codec.acknowledgement(cmd.request, claimed.id);
        await requests.storeResponse(tx, kind, claimed.id, response);
        await jobs.add(tx, requestJob(kind, claimed.id));
        return { requestId: claimed.id, replayed: false, response };
      }
      const outcome = await carryOut(tx, claimed.id, cmd);
      const response = codec.answer(cmd.request, outcome);
      await finish(tx, outcome, response);
      return { requestId: claimed.id, replayed: false, response };
    });
  }

  /**
   * The job's work: carries out an acknowledged request and, in the same transaction, finishes it
   * and announces its outcome (the answer a sync call would have got). Does nothing once the
   * request is no longer acknowledged (the job ran again after its commit).
   */
  async function process(id: string): Promise<"processed" | "skipped"> {
    return db.transaction(async (tx) => {
      const row = await requests.lockAcknowledged(tx, kind, id);
      if (!row) return "skipped";
      const cmd = codec.decode(row.request);
      const outcome = await carryOut(tx, id, cmd);
      await finish(tx, outcome, null);
      await announce(tx, row.request, outcome, cmd);
      return "processed";
    });
  }

  /** Ends an acknowledged request `failed` without carrying it out (it kept failing); false when it was no longer acknowledged. */
  async function giveUp(id: string, reason: string): Promise<boolean> {
    return db.transaction(async (tx) => {
      const row = await requests.lockAcknowledged(tx, kind, id);
      if (!row) return false;
      let cmd: C | undefined;
      try {
        cmd = codec.decode(row.request);
      } catch {
        // The request itself may be what cannot be read back: announce without it.
      }
      const outcome = handler.failure(id, cmd, reason, clock.now());
      await finish(tx, outcome, null);
      await announce(tx, row.request, outcome, cmd);
      return true;
    });
  }

  /**
   * A run of `process` failed: the failure is counted on the request (when the database answers).
   * True when the request must be tried again, false when it was given up on (ended `failed`).
   */
  async function failedRun(id: string, error: unknown, transient: boolean): Promise<boolean> {
    const detail = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    let attempts: number | undefined;
    try {
      attempts = await requests.recordFailedAttempt(db, kind, id, detail.slice(0, 2000));
    } catch {
      return true; // the database does not answer: nothing to decide now
    }
    if (attempts === undefined) return false; // no longer acknowledged
    if (transient || attempts < deps.maxAttempts) return true;
    await giveUp(id, technicalFailureReason(kind, id));
    return false;
  }

  return { kind, receive, process, giveUp, failedRun };
}
