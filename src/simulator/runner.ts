/**
 * The scenario engine: plays scenarios (./scenario.ts) against a partner server as Orange's IT
 * would, waits for its events at the mock gateway (./gateway.ts) and turns every expectation
 * into one check line.
 *
 * Only the wire schemas are imported from the server (src/orange/schemas.ts): the simulator
 * must work against a partner server that is not ours.
 */
import { randomBytes } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";
import { request } from "undici";
import type { z } from "zod";
import {
  ErrorBodySchema,
  PingResponseSchema,
  ProductOrderResponseSchema,
  UserServiceChangeNotificationSchema,
  UserServiceListSchema,
  UserServiceSchema,
  UserServiceUpdateResponseSchema,
} from "../orange/schemas.js";
import { commandRecords, deliveryFailures, type CommandRecord, type MockApplication } from "./application.js";
import type { MockGateway, ReceivedEvent } from "./gateway.js";
import { describeValue, findEmptyNodes, matchPath, matchValue, resolvePath, type MatchContext, type MatchResult } from "./match.js";
import type { Scenario, SchemaName, Step, StepApp, StepApplication, StepEvent, StepRequest, When } from "./scenario.js";
import { authHeaders, type TargetAuth } from "./target.js";
import { MissingVariable, template, type TemplateContext } from "./template.js";

export type { TargetAuth } from "./target.js";

export interface RunOptions {
  target: string;
  auth: TargetAuth;
  modes: { ordering: "sync" | "async"; update: "sync" | "async" };
  offer: string;
  offers: string[];
  gateway: MockGateway;
  eventTimeoutMs: number;
  requestTimeoutMs: number;
  scenarios: Scenario[];
  only?: string[];
  skip?: string[];
  showSecrets?: boolean;
  /**
   * What is known of the target's version when it does not say it itself (e.g. the self-hosted
   * server: its package name and version). Otherwise the run asks GET /ping and /health*.
   */
  knownVersion?: { version: string; source: string };
  /** How the target carries out orders and changes (its PROVISIONING_MODE); default none. */
  provisioning?: ProvisioningRun;
  log?: (line: string) => void;
}

/** A run against a target with `PROVISIONING_MODE=webhook` (or not). */
export interface ProvisioningRun {
  mode: "none" | "webhook";
  /** The simulator's mock application, when it hosts one: scenarios set its behaviour and read what it received. */
  application?: MockApplication;
  /** The target's own application (--app-url), when the simulator hosts none. */
  applicationUrl?: string;
  /** The target's PROVISIONING_SYNC_DEADLINE_MS: how long its sync answers wait for the application. */
  syncDeadlineMs?: number;
}

/** The server's PROVISIONING_SYNC_DEADLINE_MS default. */
export const DEFAULT_SYNC_DEADLINE_MS = 20_000;
/**
 * How much later than the target's sync deadline a "late" application reports its result: past
 * the first call's deadline, well within the deadline of Orange's retry sent at once.
 */
export function pastDeadlineMs(syncDeadlineMs: number): number {
  return syncDeadlineMs + Math.min(1_000, Math.floor(syncDeadlineMs / 2));
}

export interface CheckResult {
  scenario: string;
  step: string;
  title?: string;
  check: string;
  outcome: "pass" | "fail" | "skip";
  expected: string;
  actual: string;
  curl?: string;
  ms?: number;
}

type Mode = "sync" | "async";
type Summary = { scenarios: number; checks: number; passed: number; failed: number; skipped: number };

/** How many answers of each API looked sync (`completed`/`failed`) or async (`acknowledged`). */
export interface ObservedModes {
  ordering: Record<Mode, number>;
  update: Record<Mode, number>;
}

export interface ScenarioSummary {
  name: string;
  title?: string;
  durationMs: number;
  summary: Summary;
}

export interface RunReport {
  target: string;
  /** The target's version, if it says it (or it is known), and where it came from. */
  targetVersion: { version?: string; source: string };
  modes: RunOptions["modes"];
  /** The target's provisioning, and its application: the simulator's mock (`hosted <url>`) or the target's own. */
  provisioning: { mode: ProvisioningRun["mode"]; application?: string };
  offer: string;
  offers: string[];
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  /** The scenarios played, in order, with their own counts. */
  scenarios: ScenarioSummary[];
  /** Scenarios selected for these modes but not played, and why (e.g. no mock application to control). */
  notPlayed: { scenario: string; reason: string }[];
  checks: CheckResult[];
  summary: Summary;
  observedModes: ObservedModes;
  /** One line saying which --ordering/--update to pass when the answers contradict the declared modes. */
  modeHint?: string;
}

// ---------------------------------------------------------------------------------------------
// Schemas

/**
 * FORMAT.md names → the server's wire schemas. `UserServiceChange` is documented as "the
 * resource of a UC5 event", which is `{ userService: [UserServiceChange…] }`.
 */
export const WIRE_SCHEMAS: Record<SchemaName, z.ZodType> = {
  ProductOrderResponse: ProductOrderResponseSchema,
  UserService: UserServiceSchema,
  UserServiceList: UserServiceListSchema,
  UserServiceUpdateResponse: UserServiceUpdateResponseSchema,
  UserServiceChange: UserServiceChangeNotificationSchema,
  ErrorBody: ErrorBodySchema,
  Ping: PingResponseSchema,
};

