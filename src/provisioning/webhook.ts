/**
 * The Provisioner of PROVISIONING_MODE=webhook: every command is one POST to the partner's
 * application, signed as the Standard Webhooks specification says (https://www.standardwebhooks.com),
 * and its answer classified for the command's lifecycle (see ProvisioningAnswer in
 * src/domain/ports.ts). Retries, ordering and what a refusal means belong to the caller.
 *
 * Invariants: `send` never throws for anything the application does (or fails to do); the body
 * is sent byte for byte as prepared; every configured secret signs every call (one `v1,` entry
 * each), so the application can move to a new secret without a gap; no secret, nor a signature,
 * reaches an error, an answer or a log line.
 */
import { createHmac, createSecretKey, type KeyObject } from "node:crypto";
import { performance } from "node:perf_hooks";
export { parseWebhookSecrets } from "../lib/webhook-secrets.js";
import { webhookSecretBytes } from "../lib/webhook-secrets.js";
import type { Dispatcher } from "undici";
import { z } from "zod";
import type { AppLicenceData, Provisioner, ProvisioningAnswer, ProvisioningCall } from "../domain/ports.js";
import { OutboundCallError, createOutboundAgent, httpPost, parseRetryAfter, safeUrl, type EventLogger } from "../events/http.js";
import { systemClock, type Clock } from "../lib/clock.js";
import type { JsonObject } from "../lib/json.js";
import { describeIssues, formatPath } from "../orange/validation.js";

export type WebhookAnswer = ProvisioningAnswer & { responseBody?: string; durationMs: number };

export interface WebhookProvisioner extends Provisioner {
  send(call: ProvisioningCall, signal?: AbortSignal): Promise<WebhookAnswer>;
  /** Closes the Agent the provisioner created, if any. */
  close(): Promise<void>;
}

export interface WebhookProvisionerOptions {
  /** The application's endpoint, http or https. */
  url: string;
  /** `whsec_<base64>` secrets, as parseWebhookSecrets returns them; each one signs every call. */
  secrets: readonly string[];
  /** Deadline of one call: connect, headers and the whole body. */
  timeoutMs: number;
  logger?: EventLogger;
  /** The `webhook-timestamp` and `Retry-After` dates are read from it. */
  clock?: Clock;
  /** undici dispatcher to use; by default the provisioner owns a keep-alive Agent. */
  dispatcher?: Dispatcher;
  /** Sockets to the application (own Agent only); default 16. */
  connections?: number;
  /** A `Retry-After` longer than this is cut to it (default 1 h). */
  maxRetryAfterMs?: number;
  /** Largest 2xx answer read for its licences (default 16 MiB); a larger one is rejected. */
  maxAnswerBytes?: number;
  /** Characters of the answer body kept in `responseBody` for operators (default 4096). */
  maxResponseBodyChars?: number;
  /** Told of every call as it ends (metrics): how it was classified and how long it took. */
  onAttempt?: (outcome: ProvisioningAnswer["outcome"], durationMs: number) => void;
}

const MAX_REASON_CHARS = 1000;
const USER_AGENT = "orange-partner-server (Standard Webhooks)";

// What a 2xx answer may tell about the licences. The rules are those of Orange's UserService
// (the data ends up in Orange's answers and events): a resource has a type, a login's key is
// `login` or `organizationCode`, characteristics are name/value strings. `null` reads as absent.
const text = (max: number) =>
  z.string().min(1, "must not be empty").max(max, `must be at most ${max} characters long`);
const CharacteristicSchema = z.object({ name: text(256), value: z.string().max(4096, "must be at most 4096 characters long") });
const LicenceSchema = z.object({
  id: text(256),
  realizingResource: z
    .looseObject({ type: text(64), characteristic: z.array(CharacteristicSchema).max(100).nullish() })
    .nullish(),
  login: z.object({ key: z.enum(["login", "organizationCode"]), value: text(1024) }).nullish(),
  serviceCharacteristic: z.array(CharacteristicSchema).min(1).max(100).nullish(),
});
const AnswerSchema = z
  .looseObject({ licences: z.array(LicenceSchema).nullish() })
  .superRefine((answer, ctx) => {
    const seen = new Map<string, number>();
    answer.licences?.forEach((licence, i) => {
      const first = seen.get(licence.id);
      if (first !== undefined) {
        ctx.addIssue({ code: "custom", path: ["licences", i, "id"], message: `must be unique (licences[${first}] has the same id)` });
      } else seen.set(licence.id, i);
    });
  });

