/**
 * The one lifecycle of a request Orange sends (an order or an update), written once:
 *
 *   receive ─▶ claim (idempotency) ─┬─ sync ──▶ carry out ─▶ finish ─▶ answer the final state
 *                                   └─ async ─▶ acknowledge + job ─▶ answer `acknowledged`
 *                                                  job (worker) ─▶ carry out ─▶ finish + announce
 *                                     async, small, in an inline slot (ROLE=all):
 *                                              carry out ─▶ finish + announce ─▶ answer `acknowledged`
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
 *
 * The provisioning stage (PROVISIONING_MODE=webhook): the partner's application carries out
 * every request before the store records it and Orange hears its outcome.
 *
 *   claim + command (queued, in its lanes) ─▶ prepare: plan, ids, body (sending) ─▶ call ─▶ settle
 *   settle: 2xx → apply + finish (completed) │ 409/422 → finish (failed) │ 202 → waiting (result route)
 *           5xx, timeout… → retrying (job at the next attempt) │ out of bounds, other 4xx → parked + failed
 *
 * - The command is durable before it is sent, with its plan and body: every attempt, after a
 *   crash too, sends the same id (`webhook-id`) and the same body; nothing is written before the
 *   application confirmed (so a refused change leaves no trace), and the plan is applied once: the
 *   settling transaction checks the attempt it settles is still the command's current one.
 * - Lanes (the fleets, the customer): a command is prepared only once every earlier command of
 *   its lanes is finished, so one fleet's commands reach the application in Orange's order; other
 *   fleets never wait. A finished command wakes the next of its lanes.
 * - Sync and auto: the API runs the first attempt itself when the command's turn has come, then
 *   waits for the outcome until the deadline (the worker runs retries and turns that came later).
 *   Past it, sync answers 503 (Orange's retry with the same reference resumes the same command)
 *   and auto answers `acknowledged`, the outcome then going out as an event.
 */
import { prepared, type Db, type Queryable, type Sql, type Tx } from "../db/sql.js";
import type { Clock } from "../lib/clock.js";
import type { IdGenerator } from "../lib/ids.js";
import type { JsonObject, JsonValue } from "../lib/json.js";
import { retryDelayMs } from "../lib/backoff.js";
import { setTimeout as sleep } from "node:timers/promises";
import { OutcomePending } from "../errors.js";
import * as commands from "./commands.dal.js";
import type { CommandRow } from "./commands.dal.js";
import * as history from "./history.dal.js";
import { answeredEntry, receivedEntry, type HistoryEntry, type RequestTrace } from "./history.js";
import { replayOrConflict } from "./idempotency.js";
import type { AppLicenceData, Announcement, InlineRunner, InlineSlot, Job, JobQueue, Outbox, Provisioner, ProvisioningAnswer, ProvisioningCall, RequestCodec, Telemetry } from "./ports.js";
import * as requests from "./requests.dal.js";
import type { NewRequest, RequestKind } from "./requests.dal.js";

export type { RequestKind };
export type AnswerMode = requests.AnswerMode;

/** What every command of a request carries, whatever its kind. */
export interface RequestCommand {
  /** Orange's reference of the request or the Idempotency-Key header. */
  idempotencyKey?: string;
  orangeRef?: string;
  /** sha256 of the canonical request body: the same key with another body is a conflict. */
  requestHash: string;
  /** The request as received, stored and answered from. */
  request: JsonValue;
  /** How Orange's call identified itself, for the history (not part of the request). */
  trace?: RequestTrace;
}

/** The final outcome of a request, whatever its kind. */
export interface FinalOutcome {
  requestId: string;
  state: "completed" | "failed";
  reason?: string;
  completedAt: Date;
  /** What the metrics count it under (orders: UC1–UC3); default: the request's kind. */
  useCase?: string;
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
  /**
   * Checks the rules against the store, locking what the change touches, and decides what to
   * write; writes nothing (a plan may be made and thrown away: see claimInLanes).
   */
  plan(tx: Tx, requestId: string, cmd: C): Promise<Planned<P, O>>;
  /** Writes the plan, with what the partner's application told about the licences (webhook mode); the outcome. */
  apply(tx: Tx, requestId: string, cmd: C, plan: P, app?: AppLicenceData[]): Promise<O>;
  /** A `failed` outcome for a request that could not be carried out at all (nothing written). */
  failure(requestId: string, cmd: C | undefined, reason: string, now: Date): O;
  /** The `failed` outcome of a plan the partner's application refused or never carried out (nothing written). */
  refused(requestId: string, cmd: C, plan: P, reason: string, now: Date): O;
  /**
   * The lanes of the request's command to the partner's application: the fleets (and customer)
   * it concerns. Commands sharing a lane reach the application one after the other, in order.
   */
  lanes(tx: Tx, requestId: string, cmd: C): Promise<string[]>;
  /** What the partner's application is asked to carry out: the command's type and data. */
  command(requestId: string, cmd: C, plan: P): { type: string; data: JsonObject };
  /** The kind's columns of the finished request. */
  finished(outcome: O): Pick<requests.FinishedRequest, "customerId" | "fleetId">;
  /** What the history says of an outcome (or of its part about one fleet): its customer, what it did. */
  summary?(outcome: O): { customerId?: string; data?: JsonObject };
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
  /** Async requests of at most this many licences are carried out before their acknowledgement (default AT_ONCE_MAX_LICENCES; 0: none). */
  atOnceMaxLicences?: number;
  /** The partner's application (PROVISIONING_MODE=webhook); none: the store is the record. */
  provisioning?: ProvisioningStage;
  /** Told of every request that reached its final state (metrics); none: nothing is counted. */
  telemetry?: Telemetry;
  /**
   * Where an acknowledged request is carried out at once, in this process (set once the worker
   * runs here); none, or no free slot: it gets a job.
   */
  inline?: { current?: InlineRunner };
}

export interface RetryBounds {
  /** Ceiling of the first backoff; doubles with each attempt (full jitter). */
  baseMs: number;
  maxMs: number;
  maxAttempts: number;
  /** A command whose next attempt would come later than this after it was queued is parked. */
  maxAgeMs: number;
}