const ISO_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** Validates a value against a named wire schema; the first issues make the `actual`. */
export function checkSchema(name: SchemaName, value: unknown, present = true): MatchResult {
  const expected = `a valid ${name}`;
  if (!present) return { ok: false, expected, actual: "no JSON body" };
  const result = WIRE_SCHEMAS[name].safeParse(value);
  if (result.success) return { ok: true, expected, actual: `a valid ${name}` };
  const issues = result.error.issues.slice(0, 3).map((i) => `${i.path.length ? i.path.join(".") : "$"}: ${i.message}`);
  const more = result.error.issues.length > 3 ? ` (+${result.error.issues.length - 3} more)` : "";
  return { ok: false, expected, actual: `${issues.join("; ")}${more}` };
}

// ---------------------------------------------------------------------------------------------
// HTTP

interface SentRequest {
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: string;
}

interface Response {
  status: number;
  headers: Record<string, string>;
  text: string;
  /** The parsed body, when it is JSON. */
  json: { ok: true; value: unknown } | { ok: false };
  ms: number;
}

const shellQuote = (text: string): string => `'${text.replace(/'/g, `'\\''`)}'`;

/**
 * The request as a curl command. The target's real credentials become shell variables
 * (`$ORANGE_TOKEN`…) unless `showSecrets`; a deliberately wrong secret is shown as is.
 */
export function toCurl(req: SentRequest, auth: TargetAuth, showSecrets = false): string {
  const parts = ["curl", "-sS", "-i", "-X", req.method, shellQuote(req.url)];
  const secret = showSecrets ? undefined : placeholderFor(auth);
  for (const [name, value] of Object.entries(req.headers)) {
    if (secret !== undefined && name === secret.header && value === secret.value) {
      // Double quotes: the shell expands the placeholder from the user's environment.
      parts.push(...(auth.kind === "basic" ? ["-u", `"${secret.placeholder}"`] : ["-H", `"${name}: ${secret.placeholder}"`]));
    } else {
      parts.push("-H", shellQuote(`${name}: ${value}`));
    }
  }
  if (req.body !== undefined) parts.push("--data-raw", shellQuote(req.body));
  return parts.join(" ");
}

function placeholderFor(auth: TargetAuth): { header: string; value: string; placeholder: string } | undefined {
  const real = authHeaders(auth, "orange");
  const [header, value] = Object.entries(real)[0] ?? [];
  if (header === undefined || value === undefined) return undefined;
  switch (auth.kind) {
    case "basic":
      return { header, value, placeholder: "$ORANGE_USER:$ORANGE_PASSWORD" };
    case "bearer":
      return { header, value, placeholder: "Bearer $ORANGE_TOKEN" };
    default:
      return { header, value, placeholder: "$ORANGE_API_KEY" };
  }
}

function flattenHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined) out[k.toLowerCase()] = Array.isArray(v) ? v.join(", ") : v;
  return out;
}

function parseJson(text: string): Response["json"] {
  if (text.trim() === "") return { ok: false };
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch {
    return { ok: false };
  }
}

/** undici hides the useful part (ECONNREFUSED…) in `cause`. */
function errorCause(error: Error): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause ? ` (${cause.code ?? cause.message ?? ""})` : "";
}

async function send(req: SentRequest, timeoutMs: number): Promise<Response> {
  const started = performance.now();
  const res = await request(req.url, {
    method: req.method as "GET",
    headers: req.headers,
    body: req.body,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: flattenHeaders(res.headers),
    text,
    json: parseJson(text),
    ms: Math.round(performance.now() - started),
  };
}

/** The templated request of a step, ready to send. */
function buildRequest(spec: StepRequest, target: string, auth: TargetAuth): SentRequest {
  const url = new URL(target.replace(/\/+$/, "") + (spec.path.startsWith("/") ? spec.path : `/${spec.path}`));
  for (const [k, v] of Object.entries(spec.query ?? {})) url.searchParams.append(k, typeof v === "string" ? v : JSON.stringify(v));
  const body = spec.rawBody ?? (spec.body === undefined ? undefined : JSON.stringify(spec.body));
  const headers: Record<string, string> = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  Object.assign(headers, authHeaders(auth, spec.auth));
  for (const [k, v] of Object.entries(spec.headers ?? {})) headers[k.toLowerCase()] = typeof v === "string" ? v : JSON.stringify(v);
  return { method: spec.method, url: url.toString(), headers, ...(body === undefined ? {} : { body }) };
}

// ---------------------------------------------------------------------------------------------
// Orange references ($partnerId)

/**
 * Every Orange reference in a request body: the `id` of each `externalReference` (object or
 * list) and of each order item Orange numbered. A partner id must be none of them.
 */
export function collectOrangeRefs(value: unknown, into: Set<string>): void {
  if (Array.isArray(value)) {
    for (const item of value) collectOrangeRefs(item, into);
    return;
  }
  if (typeof value !== "object" || value === null) return;
  for (const [key, child] of Object.entries(value as Record<string, unknown>)) {
    if (key === "externalReference" || key === "orderItem") {
      for (const ref of Array.isArray(child) ? child : [child]) {
        const id = (ref as { id?: unknown } | null)?.id;
        if (typeof id === "string" && id !== "") into.add(id);
      }
    }
    collectOrangeRefs(child, into);
  }
}

// ---------------------------------------------------------------------------------------------
// Events

/** The resource schema of an event by API and type; undefined for an unknown type. */
export function eventResourceSchema(api: ReceivedEvent["api"], type: unknown, resource: unknown): SchemaName | undefined {
  if (api === "productordering") {
    return type === "completedStateNotification" || type === "failedStateNotification" ? "ProductOrderResponse" : undefined;
  }
  if (type !== "updateNotification") return undefined;
  // UC6 answers an update (it carries the update's `state`); UC5 is a partner-initiated change.
  const hasState = typeof resource === "object" && resource !== null && "state" in resource;
  return hasState ? "UserServiceUpdateResponse" : "UserServiceChange";
}

/**
 * URL, envelope, resource schema and empty nodes of one received event: the failures, as texts.
 * `offer`: the offer segment the run expects in the event URL (`mba2` | `mba2-beta`).
 */
export function checkEventEnvelope(event: ReceivedEvent, offer?: string): { check: string; expected: string; actual: string }[] {
  const failures: { check: string; expected: string; actual: string }[] = [];
  const wrongOffer = offer !== undefined && event.offer !== offer;
  if (wrongOffer) {
    failures.push({
      check: "event URL",
      expected: `POST /${offer}/${event.api}/v2/event (offer ${offer}: ORANGE_OFFER and --offer must agree)`,
      actual: `POST ${event.path} (offer ${event.offer}; the gateway answered ${event.status})`,
    });
  }
  const body = event.body as Record<string, unknown> | null;
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return [{ check: "envelope", expected: "a JSON object {id, type, time, resource}", actual: describeValue(event.body) }];
  }
  if (typeof body.id !== "string" || body.id === "") failures.push({ check: "envelope id", expected: "a non-empty string", actual: describeValue(body.id, "id" in body) });
  if (typeof body.type !== "string") failures.push({ check: "envelope type", expected: "a string", actual: describeValue(body.type, "type" in body) });
  if (typeof body.time !== "string" || !ISO_MS.test(body.time)) {
    failures.push({ check: "envelope time", expected: "an ISO 8601 UTC date-time with milliseconds", actual: describeValue(body.time, "time" in body) });
  }
  const resource = body.resource;
  if (typeof resource !== "object" || resource === null || Array.isArray(resource)) {
    failures.push({ check: "envelope resource", expected: "an object", actual: describeValue(resource, "resource" in body) });
  } else {
    const schema = eventResourceSchema(event.api, body.type, resource);
    if (schema === undefined) {
      const allowed = event.api === "productordering" ? "completedStateNotification | failedStateNotification" : "updateNotification";
      failures.push({ check: "event type", expected: allowed, actual: describeValue(body.type) });
    } else {
      const result = checkSchema(schema, resource);
      if (!result.ok) failures.push({ check: `resource schema ${schema}`, expected: result.expected, actual: result.actual });
    }
  }
  const empty = findEmptyNodes(body);
  if (empty.length > 0) failures.push({ check: "no empty nodes", expected: "no {}, [] or null", actual: empty.join(", ") });
  // The mock answers as Orange would: anything but 201 means the call itself was wrong (no or a
  // bad bearer token, no `Accept: application/json`, another Content-Type, a body that is not JSON).
  // An event under the wrong offer was answered 404 for that reason alone, said above.
  if (event.status !== 201 && !(wrongOffer && event.status === 404)) {
    failures.push({
      check: "gateway answer",
      expected: "201 (a valid bearer token from the token endpoint, Accept and Content-Type application/json)",
      actual: `${event.status} (X-OAPI-Request-Id ${event.requestId}; authorization ${event.token === undefined ? "absent" : "Bearer …"}, ` +
        `accept ${JSON.stringify(event.headers.accept ?? null)}, content-type ${JSON.stringify(event.headers["content-type"] ?? null)})`,
    });
  }
  return failures;
}

/**
 * Waits for an event at the gateway (from index `from` of `received`, then live) that
 * `accept` takes, for at most `timeoutMs`.
 */
function waitForEvent(
  gateway: MockGateway,
  from: number,
  accept: (event: ReceivedEvent) => boolean,
  timeoutMs: number,
): Promise<ReceivedEvent | undefined> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (event: ReceivedEvent | undefined) => {
      if (done) return;
      done = true;
      unsubscribe();
      clearTimeout(timer);
      resolve(event);
    };
    // Subscribe before scanning: an event arriving in between is seen by one or the other.
    const unsubscribe = gateway.subscribe((event) => {
      if (accept(event)) finish(event);
    });
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    const already = gateway.received.slice(Math.min(from, gateway.received.length)).find(accept);
    if (already) finish(already);
  });
}

// ---------------------------------------------------------------------------------------------
// Selection

function selected(scenario: Scenario, only: string[] | undefined, skip: string[] | undefined): boolean {
  const labels = [scenario.name, ...(scenario.tags ?? [])];
  if (only && only.length > 0 && !only.some((o) => labels.includes(o))) return false;
  return !(skip && skip.some((s) => labels.includes(s)));
}

function modesMatch(when: When | undefined, modes: RunOptions["modes"], provisioning: ProvisioningRun["mode"]): boolean {
  return (
    (when?.ordering === undefined || when.ordering === modes.ordering) &&
    (when?.update === undefined || when.update === modes.update) &&
    (when?.provisioning === undefined || when.provisioning === provisioning)
  );
}

/**
 * Why a scenario cannot be played in this run, if it cannot: it sets the behaviour of the mock
 * application or reads what it received, and the simulator hosts none (the target's own
 * application is behind it), or its application must report a late result and cannot reach the
 * target.
 */
export function unplayable(scenario: Scenario, provisioning: ProvisioningRun | undefined): string | undefined {
  const controls = scenario.steps.some((s) => s.app !== undefined);
  const reads = scenario.steps.some((s) => s.application !== undefined);
  if (!controls && !reads) return undefined;
  const app = provisioning?.application;
  if (app === undefined) {
    const what = controls ? "sets the behaviour of the simulator's mock application" : "reads what the simulator's mock application received";
    const where = provisioning?.applicationUrl !== undefined ? `the target's own application is behind --app-url ${provisioning.applicationUrl}` : "no mock application is hosted";
    return `it ${what}, and ${where}`;
  }
  if (!app.reports && scenario.steps.some((s) => s.app?.mode === "later")) {
    return "its mock application answers 202 and reports the result later through the target's result route: give --app-token (the target's APP_TOKEN)";
  }
  return undefined;
}