// PostgreSQL's jsonb (where the licences are stored) holds neither; refused here, the command
// would otherwise fail at every attempt to store its result.
// eslint-disable-next-line no-control-regex -- NUL is precisely what is looked for
const UNSTORABLE = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Text PostgreSQL can store: NULs and lone surrogates (a cut may split a pair) become U+FFFD. */
function storable(text: string): string {
  return text.replace(new RegExp(UNSTORABLE.source, "g"), "\uFFFD");
}

/** The path of the first string (key or value) PostgreSQL cannot store, if any. */
function unstorableAt(value: unknown, path: PropertyKey[]): PropertyKey[] | undefined {
  if (typeof value === "string") return UNSTORABLE.test(value) ? path : undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = unstorableAt(value[i], [...path, i]);
      if (found) return found;
    }
  } else if (typeof value === "object" && value !== null) {
    for (const [key, inner] of Object.entries(value)) {
      if (UNSTORABLE.test(key)) return [...path, key];
      const found = unstorableAt(inner, [...path, key]);
      if (found) return found;
    }
  }
  return undefined;
}

export type ParsedLicences = { licences: AppLicenceData[] } | { error: string };

/**
 * What the application tells about the licences, read from a JSON value `{ "licences": [...] }`
 * (a 2xx answer's body, or the body of the result route): the licences, or an error naming the
 * field and the rule.
 */
export function readAppLicences(json: unknown): ParsedLicences {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return { error: `the body must be a JSON object such as {"licences": [...]} (got ${Array.isArray(json) ? "an array" : JSON.stringify(json)})` };
  }
  const parsed = AnswerSchema.safeParse(json, { reportInput: true });
  if (!parsed.success) return { error: describeIssues(parsed.error.issues, "body").description };
  const unstorable = unstorableAt(parsed.data.licences ?? [], ["licences"]);
  if (unstorable !== undefined) return { error: `${formatPath(unstorable)} must not contain a NUL character or a lone UTF-16 surrogate` };
  return {
    licences: (parsed.data.licences ?? []).map((l) => {
      const licence: AppLicenceData = { id: l.id };
      if (l.realizingResource) {
        const { characteristic, ...rest } = l.realizingResource;
        licence.realizingResource = (characteristic ? { ...rest, characteristic } : rest) as JsonObject;
      }
      if (l.login) licence.login = { key: l.login.key, value: l.login.value };
      if (l.serviceCharacteristic) licence.serviceCharacteristic = l.serviceCharacteristic.map(({ name, value }) => ({ name, value }));
      return licence;
    }),
  };
}

function readLicences(body: string): ParsedLicences {
  if (body.trim() === "") return { licences: [] };
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return { error: "the answer's body is not JSON (expected nothing, or {\"licences\": [...]})" };
  }
  const read = readAppLicences(json);
  return "error" in read ? { error: `the answer's body breaks the contract: ${read.error}` } : read;
}

function refusalReason(body: string, status: number): string {
  let reason: unknown;
  try {
    reason = (JSON.parse(body) as { reason?: unknown } | null)?.reason;
  } catch {
    reason = undefined;
  }
  if (typeof reason === "string" && reason.trim() !== "") {
    const trimmed = reason.trim();
    return storable(trimmed.length > MAX_REASON_CHARS ? `${trimmed.slice(0, MAX_REASON_CHARS - 1)}…` : trimmed);
  }
  return `the partner's application refused the command (HTTP ${status}) without giving a reason`;
}

/** Short hints for the answers an operator can fix on one side or the other. */
function rejectedError(status: number): string {
  if (status === 401 || status === 403) return `HTTP ${status}: the application did not accept the signature (do both sides hold the same webhook secret?)`;
  if (status === 404 || status === 405) return `HTTP ${status}: is the application's webhook URL right?`;
  if (status >= 300 && status < 400) return `HTTP ${status}: redirects are not followed, configure the application's final URL`;
  return `HTTP ${status}`;
}

/**
 * The HMAC key of a `whsec_<base64>` secret (parseWebhookSecrets checked its form): the bytes its
 * base64 stands for, made a KeyObject once. Given the bytes, createHmac makes one on every call:
 * 38 µs a signature instead of 9 (Node 24, a 1.5 KB body).
 */
function signingKey(secret: string): KeyObject {
  const key = webhookSecretBytes(secret);
  if (key.length === 0) throw new Error("a webhook secret must not be empty");
  return createSecretKey(key);
}

/**
 * One `v1,` signature of the specification: HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>`,
 * base64. The `standardwebhooks` package signs the same bytes (the tests check each signature with
 * its `verify`), in JavaScript: node:crypto's HMAC costs a fraction of it, which shows on a big
 * order's body of megabytes and on every small one under load.
 */