export interface ProvisioningStage {
  provisioner: Provisioner;
  /** One call's bound (the provisioner enforces it); a `sending` command's lease adds a margin. */
  timeoutMs: number;
  retry: RetryBounds;
  /** sync/auto: how long Orange's call waits for the application's outcome. */
  syncDeadlineMs: number;
  /** How often a waiting call looks at its request again. */
  pollMs?: number;
  random?: () => number;
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

/** The job that runs a command to the partner's application (its next step, when due). */
export const PROVISION_TASK = "provision_command";

/**
 * When an acknowledged update looks again, through its job, for the earlier unfinished update of
 * the same licences it waits for (one whose run failed and waits for its retry, or has not
 * started): a quarter of the time the earliest has waited so far, from 200 ms to 30 s, so that a
 * run failing again and again is not polled ever more often (a worker sees the job at its next
 * poll at the latest).
 */
export function deferralDelayMs(earliestWaitedMs: number): number {
  return Math.min(30_000, Math.max(200, Math.round(earliestWaitedMs / 4)));
}
/**
 * By default, an async request of at most this many licences is carried out before it is
 * acknowledged, when an inline slot is free (`carryOutAcknowledged`); a larger one is acknowledged
 * first and carried out by its run: Orange's call does not wait for it (ASYNC_AT_ONCE_MAX_LICENCES).
 */
export const AT_ONCE_MAX_LICENCES = 100;

/** The same, for a run in the process that acknowledged the update (no job): most often, the earlier one's run is just starting. */
const DEFER_INLINE_MS = 25;

/**
 * How long a `sending` command belongs to its runner: one call's bound and a margin. Past it,
 * the runner is presumed dead and the sweep sends the command again (so too a command whose job
 * a worker has held longer than this: its worker died, say, just after it took the job).
 */
export function commandLeaseMs(timeoutMs: number): number {
  return timeoutMs + 5_000;
}

export function provisionJob(kind: RequestKind, commandId: string, runAt?: Date): Job {
  return { task: PROVISION_TASK, payload: { commandId, kind }, key: `provision:${commandId}`, ...(runAt ? { runAt } : {}) };
}

/** What Orange is told when a request failed for a technical reason (the detail stays with operators). */
export function technicalFailureReason(kind: RequestKind, id: string): string {
  return `the partner could not carry out the ${kind} because of a technical error (reference ${id}); it was not applied`;
}

export interface RequestLifecycle<C extends RequestCommand = RequestCommand> {
  readonly kind: RequestKind;
  /** Orange's call: answered final (sync) or `acknowledged` with a job to carry it out (async). */
  receive(cmd: C, mode: AnswerMode): Promise<Reply>;
  /**
   * The job's work on an acknowledged request; `deferred` when an earlier request of the same
   * licences is unfinished: it runs again a little later, through `runAgain` when the caller
   * offers it (an inline run, in memory) and it accepts, else through its job.
   */
  process(id: string, runAgain?: (delayMs: number) => boolean): Promise<"processed" | "skipped" | "deferred">;
  /** Ends an acknowledged request `failed` without carrying it out; false when it was no longer acknowledged. */
  giveUp(id: string, reason: string): Promise<boolean>;
  /** A run of `process` failed: true when it must be tried again, false when the request ended `failed`. */
  failedRun(id: string, error: unknown, transient: boolean): Promise<boolean>;
  /** The provisioning job's work: the command's next step (an attempt, when its turn came and it is due). */
  runCommand(commandId: string, signal?: AbortSignal): Promise<void>;
  /**
   * The application's late result (after a 202), or an operator ending a command by hand:
   * `completed` applies the plan (with what the application tells of the licences), `failed`
   * ends the request failed with the reason.
   */
  endCommand(commandId: string, result: CommandResult, by: string): Promise<CommandRow>;
  /** An operator sends a parked command again: its request is carried out again, its outcome announced. */
  retryCommand(commandId: string, by: string): Promise<CommandRow>;
  /** A command that outlived its bounds (a 202 whose result never came): parked, its request failed. */
  expireCommand(commandId: string, reason?: string): Promise<boolean>;
  /** A run of `runCommand` threw: counted on the request; true when it must be tried again. */
  failedCommandRun(commandId: string, error: unknown, transient: boolean): Promise<boolean>;
}

export type CommandResult =
  | { outcome: "completed"; licences?: AppLicenceData[] }
  | { outcome: "failed"; reason: string };

/** The command cannot take this action in the state it is in. */
export class CommandStateConflict extends Error {
  override readonly name = "CommandStateConflict";
}

/**
 * `first`'s result. Should it fail, only once `beside` has settled too: statements of the same
 * transaction sent along with it, none of which may outlive the transaction (its failure rolls it
 * back and gives its connection back).
 */
async function awaitBeside<T>(first: Promise<T>, beside: Promise<unknown> | undefined): Promise<T> {
  try {
    return await first;
  } catch (error) {
    await beside?.catch(() => {});
    throw error;
  }
}

/** A settling that applied its plan ahead of its lock found that it should not have: rolled back, and settled again. */
class AppliedAhead extends Error {
  override readonly name = "AppliedAhead";
}

export function createRequestLifecycle<C extends RequestCommand, P, O extends FinalOutcome>(
  deps: LifecycleDeps<C, P, O>,
): RequestLifecycle<C> {
  const { db, clock, ids, outbox, jobs, codec, handler } = deps;
  const kind = handler.kind;

  /** Stores the request (or finds the one stored under its key); `received` is its history entry. */
  async function claim(
    tx: Tx,
    cmd: C,
    mode: AnswerMode,
  ): Promise<{ id: string; received: HistoryEntry } | { replay: JsonValue; id: string; received: HistoryEntry }> {
    const r = newRequest(cmd, mode);
    const inserted = await requests.insertRequest(tx, kind, r);
    if (inserted) return { id: r.id, received: receivedOf(cmd, mode, r.id, r.createdAt, false) };
    return storedUnder(tx, cmd, mode, r.createdAt);
  }

  /**
   * The request stored under the key this call found taken: its stored answer (a retry), or a
   * conflict (another body under the same key); `received`, this call's history entry.
   */
  async function storedUnder(tx: Tx, cmd: C, mode: AnswerMode, at: Date): Promise<{ replay: JsonValue; id: string; received: HistoryEntry }> {
    const stored = await requests.findByIdempotencyKey(tx, kind, cmd.idempotencyKey);
    const replay = replayOrConflict(kind, stored, cmd);
    return { replay, id: stored!.id, received: receivedOf(cmd, mode, stored!.id, at, true) };
  }

  /** The history entry of an `acknowledged` answer, now. */
  const acknowledgedEntry = (requestId: string) => answeredEntry(requestId, clock.now(), { state: "acknowledged" });

  /** Counts the acknowledgement (metrics) once the transaction that stored it has committed. */
  function countAcknowledged(tx: Tx, run: "inline" | "queued"): void {
    const telemetry = deps.telemetry;
    if (telemetry?.requestAcknowledged) tx.afterCommit(() => telemetry.requestAcknowledged?.({ kind, run }));
  }

  /**
   * An update waits for the earlier unfinished change of its licences, through its job: it looks
   * again after a while that grows with how long the earliest has waited (`deferralDelayMs`).
   */
  async function deferBehind(tx: Tx, id: string, earliestCreatedAt: Date): Promise<void> {
    const now = clock.now().getTime();
    await jobs.add(tx, { ...requestJob(kind, id), runAt: new Date(now + deferralDelayMs(now - earliestCreatedAt.getTime())) });
  }

  function newRequest(cmd: C, mode: AnswerMode): requests.NewRequest {
    return {
      id: ids.next(ID_PREFIX[kind]),
      answerMode: mode,
      idempotencyKey: cmd.idempotencyKey,
      orangeRef: cmd.orangeRef,
      requestHash: cmd.requestHash,
      request: cmd.request,
      createdAt: clock.now(),
      ...handler.describe(cmd),
    };
  }

  const receivedOf = (cmd: C, mode: AnswerMode, requestId: string, at: Date, replayed: boolean) =>
    receivedEntry({ requestId, orangeRef: cmd.orangeRef, idempotencyKey: cmd.idempotencyKey, trace: cmd.trace, mode }, at, replayed);

  /**
   * An asynchronous request carried out inline: stored with its acknowledgement and its history
   * in one statement (no transaction of several round trips), then started in `slot`. Undefined,
   * the slot given back, when its key is taken: the transaction of `receive` answers the retry or
   * the conflict.
   */
  async function acknowledgeInline(cmd: C, slot: InlineSlot): Promise<Reply | undefined> {
    const r = newRequest(cmd, "async");
    const response = codec.acknowledgement(cmd.request, r.id);
    const entries = [receivedOf(cmd, "async", r.id, r.createdAt, false), acknowledgedEntry(r.id)];
    let stored = false;
    try {
      stored = await requests.insertAcknowledged(db, kind, r, response, entries);
    } finally {
      if (!stored) slot.release();
    }
    if (!stored) return undefined;
    // Answered once its run has started (or waited long enough): the request is durable already.
    await slot.start(requestJob(kind, r.id));
    deps.telemetry?.requestAcknowledged?.({ kind, run: "inline" });
    return { requestId: r.id, replayed: false, response };
  }

  /**
   * A small asynchronous request carried out in the transaction that stores it, in an inline slot
   * (`receive`): stored, carried out, finished and announced in one transaction, then answered
   * `acknowledged`, its event delivered by the slot right after. Against storing it first and
   * carrying it out in a second transaction, this saves a commit and the reading back of the
   * request, and the acknowledgement no longer waits for a run to start (backpressure: it waits
   * for a slot, as that run would). An update whose earlier change of the same licences is still
   * unfinished is only stored, with a job that carries it out after that one.
   */
  async function carryOutAcknowledged(cmd: C): Promise<Reply> {
    return db.transaction(async (tx) => {
      const r = newRequest(cmd, "async");
      const response = codec.acknowledgement(cmd.request, r.id);
      // The update's earlier unfinished changes of its licences, looked for in the same round trip.
      const [inserted, earlier] = (await tx.queryEach([
        prepared(requests.insertRequestStatement(kind, r, response)),
        ...(kind === "update" ? [prepared(requests.earlierUnfinishedUpdates(r.id))] : []),
      ])) as [unknown[], { created_at: Date }[] | undefined];
      if (inserted.length === 0) {
        const stored = await storedUnder(tx, cmd, "async", r.createdAt);
        await history.insertEntries(tx, [stored.received]);
        return { requestId: stored.id, replayed: true, response: stored.replay };
      }
      const received = receivedOf(cmd, "async", r.id, r.createdAt, false);
      if (earlier !== undefined && earlier.length > 0) {
        await deferBehind(tx, r.id, earlier[0]!.created_at);
        await history.insertEntries(tx, [received, acknowledgedEntry(r.id)]);
        countAcknowledged(tx, "queued");
        return { requestId: r.id, replayed: false, response };
      }
      const outcome = await carryOut(tx, r.id, cmd);
      await announce(tx, cmd.request, outcome, cmd);
      // Answered once committed, after its outcome: the history says so.
      await finish(tx, outcome, null, cmd, { before: [received], after: [acknowledgedEntry(r.id)], later: true });
      countAcknowledged(tx, "inline");
      return { requestId: r.id, replayed: false, response };
    });
  }

  /** A request small enough to be carried out before its acknowledgement (`carryOutAcknowledged`). */
  function carriedOutAtOnce(cmd: C): boolean {
    const max = deps.atOnceMaxLicences ?? AT_ONCE_MAX_LICENCES;
    const { order, update } = handler.describe(cmd);
    return max > 0 && (order?.quantity ?? 0) <= max && (update?.licenceIds.length ?? 0) <= max;
  }

  async function carryOut(tx: Tx, id: string, cmd: C): Promise<O> {
    const planned = await handler.plan(tx, id, cmd);
    if ("refusal" in planned) return planned.refusal;
    // The provisioning stage goes here: the plan is what the partner's application is asked to
    // carry out, outside this transaction, before `apply` writes it.
    return handler.apply(tx, id, cmd, planned.plan);
  }

  /**
   * Records the outcome, and its history: one entry per part of the outcome (per fleet, as it is
   * announced), between the entries `around` gives (the request received, the answer), in one
   * statement. `around.deferred`: both statements are added to it instead, for the caller to run
   * within its own next statement (commands.dal's `also`); `around.later`: both go with the
   * transaction's next round trip (Tx.executeLater).
   */
  async function finish(
    tx: Tx,
    outcome: O,
    response: JsonValue | null,
    cmd: C | undefined,
    around: { before?: HistoryEntry[]; after?: HistoryEntry[]; actor?: string; deferred?: Sql[]; later?: boolean } = {},
  ): Promise<void> {
    const finished = { id: outcome.requestId, state: outcome.state, reason: outcome.reason, completedAt: outcome.completedAt, ...handler.finished(outcome) };
    if (around.deferred) around.deferred.push(requests.finishStatement(kind, finished, response));
    else if (around.later) await tx.executeLater(prepared(requests.finishStatement(kind, finished, response)));
    else await requests.finishRequest(tx, kind, finished, response);
    const parts = handler.split(outcome, cmd).map((part): HistoryEntry => {
      const summary = handler.summary?.(part.outcome);
      return {
        at: outcome.completedAt,
        kind: outcome.state === "completed" ? "request.completed" : "request.failed",
        requestId: outcome.requestId,
        customerId: summary?.customerId,
        fleetId: part.fleetId,
        actor: around.actor,
        data: { ...(outcome.reason !== undefined ? { reason: outcome.reason } : {}), ...summary?.data },
      };
    });
    const entries = [...(around.before ?? []), ...parts, ...(around.after ?? [])];
    if (around.deferred) around.deferred.push(history.entriesStatement(entries));
    else if (around.later) await tx.executeLater(prepared(history.entriesStatement(entries)));
    else await history.insertEntries(tx, entries);
    const telemetry = deps.telemetry;
    if (telemetry) {
      const finished = { kind, useCase: outcome.useCase ?? kind, state: outcome.state };
      tx.afterCommit(() => telemetry.requestFinished(finished));
    }
  }

  /** What Orange is answered, for the history. */
  const answered = (outcome: O) => answeredEntry(outcome.requestId, clock.now(), { state: outcome.state, reason: outcome.reason });

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
    if (stage) return receiveProvisioned(cmd, mode, stage);
    // Without the application, an auto request is always carried out within the deadline.
    if (mode === "auto") mode = "sync";
    // An acknowledged request is carried out here as soon as it is committed when a slot is free:
    // no job to add, claim and complete, no wait for a worker (under load, most of an async
    // order's time to its event was that wait). Its job is the fallback, and the sweep the net.
    const slot = mode === "async" ? deps.inline?.current?.reserve() : undefined;
    if (slot && carriedOutAtOnce(cmd)) {
      // Rolled back (a technical error, a conflict) or no slot in time: stored with a job below,
      // whose run tries again (or the same error is Orange's answer).
      const done = await slot.runNow(() => carryOutAcknowledged(cmd)).catch(() => undefined);
      if (done) return done.result;
    } else if (slot) {
      const acknowledged = await acknowledgeInline(cmd, slot);
      if (acknowledged) return acknowledged;
    }
    // Sync, async without a slot, or a key already taken (a retry, a conflict).
    return db.transaction(async (tx) => {
      const claimed = await claim(tx, cmd, mode);
      if ("replay" in claimed) {
        await history.insertEntries(tx, [claimed.received]);
        return { requestId: claimed.id, replayed: true, response: claimed.replay };
      }
      if (mode === "async") {
        const response = codec.acknowledgement(cmd.request, claimed.id);
        await requests.storeResponse(tx, kind, claimed.id, response);
        await jobs.add(tx, requestJob(kind, claimed.id));
        countAcknowledged(tx, "queued");
        await history.insertEntries(tx, [claimed.received, acknowledgedEntry(claimed.id)]);
        return { requestId: claimed.id, replayed: false, response };
      }
      const outcome = await carryOut(tx, claimed.id, cmd);
      const response = codec.answer(cmd.request, outcome);
      await finish(tx, outcome, response, cmd, { before: [claimed.received], after: [answered(outcome)] });
      return { requestId: claimed.id, replayed: false, response };
    });
  }