/** Selected by --only/--skip and the modes, but not playable: why. */
type Skipped = { scenario: string; reason: string };

// ---------------------------------------------------------------------------------------------
// The run

const MARK = { pass: "✓", fail: "✗", skip: "-" } as const;

interface StepRecord {
  status?: number;
  headers?: Record<string, string>;
  body?: unknown;
  event?: unknown;
  application?: CommandRecord;
}

/** What the run keeps of the mock application's deliveries across scenarios. */
interface ApplicationCursor {
  next: number;
  seen: { webhookIdOf: Map<string, string>; bodyOf: Map<string, string> };
}

class ScenarioRun {
  readonly ctx: TemplateContext;
  /** Events already taken by a step, so that two steps waiting for the same type get two. */
  readonly consumed = new Set<ReceivedEvent>();
  readonly eventsFrom: number;

  constructor(
    readonly scenario: Scenario,
    readonly options: RunOptions,
    readonly base: TemplateContext,
    readonly matchCtx: MatchContext,
    readonly orangeRefs: Set<string>,
    readonly emit: (check: CheckResult) => void,
    readonly eventCursor: { next: number },
    readonly observed: ObservedModes,
    readonly versionSeen: (headers: Record<string, string>) => void,
    readonly appCursor: ApplicationCursor,
  ) {
    this.ctx = { ...base };
    this.eventsFrom = options.gateway.received.length;
    this.deliveriesFrom = options.provisioning?.application?.deliveries().length ?? 0;
  }