function sign(key: KeyObject, id: string, at: Date, body: string): string {
  return `v1,${createHmac("sha256", key).update(`${id}.${Math.floor(at.getTime() / 1000)}.${body}`).digest("base64")}`;
}

export function createWebhookProvisioner(options: WebhookProvisionerOptions): WebhookProvisioner {
  let url: URL;
  try {
    url = new URL(options.url);
  } catch {
    throw new Error(`the application's webhook URL is not a valid URL: ${safeUrl(options.url)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`the application's webhook URL must be http or https (got ${url.protocol})`);
  }
  if (options.secrets.length === 0) throw new Error("the webhook provisioner needs at least one secret");
  const keys = options.secrets.map(signingKey);
  const target = url.toString();
  const where = safeUrl(target);
  const timeoutMs = options.timeoutMs;
  const clock = options.clock ?? systemClock;
  const logger = options.logger;
  const maxRetryAfterMs = options.maxRetryAfterMs ?? 3_600_000;
  const maxAnswerBytes = options.maxAnswerBytes ?? 16 * 1024 * 1024;
  const maxBodyChars = options.maxResponseBodyChars ?? 4096;
  const ownAgent = options.dispatcher
    ? undefined
    : createOutboundAgent({ timeoutMs, ...(options.connections ? { connections: options.connections } : {}) });
  const dispatcher: Dispatcher = options.dispatcher ?? (ownAgent as Dispatcher);

  function classify(status: number, body: string, truncated: boolean, retryAfter: string | string[] | undefined): ProvisioningAnswer {
    if (status === 202) return { outcome: "accepted", status };
    if (status >= 200 && status <= 299) {
      if (truncated) return { outcome: "rejected", status, error: `the answer's body is larger than ${maxAnswerBytes} bytes` };
      const parsed = readLicences(body);
      return "error" in parsed ? { outcome: "rejected", status, error: parsed.error } : { outcome: "done", status, licences: parsed.licences };
    }
    if (status === 409 || status === 422) return { outcome: "refused", status, reason: refusalReason(body, status) };
    if (status >= 500 || status === 408 || status === 429) {
      const answer: ProvisioningAnswer = { outcome: "retry", status, error: `HTTP ${status}` };
      const after = parseRetryAfter(retryAfter, clock.now().getTime());
      if (after !== undefined) answer.retryAfterMs = Math.min(after, maxRetryAfterMs);
      return answer;
    }
    return { outcome: "rejected", status, error: rejectedError(status) };
  }

  function log(call: ProvisioningCall, answer: WebhookAnswer): void {
    if (!logger) return;
    const fields = {
      commandId: call.id,
      commandType: call.type,
      url: where,
      outcome: answer.outcome,
      status: answer.status,
      durationMs: answer.durationMs,
      ...("error" in answer ? { error: answer.error } : {}),
      ...("reason" in answer ? { reason: answer.reason } : {}),
    };
    if (answer.outcome === "done" || answer.outcome === "accepted" || answer.outcome === "refused") {
      logger.info(fields, "partner application answered");
    } else {
      logger.warn(fields, "partner application did not carry the command out");
    }
  }

  return {
    async send(call, signal) {
      const started = performance.now();
      // Whole seconds: the header and the signed content must carry the same value.
      const at = new Date(Math.floor(clock.now().getTime() / 1000) * 1000);
      const headers: Record<string, string> = {
        "content-type": "application/json",
        accept: "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": call.id,
        "webhook-timestamp": String(at.getTime() / 1000),
        "webhook-signature": keys.map((key) => sign(key, call.id, at, call.body)).join(" "),
      };
      let answer: ProvisioningAnswer;
      let responseBody: string | undefined;
      try {
        const res = await httpPost(dispatcher, target, {
          headers,
          body: call.body,
          timeoutMs,
          ...(signal ? { signal } : {}),
          maxBodyBytes: maxAnswerBytes,
        });
        answer = classify(res.status, res.text, res.truncated, res.headers["retry-after"]);
        if (res.text !== "") responseBody = storable(res.text.length > maxBodyChars ? res.text.slice(0, maxBodyChars) : res.text);
      } catch (err) {
        // A caller's abort (the worker stopping) is no verdict on the application: try again later.
        answer = { outcome: "retry", error: err instanceof OutboundCallError ? err.message : "request failed" };
      }
      const result: WebhookAnswer = {
        ...answer,
        ...(responseBody === undefined ? {} : { responseBody }),
        durationMs: Math.round(performance.now() - started),
      };
      log(call, result);
      options.onAttempt?.(result.outcome, result.durationMs);
      return result;
    },

    async close() {
      await ownAgent?.close();
    },
  };
}