  /**
   * The job's work: carries out an acknowledged request and, in the same transaction, finishes it
   * and announces its outcome (the answer a sync call would have got). Does nothing once the
   * request is no longer acknowledged (the job ran again after its commit).
   */
  async function process(id: string, runAgain?: (delayMs: number) => boolean): Promise<"processed" | "skipped" | "deferred"> {
    // The outcome and its history, whose results are not needed, go out without waiting: answered
    // with the COMMIT.
    return db.transaction(async (tx) => {
      const row = await requests.lockAcknowledgedInTurn(tx, kind, id);
      if (!row) return "skipped";
      if (row.earlier.length > 0) {
        // Orange sent a change of the same licences first and it is not carried out yet (its run
        // is about to start, or failed and waits for its retry): this one goes after it, its
        // attempts not counted. Run inline, it looks again in a moment in this process; else,
        // or after a few such looks, its job does.
        if (!runAgain?.(DEFER_INLINE_MS)) await deferBehind(tx, id, row.earlier[0]!.createdAt);
        return "deferred";
      }
      const cmd = codec.decode(row.request);
      const outcome = await carryOut(tx, id, cmd);
      await announce(tx, row.request, outcome, cmd);
      await finish(tx, outcome, null, cmd, { later: true });
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
      await finish(tx, outcome, null, cmd);
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
      attempts = await db.transaction(async (tx) => {
        const n = await requests.recordFailedAttempt(tx, kind, id, detail.slice(0, 2000));
        if (n !== undefined) {
          await history.insertEntries(tx, [{ at: clock.now(), kind: "request.run-failed", requestId: id, data: { run: n, error: detail.slice(0, 2000) } }]);
        }
        return n;
      });
    } catch {
      return true; // the database does not answer: nothing to decide now
    }
    if (attempts === undefined) return false; // no longer acknowledged
    if (transient || attempts < deps.maxAttempts) return true;
    await giveUp(id, technicalFailureReason(kind, id));
    return false;
  }

  // ---------------------------------------------------------------------------------------------
  // The provisioning stage (see the head of this file)

  const stage = deps.provisioning;
  const leaseMs = commandLeaseMs(stage?.timeoutMs ?? 0);
  const random = stage?.random ?? Math.random;

  /** A request's final state and the answer stored for Orange. */
  type Answered = { state: string; response: JsonValue };
  /** What Orange's call that stored a request and prepared its command holds of them (see `settle`). */
  type Known = { request: JsonValue; cmd: C; requestId: string; plan: P };

  /** `plan`, on a command prepared by Orange's call: its plan as stored (read from its JSON text). */
  type Step = { kind: "call"; call: ProvisioningCall; attempt: number; plan?: P } | { kind: "finished" } | { kind: "idle" };
  const IDLE: Step = { kind: "idle" };

  /**
   * Ends the request with `outcome` as its answer mode says: the stored answer (sync, auto), which
   * it returns, or an event (async).
   */
  async function conclude(
    tx: Tx,
    request: { request: JsonValue; answerMode: AnswerMode },
    outcome: O,
    cmd: C | undefined,
    around: { before?: HistoryEntry[]; actor?: string; answering?: boolean; deferred?: Sql[] } = {},
  ): Promise<JsonValue | undefined> {
    if (request.answerMode === "async") {
      await finish(tx, outcome, null, cmd, around);
      await announce(tx, request.request, outcome, cmd);
      return undefined;
    }
    const response = codec.answer(request.request, outcome);
    // Orange's call waits for this answer: its history entry goes with the outcome, in one statement.
    await finish(tx, outcome, response, cmd, { ...around, ...(around.answering ? { after: [answered(outcome)] } : {}) });
    return response;
  }

  /** A step of a command to the partner's application, for the history. */
  const commandEntry = (
    row: Pick<CommandRow, "id" | "request_id">,
    k: HistoryEntry["kind"],
    data: Record<string, JsonValue | undefined>,
    actor?: string,
    at: Date = clock.now(),
  ): HistoryEntry => ({
    at,
    kind: k,
    requestId: row.request_id,
    commandId: row.id,
    actor,
    data: Object.fromEntries(Object.entries(data).filter(([, v]) => v !== undefined)) as JsonObject,
  });

  /**
   * A finished command hands its lanes on: the next command of each (which `settleCommand`
   * answers, in the statement that finished it) gets its job.
   */
  async function wakeNext(q: Queryable, next: commands.NextCommand[]): Promise<void> {
    // The next command may carry out the other kind of request (an update after an order).
    for (const n of next) await jobs.add(q, provisionJob(n.request_kind, n.id));
  }

  /**
   * The same once the transaction that finished a command has committed (the usual outcomes of an
   * attempt, whose settling statement goes out with the COMMIT). Should the database fail just
   * then, or the process die, the sweep gives a queued command without a live job its job.
   */
  async function wakeAfterCommit(next: Promise<commands.NextCommand[]>): Promise<void> {
    try {
      await wakeNext(db, await next);
    } catch {
      // Left to the sweep (above).
    }
  }

  /**
   * The command's next attempt, when it may go: the first (plan, partner ids, body, written
   * before the call) once its turn has come, or the next one when due. A plan the rules refuse
   * ends the request here, without a call.
   */
  async function prepare(tx: Tx, row: CommandRow): Promise<Step> {
    if (row.state === "queued") {
      if (!(await commands.isFirstInLanes(tx, row))) return IDLE;
      const request = await requests.lockAcknowledged(tx, kind, row.request_id);
      if (!request) {
        const next = await commands.settleCommand(tx, row.id, { state: "refused", error: "its request had already ended" });
        await wakeNext(tx, next);
        return { kind: "finished" };
      }
      const cmd = codec.decode(request.request);
      const planned = await handler.plan(tx, row.request_id, cmd);
      if ("refusal" in planned) {
        await conclude(tx, request, planned.refusal, cmd);
        const next = await commands.settleCommand(tx, row.id, { state: "refused", error: planned.refusal.reason });
        await wakeNext(tx, next);
        return { kind: "finished" };
      }
      const { type, data } = handler.command(row.request_id, cmd, planned.plan);
      const body = JSON.stringify({ type, timestamp: clock.now().toISOString(), data });
      await commands.startAttempt(tx, row.id, { attempt: 1, leaseMs, prepared: { type, plan: planned.plan as JsonValue, body } });
      await history.insertEntries(tx, [commandEntry(row, "command.prepared", { type, lanes: row.lanes })]);
      return { kind: "call", call: { id: row.id, type, body }, attempt: 1 };
    }
    if (row.due && row.body !== null && row.type !== null) {
      const attempt = row.attempts + 1;
      await commands.closeOpenAttempts(tx, row.id, "interrupted: the runner stopped or died during the attempt");
      await commands.startAttempt(tx, row.id, { attempt, leaseMs });
      if (row.state === "sending") {
        // Its lease passed: the attempt before never settled (its runner stopped or died).
        await history.insertEntries(tx, [commandEntry(row, "command.attempt", { attempt: row.attempts, outcome: "interrupted" })]);
      }
      return { kind: "call", call: { id: row.id, type: row.type, body: row.body }, attempt };
    }
    return IDLE;
  }

  /**
   * The command of a request claimed in this very transaction (Orange's call waits; the request
   * is locked and acknowledged already), after its lanes' locks: when no earlier command holds
   * them, written with its plan (`planned`, made with the claim), body and first attempt in one
   * statement (the row is never updated to be prepared); otherwise `queued`, with a job that
   * prepares it once its turn has come. `received` (the request's history entry) goes with the command's.
   */
  async function prepareNew(
    tx: Tx,
    command: { id: string; kind: RequestKind; requestId: string; lanes: string[] },
    lanesFree: boolean,
    cmd: C,
    request: { request: JsonValue; answerMode: AnswerMode },
    received: HistoryEntry,
    planned: Planned<P, O>,
  ): Promise<Step> {
    const row = { id: command.id, request_id: command.requestId };
    if (!lanesFree) {
      // Not its turn yet: the worker sends it once the commands before it are finished.
      await commands.insertCommand(tx, command);
      await jobs.add(tx, provisionJob(kind, command.id));
      await history.insertEntries(tx, [received]);
      return IDLE;
    }
    if ("refusal" in planned) {
      // The request's outcome and history are written with the command, in one statement.
      const also: Sql[] = [];
      await conclude(tx, request, planned.refusal, cmd, { before: [received], deferred: also });
      // No later command of its lanes can exist (their locks are held): none to wake.
      await commands.insertCommand(tx, command, { state: "refused", error: planned.refusal.reason }, also);
      return { kind: "finished" };
    }
    const { type, data } = handler.command(command.requestId, cmd, planned.plan);
    const body = JSON.stringify({ type, timestamp: clock.now().toISOString(), data });
    const entries = history.entriesStatement([received, commandEntry(row, "command.prepared", { type, lanes: command.lanes })]);
    const planJson = JSON.stringify(planned.plan);
    // The transaction's last statement: it goes with the COMMIT.
    await commands.insertCommand(tx, command, { state: "sending", leaseMs, type, planJson, body }, [entries], { last: true });
    // The plan as settling reads it back from the command (what JSON keeps of it), for Orange's call.
    return { kind: "call", call: { id: command.id, type, body }, attempt: 1, plan: JSON.parse(planJson) as P };
  }

  async function send(call: ProvisioningCall, signal?: AbortSignal) {
    try {
      return await stage!.provisioner.send(call, signal);
    } catch (error) {
      // The provisioner never throws for what the application does; anything else is worth a retry.
      return { outcome: "retry" as const, error: error instanceof Error ? error.message : String(error), durationMs: 0 };
    }
  }

  /** Parks the command and ends its request failed: the application did not carry it out within the bounds. */
  async function park(
    tx: Tx,
    row: commands.SettlingRow,
    request: { request: JsonValue; answerMode: AnswerMode },
    detail: string,
    finishing?: commands.Settled["finishing"],
    before: HistoryEntry[] = [],
    answering = false,
  ): Promise<Answered | undefined> {
    const cmd = codec.decode(request.request);
    const reason = `the partner's application did not carry out the ${kind}: ${detail}`;
    const outcome = row.plan === null ? handler.failure(row.request_id, cmd, reason, clock.now()) : handler.refused(row.request_id, cmd, row.plan as P, reason, clock.now());
    const also: Sql[] = [];
    const response = await conclude(tx, request, outcome, cmd, {
      before: [...before, commandEntry(row, "command.parked", { reason: detail })],
      answering,
      deferred: also,
    });
    const next = await commands.settleCommand(tx, row.id, { state: "parked", error: detail, ...(finishing ? { finishing } : {}) }, also);
    await wakeNext(tx, next);
    return response === undefined ? undefined : { state: outcome.state, response };
  }

  /**
   * Records what the application answered to attempt `attempt` and acts on it, in one
   * transaction; nothing when that attempt is no longer the command's current one (its lease
   * passed and another runner sent it again: that runner settles it). When it ended a request
   * answered sync (or auto), the answer it stored: the caller waiting for it need not read it back.
   * `answering`: that caller is Orange's call, which gets the answer now (its history entry goes
   * with the outcome). `known`: the request, its command and the command's plan, as the call that
   * stored them holds them: neither read back nor parsed again.
   */
  async function settle(
    commandId: string,
    attempt: number,
    answer: ProvisioningAnswer & { responseBody?: string; durationMs: number },
    answering = false,
    known?: Known,
  ): Promise<Answered | undefined> {
    if (known && answer.outcome === "done") {
      try {
        return await settleOnce(commandId, attempt, answer, answering, known, true);
      } catch (error) {
        if (!(error instanceof AppliedAhead)) throw error;
        // Rolled back: the command had moved on meanwhile. Settled the usual way, which sees how.
      }
    }
    return settleOnce(commandId, attempt, answer, answering, known, false);
  }

  /**
   * `settle`, once. `ahead`: the application carried the command out (`done`) and its plan is
   * known: the plan is applied right behind the lock of the command and its request, its first
   * write in the lock's round trip, and the transaction rolled back (AppliedAhead) when the lock
   * shows that it should not have been (the attempt is no longer the command's current one, or
   * the request ended by hand).
   */
  async function settleOnce(
    commandId: string,
    attempt: number,
    answer: ProvisioningAnswer & { responseBody?: string; durationMs: number },
    answering: boolean,
    known: Known | undefined,
    ahead: boolean,
  ): Promise<Answered | undefined> {
    const bounds = stage!.retry;
    // The commands whose turn may have come, once this transaction has committed: the statement
    // that settles the command goes out with the COMMIT, and they are woken after it.
    let woken: Promise<commands.NextCommand[]> | undefined;
    const answered = await db.transaction(async (tx): Promise<Answered | undefined> => {
      // The attempt's entry goes with what it led to (one statement with the request's outcome),
      // at the time the answer is settled, before what follows from it (a plan applied ahead).
      const settledAt = clock.now();
      // The request is locked with the command (one round trip), whatever the command's state.
      const locking = commands.lockWithRequest(tx, kind, commandId, known && { request: known.request, plan: known.plan as JsonValue });
      const applying = ahead && known && answer.outcome === "done" ? handler.apply(tx, known.requestId, known.cmd, known.plan, answer.licences) : undefined;
      // Awaited below in every case; never an unhandled rejection meanwhile.
      applying?.catch(() => {});
      const locked = await awaitBeside(locking, applying);
      const current = locked !== undefined && locked.row.state === "sending" && locked.row.attempts === attempt;
      if (applying && !(current && locked.request)) {
        await applying.catch(() => {});
        throw new AppliedAhead();
      }
      if (!locked) return;
      const { row, request } = locked;
      if (!current) return;
      const status = "status" in answer ? answer.status : undefined;
      const error = "error" in answer ? answer.error : answer.outcome === "refused" ? answer.reason : undefined;
      // The attempt is finished by the statement that settles the command, whichever it is.
      const finishing = { attempt, outcome: answer.outcome, status, error, responseBody: answer.responseBody, durationMs: Math.round(answer.durationMs) };
      const tried = (more: Record<string, JsonValue | undefined> = {}) =>
        commandEntry(row, "command.attempt", { attempt, outcome: answer.outcome, status, error, durationMs: Math.round(answer.durationMs), ...more }, undefined, settledAt);
      // What settling writes besides the command (history, the request's outcome) goes in the
      // statement that settles it: one round trip.
      const also: Sql[] = [];
      if (!request) {
        // Ended meanwhile by hand (result route): nothing to decide for the request.
        also.push(history.entriesStatement([tried()]));
        const next = await commands.settleCommand(tx, commandId, { state: "done", status, error, finishing }, also);
        await wakeNext(tx, next);
        return;
      }
      const cmd = known?.cmd ?? codec.decode(request.request);
      const plan = row.plan as P;
      const seen = { status, error, responseBody: answer.responseBody, finishing };
      switch (answer.outcome) {
        case "done": {
          const outcome = await (applying ?? handler.apply(tx, row.request_id, cmd, plan, answer.licences));
          const response = await conclude(tx, request, outcome, cmd, { before: [tried()], answering, deferred: also });
          woken = commands.settleCommandLater(tx, commandId, { state: "done", result: answer.licences as unknown as JsonValue, ...seen }, also);
          return response === undefined ? undefined : { state: outcome.state, response };
        }
        case "accepted":
          also.push(history.entriesStatement([tried()]));
          void commands.settleCommandLater(tx, commandId, { state: "waiting", ...seen }, also);
          return;
        case "refused": {
          const outcome = handler.refused(row.request_id, cmd, plan, `the partner's application refused it: ${answer.reason}`, clock.now());
          const response = await conclude(tx, request, outcome, cmd, { before: [tried()], answering, deferred: also });
          woken = commands.settleCommandLater(tx, commandId, { state: "refused", ...seen }, also);
          return response === undefined ? undefined : { state: outcome.state, response };
        }
        case "rejected":
          return park(tx, row, request, `it answered ${status ?? "nothing usable"} (${answer.error}) (command ${commandId})`, finishing, [tried()], answering);
        case "retry": {
          const next = new Date(clock.now().getTime() + retryDelayMs(bounds, attempt, answer.retryAfterMs, random));
          if (attempt >= bounds.maxAttempts || next.getTime() - row.created_at.getTime() > bounds.maxAgeMs) {
            return park(tx, row, request, `no answer after ${attempt} attempts, the last: ${answer.error} (command ${commandId})`, finishing, [tried()], answering);
          }
          also.push(history.entriesStatement([tried({ nextAttemptAt: next.toISOString() })]));
          void commands.settleCommandLater(tx, commandId, { state: "retrying", nextAttemptAt: next, ...seen }, also);
          await jobs.add(tx, provisionJob(kind, commandId, next));
          return;
        }
      }
    });
    if (woken) await wakeAfterCommit(woken);
    return answered;
  }

  async function runCommand(commandId: string, signal?: AbortSignal): Promise<void> {
    const step = await db.transaction(async (tx) => {
      const row = await commands.lockCommand(tx, commandId);
      return row && row.request_kind === kind ? prepare(tx, row) : IDLE;
    });
    if (step.kind !== "call") return;
    await settle(commandId, step.attempt, await send(step.call, signal));
  }

  /** Where a request stands, until it ends or the deadline passes; its final answer, or undefined. */
  async function awaitAnswer(requestId: string, deadline: number): Promise<Answered | undefined> {
    const pollMs = stage!.pollMs ?? 50;
    for (;;) {
      const now = await requests.answerOf(db, kind, requestId);
      if (now && now.state !== "acknowledged") return now;
      const left = deadline - clock.now().getTime();
      if (left <= 0) return undefined;
      await sleep(Math.min(pollMs, left));
    }
  }

  /** Past the deadline: auto answers `acknowledged` (the outcome goes out as an event), sync a 503 to retry. */
  async function pastDeadline(cmd: C, requestId: string, mode: AnswerMode): Promise<Reply> {
    if (mode === "auto") {
      const response = await db.transaction(async (tx) => {
        const stored = await requests.switchToAsync(tx, kind, requestId, codec.acknowledgement(cmd.request, requestId));
        // The stored answer is the final one when the request ended meanwhile.
        const state = (stored as { state?: unknown } | null)?.state;
        await history.insertEntries(tx, [answeredEntry(requestId, clock.now(), { state: typeof state === "string" ? state : "acknowledged" })]);
        return stored;
      });
      return { requestId, replayed: false, response };
    }
    const retryAfter = Math.max(1, Math.ceil(stage!.syncDeadlineMs / 2000));
    // Orange is told to send it again; no change goes with this entry.
    await history.insertEntries(db, [answeredEntry(requestId, clock.now(), { state: "pending", status: 503 })]);
    throw new OutcomePending(
      `the partner's application has not confirmed ${kind} ${requestId} yet; send the same request again (same reference) ` +
        `to get its outcome: it is carried out once`,
      retryAfter,
    );
  }

  /**
   * A request claimed; `inLanes`: its command's lanes, locked, whether they were free, and the
   * request's plan (made with the claim: see claimInLanes).
   */
  type Claimed =
    | { id: string; received: HistoryEntry; inLanes?: { lanes: string[]; free: boolean; planned: Planned<P, O> } }
    | { replay: JsonValue; id: string; received: HistoryEntry };

  /**
   * `claim` for a command Orange's call waits for: the request is inserted, its lanes locked and
   * looked at (whether an earlier command holds one, on a snapshot taken once the locks are held)
   * and its plan begun, in one round trip. The lanes are known first (an update's, from its
   * licences: a read before the claim); a retry under a used key took the locks for nothing, and
   * let them go at once. The plan's first statement goes out behind the claim's (a plan writes
   * nothing, it reads and locks what the change touches, after the lanes' locks as before). It is
   * needed when the lanes are free, the usual case; a replay, or lanes held by an earlier
   * command, throw it away.
   */
  async function claimInLanes(
    tx: Tx,
    cmd: C,
    mode: AnswerMode,
  ): Promise<Claimed> {
    const id = ids.next(ID_PREFIX[kind]);
    const lanes = await handler.lanes(tx, id, cmd);
    const createdAt = clock.now();
    const claiming = tx.queryEach([
      prepared(requests.insertRequestStatement(kind, {
        id,
        answerMode: mode,
        idempotencyKey: cmd.idempotencyKey,
        orangeRef: cmd.orangeRef,
        requestHash: cmd.requestHash,
        request: cmd.request,
        createdAt,
        ...handler.describe(cmd),
      })),
      ...commands.lockAndLookStatements(lanes).map(prepared),
    ]);
    // Begun now, its first statement sent with the claim's; always waited for before the
    // transaction goes on, so that none of its statements outlives it.
    const planning = handler.plan(tx, id, cmd);
    // Awaited below in every case; never an unhandled rejection meanwhile.
    planning.catch(() => {});
    const [inserted, , found] = await awaitBeside(claiming, planning);
    const planned = await planning;
    if (inserted!.length > 0) {
      return { id, received: receivedOf(cmd, mode, id, createdAt, false), inLanes: { lanes, free: found!.length === 0, planned } };
    }
    return storedUnder(tx, cmd, mode, createdAt);
  }

  async function receiveProvisioned(cmd: C, mode: AnswerMode, s: ProvisioningStage): Promise<Reply> {
    const deadline = clock.now().getTime() + s.syncDeadlineMs;
    type First = { reply: Reply } | { requestId: string; step: Step; commandId: string; retried: boolean };
    const first = await db.transaction(async (tx): Promise<First> => {
      // Typed as the wider union: assigned from a conditional, it would be narrowed to claim's.
      const claimed = (mode === "async" ? await claim(tx, cmd, mode) : await claimInLanes(tx, cmd, mode)) as Claimed;
      if ("replay" in claimed) {
        await history.insertEntries(tx, [claimed.received]);
        // An answer is stored (final, or the acknowledgement): Orange gets it again. None yet: the
        // first call is still waiting for the application; this one waits too.
        if (claimed.replay !== null) return { reply: { requestId: claimed.id, replayed: true, response: claimed.replay } };
        return { requestId: claimed.id, step: IDLE, commandId: "", retried: true };
      }
      const commandId = ids.next("pc");
      if (!claimed.inLanes) {
        const lanes = await handler.lanes(tx, claimed.id, cmd);
        const command = { id: commandId, kind, requestId: claimed.id, lanes };
        await commands.lockLanes(tx, lanes);
        await commands.insertCommand(tx, command);
        const response = codec.acknowledgement(cmd.request, claimed.id);
        await requests.storeResponse(tx, kind, claimed.id, response);
        await jobs.add(tx, provisionJob(kind, commandId));
        await history.insertEntries(tx, [claimed.received, acknowledgedEntry(claimed.id)]);
        return { reply: { requestId: claimed.id, replayed: false, response } };
      }
      const command = { id: commandId, kind, requestId: claimed.id, lanes: claimed.inLanes.lanes };
      const { free, planned } = claimed.inLanes;
      const step = await prepareNew(tx, command, free, cmd, { request: cmd.request, answerMode: mode }, claimed.received, planned);
      return { requestId: claimed.id, step, commandId, retried: false };
    });
    if ("reply" in first) return first.reply;
    const { requestId, step } = first;
    if (step.kind === "call") {
      const left = Math.max(1, deadline - clock.now().getTime());
      // The call keeps its own bound (PROVISIONING_TIMEOUT_MS), whatever Orange's deadline: cut at
      // the deadline, it would be sent again while the application may still be carrying it out.
      // A timer cleared once the call ends, not AbortSignal.timeout: that one stays armed for the
      // whole bound after the call, and then builds an abort error with its stack for every call.
      const guard = new AbortController();
      const guardTimer = setTimeout(() => guard.abort(), s.timeoutMs + 1_000);
      const calling = send(step.call, guard.signal).finally(() => clearTimeout(guardTimer));
      // A plain timer, cleared once the call is answered (an aborted sleep would build an
      // AbortError, with its stack, for every call answered in time).
      let timer: ReturnType<typeof setTimeout> | undefined;
      const deadlinePassed = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, left, undefined)));
      const called = await Promise.race([calling, deadlinePassed]);
      clearTimeout(timer);
      if (called !== undefined) {
        // Settled here, the request's answer is Orange's at once: its history entry is written with it.
        const settled = await settle(first.commandId, step.attempt, called, true, { request: cmd.request, cmd, requestId, plan: step.plan! });
        if (settled !== undefined) return { requestId, replayed: false, response: settled.response };
      } else {
        // Past the deadline, the call goes on and its answer is settled when it comes: the outcome
        // then goes out as an event (auto) or waits for Orange's retry (sync).
        void calling
          .then((answer) => settle(first.commandId, step.attempt, answer, false, { request: cmd.request, cmd, requestId, plan: step.plan! }))
          .catch(() => {
            // Not settled (the database away): the command's lease passes and the sweep sends it again.
          });
      }
    }
    const answer = await awaitAnswer(requestId, deadline);
    if (answer !== undefined) {
      // Answered outside the transaction that ended the request (the application's answer may have come through the worker).
      await history.insertEntries(db, [answeredEntry(requestId, clock.now(), { state: answer.state })]);
      // A retry that waited for the first call's outcome answers it as a replay.
      return { requestId, replayed: first.retried, response: answer.response };
    }
    return pastDeadline(cmd, requestId, mode);
  }

  async function endCommand(commandId: string, result: CommandResult, by: string): Promise<CommandRow> {
    await db.transaction(async (tx) => {
      const row = await commands.lockCommand(tx, commandId);
      if (!row || row.request_kind !== kind) throw new CommandStateConflict(`command ${commandId} does not exist`);
      if (!["waiting", "sending", "retrying"].includes(row.state)) {
        throw new CommandStateConflict(
          row.state === "queued"
            ? `command ${commandId} has not been sent yet; it cannot have a result`
            : `command ${commandId} is ${row.state}; only a command sent and not finished can be ended`,
        );
      }
      await commands.closeOpenAttempts(tx, commandId, `ended by hand (${by})`);
      const request = await requests.lockAcknowledged(tx, kind, row.request_id);
      const cmd = request ? codec.decode(request.request) : undefined;
      const ended = commandEntry(
        row,
        "command.ended",
        { outcome: result.outcome, reason: result.outcome === "failed" ? result.reason : undefined, was: row.state },
        by,
      );
      if (request && cmd) {
        const outcome =
          result.outcome === "completed"
            ? await handler.apply(tx, row.request_id, cmd, row.plan as P, result.licences)
            : handler.refused(row.request_id, cmd, row.plan as P, `the partner's application did not carry it out: ${result.reason}`, clock.now());
        await conclude(tx, request, outcome, cmd, { before: [ended], actor: by });
      } else {
        await history.insertEntries(tx, [ended]);
      }
      const next = await commands.settleCommand(tx, commandId, {
        state: result.outcome === "completed" ? "done" : "refused",
        result: result.outcome === "completed" ? ((result.licences ?? []) as unknown as JsonValue) : undefined,
        error: result.outcome === "failed" ? result.reason : undefined,
        endedBy: by,
      });
      await wakeNext(tx, next);
    });
    return (await commands.getCommand(db, commandId))!;
  }

  async function retryCommand(commandId: string, by: string): Promise<CommandRow> {
    await db.transaction(async (tx) => {
      const row = await commands.lockCommand(tx, commandId);
      if (!row || row.request_kind !== kind) throw new CommandStateConflict(`command ${commandId} does not exist`);
      if (row.state !== "parked") throw new CommandStateConflict(`command ${commandId} is ${row.state}; only a parked command can be sent again`);
      if (await commands.hasLaterInLanes(tx, row)) {
        throw new CommandStateConflict(
          `later commands of its lanes (${row.lanes.join(", ")}) went on while command ${commandId} was parked: sending it now ` +
            `would reach the application out of order; Orange must send a new request`,
        );
      }
      const request = await requests.requestOf(tx, kind, row.request_id);
      await requests.reopen(tx, kind, row.request_id, codec.acknowledgement(request!, row.request_id));
      await commands.requeue(tx, commandId, by);
      await jobs.add(tx, provisionJob(kind, commandId));
      await history.insertEntries(tx, [commandEntry(row, "command.retried", { attemptsBefore: row.attempts }, by)]);
    });
    return (await commands.getCommand(db, commandId))!;
  }

  async function failedCommandRun(commandId: string, error: unknown, transient: boolean): Promise<boolean> {
    const detail = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    let attempts: number | undefined;
    try {
      const row = await commands.getCommand(db, commandId);
      if (!row || !commands.UNFINISHED.includes(row.state)) return false;
      attempts = await db.transaction(async (tx) => {
        const n = await requests.recordFailedAttempt(tx, kind, row.request_id, detail.slice(0, 2000));
        if (n !== undefined) await history.insertEntries(tx, [commandEntry(row, "request.run-failed", { run: n, error: detail.slice(0, 2000) })]);
        return n;
      });
    } catch {
      return true; // the database does not answer: nothing to decide now
    }
    if (attempts === undefined) return false;
    if (transient || attempts < deps.maxAttempts) return true;
    await expireCommand(commandId, `a technical error at every run (${detail.slice(0, 200)})`);
    return false;
  }

  async function expireCommand(commandId: string, reason?: string): Promise<boolean> {
    return db.transaction(async (tx) => {
      const row = await commands.lockCommand(tx, commandId);
      if (!row || !commands.UNFINISHED.includes(row.state)) return false;
      const request = await requests.lockAcknowledged(tx, kind, row.request_id);
      if (!request) {
        const next = await commands.settleCommand(tx, commandId, { state: "parked", error: "its request had already ended" });
        await history.insertEntries(tx, [commandEntry(row, "command.parked", { reason: "its request had already ended" })]);
        await wakeNext(tx, next);
        return true;
      }
      await park(
        tx,
        row,
        request,
        `${reason ?? `no outcome within ${Math.round((stage?.retry.maxAgeMs ?? 0) / 60_000)} minutes`} (command ${commandId}, ${row.state})`,
      );
      return true;
    });
  }

  return { kind, receive, process, giveUp, failedRun, runCommand, endCommand, retryCommand, expireCommand, failedCommandRun };
}