  readonly deliveriesFrom: number;

  get application(): MockApplication | undefined {
    return this.options.provisioning?.application;
  }

  get provisioningMode(): ProvisioningRun["mode"] {
    return this.options.provisioning?.mode ?? "none";
  }

  line(step: Step | string, check: string, outcome: CheckResult["outcome"], expected: string, actual: string, extra: Partial<CheckResult> = {}): void {
    const stepId = typeof step === "string" ? step : step.id;
    const title = typeof step === "string" ? undefined : step.title;
    this.emit({ scenario: this.scenario.name, step: stepId, ...(title ? { title } : {}), check, outcome, expected, actual, ...extra });
  }

  result(step: Step, check: string, r: MatchResult, extra: Partial<CheckResult> = {}): boolean {
    this.line(step, check, r.ok ? "pass" : "fail", r.expected, r.actual, extra);
    return r.ok;
  }

  /** Templates `value`; a missing name becomes a skipped check line and undefined. */
  templated<T>(step: Step | string, check: string, value: T, extra: Partial<CheckResult> = {}): { ok: true; value: T } | { ok: false } {
    try {
      return { ok: true, value: template(value, this.ctx) };
    } catch (err) {
      if (!(err instanceof MissingVariable)) throw err;
      this.line(step, check, "skip", `a value for \${${err.variable}}`, "missing: an earlier step failed or did not save it", extra);
      return { ok: false };
    }
  }

  async run(): Promise<void> {
    // Every scenario starts with an application that carries commands out: a scenario that
    // failed half-way must not leave it refusing or down for the next one.
    this.application?.setBehaviour({ mode: "ok" });
    for (const [name, raw] of Object.entries(this.scenario.vars ?? {})) {
      const value = this.templated("vars", `var ${name}`, raw);
      if (!value.ok) return;
      this.ctx[name] = value.value;
    }
    for (const step of this.scenario.steps) {
      if (!modesMatch(step.when, this.options.modes, this.provisioningMode)) continue;
      await this.runStep(step);
    }
    this.application?.setBehaviour({ mode: "ok" });
    this.checkEvents();
    this.checkDeliveries();
  }

  async runStep(step: Step): Promise<void> {
    if (step.waitMs) await delay(step.waitMs);
    if (step.app && !this.setApp(step, step.app)) return;
    const record: StepRecord = {};
    let failed = false;
    let curl: string | undefined;
    let ms: number | undefined;
    // A step with a request waits for events it caused; one without, for any since the scenario began.
    let eventsFrom = this.eventsFrom;

    if (step.request) {
      const spec = this.templated(step, "request", step.request);
      if (!spec.ok) return;
      const sent = buildRequest(spec.value, this.options.target, this.options.auth);
      curl = toCurl(sent, this.options.auth, this.options.showSecrets);
      const sentJson = sent.body === undefined ? undefined : parseJson(sent.body);
      if (sentJson?.ok) collectOrangeRefs(sentJson.value, this.orangeRefs);
      eventsFrom = this.options.gateway.received.length;
      let res: Response;
      try {
        res = await send(sent, this.options.requestTimeoutMs);
      } catch (err) {
        const error = err as Error;
        const timedOut = error.name === "TimeoutError" || error.name === "AbortError" || /timeout/i.test(error.name);
        const actual = timedOut ? `no answer within ${this.options.requestTimeoutMs} ms` : `${error.message}${errorCause(error)}`;
        this.line(step, "request", "fail", `an HTTP answer within ${this.options.requestTimeoutMs} ms`, actual, { curl });
        return;
      }
      ms = res.ms;
      this.observe(sent, res);
      Object.assign(record, { status: res.status, headers: res.headers, body: res.json.ok ? res.json.value : res.text });
      // Visible to templates of this step's own expectations and event (e.g. ${order.body.id}).
      this.ctx[step.id] = record;
      failed = !this.checkResponse(step, res, { curl, ms });
    }

    if (step.event) {
      const event = await this.checkEvent(step, step.event, eventsFrom, { ...(curl ? { curl } : {}), ...(ms !== undefined ? { ms } : {}) });
      if (event === undefined) failed = true;
      else record.event = event.body;
    }

    if (step.application) {
      const command = await this.checkApplication(step, step.application, curl ? { curl } : {});
      if (command === undefined) failed = true;
      else {
        record.application = command;
        this.ctx[step.id] = { ...(this.ctx[step.id] as StepRecord | undefined), application: command };
      }
    }

    // A failed step saves nothing: the steps that need its values are reported as skipped.
    if (failed) {
      delete this.ctx[step.id];
      return;
    }
    for (const [name, path] of Object.entries(step.save ?? {})) {
      const { found, value } = resolvePath(record, path);
      if (found) this.ctx[name] = value;
      else this.line(step, `save ${name}`, "fail", `a value at ${path}`, "(absent)", curl ? { curl } : {});
    }
  }

  /** Counts sync and async answers of productOrder and userService/update, for the mode hint. */
  observe(sent: SentRequest, res: Response): void {
    this.versionSeen(res.headers);
    if (sent.method !== "POST" || res.status < 200 || res.status >= 300 || !res.json.ok) return;
    const path = new URL(sent.url).pathname;
    const api = path.endsWith(ORDER_PATH) ? "ordering" : path.endsWith(UPDATE_PATH) ? "update" : undefined;
    const state = (res.json.value as { state?: unknown } | null)?.state;
    if (api === undefined) return;
    if (state === "acknowledged") this.observed[api].async++;
    else if (state === "completed" || state === "failed") this.observed[api].sync++;
  }

  /** The response checks of a step; false when the step failed (no answer or wrong status). */
  checkResponse(step: Step, res: Response, extra: { curl: string; ms: number }): boolean {
    const expect = step.expect ?? {};
    const body = res.json.ok ? res.json.value : undefined;
    let ok = true;

    if (expect.status !== undefined) {
      const accepted = Array.isArray(expect.status) ? expect.status : [expect.status];
      const pass = accepted.includes(res.status);
      this.result(step, `status ${accepted.join("|")}`, { ok: pass, expected: accepted.join(" or "), actual: `${res.status} ${describeValue(body ?? res.text)}` }, extra);
      ok = pass;
    }
    for (const [name, matcher] of Object.entries(expect.headers ?? {})) {
      const m = this.templated(step, `header ${name}`, matcher, extra);
      if (!m.ok) continue;
      const key = name.toLowerCase();
      this.result(step, `header ${key}`, matchValue(m.value, res.headers[key], key in res.headers, this.matchCtx), extra);
    }
    const schema = expect.schema ?? (expect.error !== undefined ? "ErrorBody" : undefined);
    if (schema !== undefined) this.result(step, `schema ${schema}`, checkSchema(schema, body, res.json.ok), extra);
    if (expect.error !== undefined) {
      const m = this.templated(step, "error", expect.error, extra);
      if (m.ok) this.result(step, "error", matchValue(m.value, body, res.json.ok, this.matchCtx), extra);
    }
    for (const [path, matcher] of Object.entries(expect.json ?? {})) {
      const m = this.templated(step, `json ${path}`, matcher, extra);
      if (m.ok) this.result(step, `json ${path}`, res.json.ok ? matchPath(body, path, m.value, this.matchCtx) : { ok: false, expected: "a JSON body", actual: describeValue(res.text) }, extra);
    }
    if (res.json.ok && expect.noEmptyNodes !== false) {
      const empty = findEmptyNodes(body);
      this.result(step, "no empty nodes", { ok: empty.length === 0, expected: "no {}, [] or null", actual: empty.length ? empty.join(", ") : "none" }, extra);
    }
    return ok;
  }

  /** Waits for the step's event and checks it; undefined when it did not come. */
  async checkEvent(step: Step, raw: StepEvent, from: number, extra: Partial<CheckResult>): Promise<ReceivedEvent | undefined> {
    const spec = this.templated(step, `event ${raw.type}`, { api: raw.api, type: raw.type, where: raw.where ?? {}, timeoutMs: raw.timeoutMs }, extra);
    if (!spec.ok) return undefined;
    const { api, type, where } = spec.value;
    const timeoutMs = this.timeout(step, `event ${raw.type}`, spec.value.timeoutMs, extra);
    if (timeoutMs === undefined) return undefined;
    const accept = (e: ReceivedEvent): boolean =>
      !this.consumed.has(e) &&
      e.api === api &&
      resolvePath(e.body, "type").value === type &&
      Object.entries(where).every(([path, matcher]) => matchPath(e.body, path, matcher, this.matchCtx).ok);
    const started = Date.now();
    const event = await waitForEvent(this.options.gateway, from, accept, timeoutMs);
    const selector = `${api} ${type}${Object.keys(where).length ? ` where ${describeValue(where)}` : ""}`;
    const waited = { ...extra, ms: Date.now() - started };
    if (event === undefined) {
      const seen = this.options.gateway.received.slice(from).map((e) => `${e.api} ${String(resolvePath(e.body, "type").value)}`);
      this.line(step, `event ${type}`, "fail", `${selector} within ${timeoutMs} ms`, seen.length ? `only: ${seen.join(", ")}` : "no event", waited);
      return undefined;
    }
    this.consumed.add(event);
    // The checks of the event's content carry the curl of the request that caused it, not its time.
    const { ms: _ms, ...content } = extra;
    // `${<step>.event.…}` for the checks below and later steps.
    this.line(step, `event ${type}`, "pass", selector, `${api} ${type}`, waited);
    this.ctx[step.id] = { ...(this.ctx[step.id] as StepRecord | undefined), event: event.body };
    if (raw.schema !== undefined) {
      const resource = resolvePath(event.body, "resource");
      this.result(step, `event schema ${raw.schema}`, checkSchema(raw.schema, resource.value, resource.found), content);
    }
    for (const [path, matcher] of Object.entries(raw.json ?? {})) {
      const m = this.templated(step, `event json ${path}`, matcher, content);
      if (m.ok) this.result(step, `event json ${path}`, matchPath(event.body, path, m.value, this.matchCtx), content);
    }
    return event;
  }

  /** A step's `timeoutMs` once templated (default --event-timeout); undefined, with a failed check, when it is no positive integer. */
  timeout(step: Step, check: string, value: unknown, extra: Partial<CheckResult>): number | undefined {
    if (value === undefined) return this.options.eventTimeoutMs;
    if (typeof value === "number" && Number.isInteger(value) && value > 0) return value;
    this.line(step, `${check} timeoutMs`, "fail", "a positive integer number of milliseconds", describeValue(value), extra);
    return undefined;
  }

  /** The `app:` of a step: the mock application's behaviour from now on; false (a failed check) when refused. */
  setApp(step: Step, raw: StepApp): boolean {
    const spec = this.templated(step, `app ${raw.mode}`, raw);
    if (!spec.ok) return false;
    const { delayMs, ...rest } = spec.value;
    const behaviour = { ...rest, ...(delayMs === undefined ? {} : { delayMs: typeof delayMs === "string" && /^\d+$/.test(delayMs) ? Number(delayMs) : delayMs }) };
    try {
      this.application!.setBehaviour(behaviour as Parameters<MockApplication["setBehaviour"]>[0]);
      return true;
    } catch (err) {
      this.line(step, `app ${raw.mode}`, "fail", `the mock application set to ${describeValue(behaviour)}`, (err as Error).message);
      return false;
    }
  }

  /**
   * Waits for the mock application's record of a request that `where` (and `type`) select and
   * whose `json` matchers pass, then checks it: found, every delivery signed, one webhook-id and
   * one body, and each matcher. Undefined when no such command came within the timeout.
   */
  async checkApplication(step: Step, raw: StepApplication, extra: Partial<CheckResult>): Promise<CommandRecord | undefined> {
    const app = this.application!;
    const label = `application ${raw.type ?? "command"}`;
    const spec = this.templated(step, label, { type: raw.type, where: raw.where, json: raw.json ?? {}, timeoutMs: raw.timeoutMs }, extra);
    if (!spec.ok) return undefined;
    const { type, where, json } = spec.value;
    const timeoutMs = this.timeout(step, label, spec.value.timeoutMs, extra);
    if (timeoutMs === undefined) return undefined;
    const selects = (r: CommandRecord) => (type === undefined || r.type === type) && Object.entries(where).every(([path, m]) => matchPath(r, path, m, this.matchCtx).ok);
    const passes = (r: CommandRecord) => Object.entries(json).every(([path, m]) => matchPath(r, path, m, this.matchCtx).ok);
    const started = Date.now();
    let record: CommandRecord | undefined;
    for (;;) {
      const candidates = app.records().filter(selects);
      record = candidates.find(passes) ?? candidates[0];
      if ((record !== undefined && passes(record)) || Date.now() - started >= timeoutMs) break;
      await delay(50);
    }
    const selector = `${type ?? "a command"}${Object.keys(where).length ? ` where ${describeValue(where)}` : ""}`;
    const waited = { ...extra, ms: Date.now() - started };
    if (record === undefined) {
      const seen = commandRecords(app.deliveries().slice(this.deliveriesFrom)).map((r) => `${r.type ?? "?"} of ${r.requestId ?? "?"}`);
      this.line(step, label, "fail", `${selector} within ${timeoutMs} ms`, seen.length ? `only: ${seen.join(", ")}` : "no command", waited);
      return undefined;
    }
    this.line(step, label, "pass", selector, `${record.type ?? "?"}, webhook-id ${record.webhookId ?? "(none)"}, ${record.deliveries} delivery(ies)`, waited);
    this.line(
      step,
      "application signed",
      record.signed ? "pass" : "fail",
      "every delivery signed with the shared secret (Standard Webhooks), verified by the application",
      record.signed ? `${record.deliveries} delivery(ies) verified` : `refused by the application: answers ${record.statuses.join(", ")}`,
      extra,
    );
    const oneId = record.webhookIds.length === 1 && record.sameBody;
    this.line(
      step,
      "application one webhook-id",
      oneId ? "pass" : "fail",
      "one webhook-id for the request, the same body on every delivery",
      `webhook-id(s) ${record.webhookIds.join(", ") || "(none)"}${record.sameBody ? "" : ", with different bodies"}`,
      extra,
    );
    for (const [path, m] of Object.entries(json)) this.result(step, `application json ${path}`, matchPath(record, path, m, this.matchCtx), extra);
    return record;
  }

  /**
   * Every delivery the mock application received since the previous scenario's check: signed,
   * and, across the run, one webhook-id per request and one body per webhook-id.
   */
  checkDeliveries(): void {
    const app = this.application;
    if (app === undefined) return;
    const all = app.deliveries();
    const fresh = all.slice(Math.min(this.appCursor.next, all.length));
    this.appCursor.next = all.length;
    if (fresh.length === 0) return;
    const failures = deliveryFailures(fresh, this.appCursor.seen);
    for (const f of failures) this.line("(application)", f.check, "fail", f.expected, f.actual);
    if (failures.length === 0) {
      this.line(
        "(application)",
        "every command signed, one webhook-id per request",
        "pass",
        "signatures the application verifies; one webhook-id per request and one body per webhook-id, retries included",
        `${fresh.length} delivery(ies) OK`,
      );
    }
  }

  /**
   * Envelope and resource schema of every event received since the previous scenario's check
   * (so a late event of the previous scenario is still checked, here).
   */
  checkEvents(): void {
    const received = this.options.gateway.received;
    const events = received.slice(Math.min(this.eventCursor.next, received.length));
    this.eventCursor.next = received.length;
    if (events.length === 0) return;
    let failures = 0;
    for (const event of events) {
      const label = `${event.api} ${String(resolvePath(event.body, "id").value ?? "?")}`;
      for (const f of checkEventEnvelope(event, this.options.offer)) {
        failures++;
        this.line("(events)", `${label} ${f.check}`, "fail", f.expected, f.actual);
      }
    }
    if (failures === 0) {
      this.line(
        "(events)",
        "envelope and schema of every event",
        "pass",
        `on /${this.options.offer}/…/v2/event: id, type, time, resource and its schema`,
        `${events.length} event(s) OK`,
      );
    }
  }
}

const ORDER_PATH = "/productordering/v2/productOrder";
const UPDATE_PATH = "/userservice/v2/userService/update";

/**
 * The line telling which --ordering/--update to pass when every answer of an API contradicts the
 * declared mode (a target mixing both is left to the failed checks).
 */
export function modeHint(declared: RunOptions["modes"], observed: ObservedModes): string | undefined {
  const wrong: { option: string; api: string; actual: Mode; count: number }[] = [];
  for (const [option, api] of [["ordering", "productOrder"], ["update", "userService/update"]] as const) {
    const seen = observed[option];
    const actual: Mode | undefined = seen.sync > 0 && seen.async === 0 ? "sync" : seen.async > 0 && seen.sync === 0 ? "async" : undefined;
    if (actual !== undefined && actual !== declared[option]) wrong.push({ option, api, actual, count: seen[actual] });
  }
  if (wrong.length === 0) return undefined;
  const said = wrong.map(
    (w) => `${w.api} ${w.actual === "async" ? '"acknowledged"' : '"completed"/"failed"'} (${w.count} answer(s)) although the run declared --${w.option} ${declared[w.option as "ordering" | "update"]}`,
  );
  return `hint: the target answered ${said.join(", and ")}: pass ${wrong.map((w) => `--${w.option} ${w.actual}`).join(" ")}`;
}

/** Headers and JSON fields where a server may state its version. */
const VERSION_HEADERS = ["x-version", "x-app-version", "x-api-version", "api-version", "x-build-version", "x-service-version"];
const VERSION_FIELDS = ["version", "build.version", "app.version", "info.version", "service.version", "appVersion", "buildVersion"];
const PROBE_PATHS = ["/ping", "/health/ready", "/health/live", "/health"];

function versionFromHeaders(headers: Record<string, string>): { version: string; header: string } | undefined {
  for (const header of VERSION_HEADERS) {
    const value = headers[header]?.trim();
    if (value) return { version: value, header };
  }
  return undefined;
}

/** The target's version from GET /ping and /health* (headers or body), if it states one. */
async function probeVersion(options: RunOptions): Promise<RunReport["targetVersion"] | undefined> {
  for (const path of PROBE_PATHS) {
    const sent = buildRequest({ method: "GET", path, auth: "orange" }, options.target, options.auth);
    let res: Response;
    try {
      res = await send(sent, Math.min(options.requestTimeoutMs, 3000));
    } catch {
      return undefined; // not reachable: the scenarios will say so
    }
    const fromHeader = versionFromHeaders(res.headers);
    if (fromHeader) return { version: fromHeader.version, source: `GET ${path}, header ${fromHeader.header}` };
    if (res.status !== 200 || !res.json.ok) continue;
    for (const field of VERSION_FIELDS) {
      const { found, value } = resolvePath(res.json.value, field);
      if (found && (typeof value === "string" || typeof value === "number") && String(value).trim() !== "") {
        return { version: String(value), source: `GET ${path}, body ${field}` };
      }
    }
  }
  return undefined;
}

function summarize(checks: CheckResult[], scenarios: number): RunReport["summary"] {
  const count = (o: CheckResult["outcome"]) => checks.filter((c) => c.outcome === o).length;
  return { scenarios, checks: checks.length, passed: count("pass"), failed: count("fail"), skipped: count("skip") };
}

/** `${provisioning.…}` of the templates (FORMAT.md). */
function provisioningContext(options: RunOptions): Record<string, unknown> {
  const p = options.provisioning;
  if (p?.mode !== "webhook") return { mode: "none" };
  const syncDeadlineMs = p.syncDeadlineMs ?? DEFAULT_SYNC_DEADLINE_MS;
  const late = pastDeadlineMs(syncDeadlineMs);
  return { mode: "webhook", syncDeadlineMs, pastDeadlineMs: late, lateTimeoutMs: late + options.eventTimeoutMs };
}

/** Plays the selected scenarios in order against the target and reports every check. */
export async function runScenarios(options: RunOptions): Promise<RunReport> {
  const started = new Date();
  // Before the probe: an event arriving meanwhile is this run's and gets checked.
  const eventCursor = { next: options.gateway.received.length };
  let targetVersion = options.knownVersion ?? (await probeVersion(options));
  const versionSeen = (headers: Record<string, string>) => {
    if (targetVersion !== undefined) return;
    const found = versionFromHeaders(headers);
    if (found) targetVersion = { version: found.version, source: `answers' header ${found.header}` };
  };
  const observed: ObservedModes = { ordering: { sync: 0, async: 0 }, update: { sync: 0, async: 0 } };
  const scenarioSummaries: ScenarioSummary[] = [];
  const checks: CheckResult[] = [];
  const orangeRefs = new Set<string>();
  const matchCtx: MatchContext = { orangeRefs };
  const base: TemplateContext = {
    run: randomBytes(4).readUInt32BE(0).toString(36).padStart(6, "0").slice(-6),
    offer: options.offer,
    offers: options.offers,
    modes: options.modes,
    provisioning: provisioningContext(options),
  };
  const emit = (check: CheckResult) => {
    checks.push(check);
    const detail = check.outcome === "pass" ? "" : ` — expected ${check.expected}, got ${check.actual}`;
    options.log?.(`${MARK[check.outcome]} ${check.scenario} › ${check.step} › ${check.check}${detail}`);
  };
  let played = 0;
  const provisioning = options.provisioning?.mode ?? "none";
  const notPlayed: Skipped[] = [];
  const appCursor: ApplicationCursor = {
    next: options.provisioning?.application?.deliveries().length ?? 0,
    seen: { webhookIdOf: new Map(), bodyOf: new Map() },
  };
  for (const scenario of options.scenarios) {
    if (!selected(scenario, options.only, options.skip)) continue;
    if (!modesMatch(scenario.when, options.modes, provisioning)) {
      options.log?.(`· ${scenario.name}: not for these modes (${describeValue(scenario.when)})`);
      continue;
    }
    const why = unplayable(scenario, options.provisioning);
    if (why !== undefined) {
      notPlayed.push({ scenario: scenario.name, reason: why });
      options.log?.(`· ${scenario.name}: not played: ${why}`);
      continue;
    }
    played++;
    const from = checks.length;
    const scenarioStarted = performance.now();
    await new ScenarioRun(scenario, options, base, matchCtx, orangeRefs, emit, eventCursor, observed, versionSeen, appCursor).run();
    const own = summarize(checks.slice(from), 1);
    const durationMs = Math.round(performance.now() - scenarioStarted);
    scenarioSummaries.push({ name: scenario.name, ...(scenario.title ? { title: scenario.title } : {}), durationMs, summary: own });
    const ok = own.failed === 0 && own.skipped === 0;
    options.log?.(
      `${ok ? MARK.pass : MARK.fail} ${scenario.name}: ${own.passed}/${own.checks} checks passed` +
        `${own.failed > 0 ? `, ${own.failed} failed` : ""}${own.skipped > 0 ? `, ${own.skipped} skipped` : ""} ` +
        `(${durationMs} ms)`,
    );
  }
  const finished = new Date();
  const hint = modeHint(options.modes, observed);
  return {
    target: options.target,
    targetVersion: targetVersion ?? {
      source: `not stated by the target (GET ${PROBE_PATHS.join(", ")} and every answer's headers looked at)`,
    },
    modes: options.modes,
    provisioning: {
      mode: provisioning,
      ...(options.provisioning?.application
        ? { application: `the simulator's mock application, ${options.provisioning.application.webhookUrl}` }
        : options.provisioning?.applicationUrl !== undefined
          ? { application: `the target's own, ${options.provisioning.applicationUrl}` }
          : {}),
    },
    offer: options.offer,
    offers: options.offers,
    startedAt: started.toISOString(),
    finishedAt: finished.toISOString(),
    durationMs: finished.getTime() - started.getTime(),
    scenarios: scenarioSummaries,
    notPlayed,
    checks,
    summary: summarize(checks, played),
    observedModes: observed,
    ...(hint === undefined ? {} : { modeHint: hint }),
  };
}
