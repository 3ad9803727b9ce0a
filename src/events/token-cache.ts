/**
 * OAuth 2.0 client-credentials token cache for Orange's gateway (contract section 6), modelled
 * on the Azure SDK token cycler:
 *
 * - a token is reused until `refreshAheadMs` before it expires: one token request per token
 *   lifetime, whatever the call rate;
 * - inside that window callers keep getting the still-valid token while one background refresh
 *   runs (after a failed one, the next waits `retry.maxMs`); without a valid token callers wait
 *   for the refresh;
 * - at most one token request is in flight; every caller shares it (single flight);
 * - a failed refresh leaves the cache as it was (the next call tries again) and is retried with
 *   bounded exponential backoff and jitter when the failure is transient (network, timeout,
 *   5xx, 408, 429);
 * - `invalidate(token)` drops the token only if it is still the cached one, so several 401s
 *   on the same token cause a single refresh;
 * - a token refused right after a refused one (Orange's identity service is failing, not our
 *   token) is kept, not replaced at once: the next token is requested only once a hold has
 *   passed, one per round, the hold doubling each round up to a cap (`incidentBackoff`); any call
 *   Orange accepts (`accepted(token)`) ends the incident. So an identity incident at Orange
 *   costs one token request per round, whatever the number of deliveries failing meanwhile;
 * - errors and logs never carry the client secret or the Authorization header.
 */
import type { Dispatcher } from "undici";
import { z } from "zod";
import { systemClock, type Clock } from "../lib/clock.js";
import {
  OutboundCallError,
  createOutboundAgent,
  defaultSleep,
  headerValue,
  httpPost,
  parseRetryAfter,
  safeUrl,
  type EventLogger,
  type Sleep,
} from "./http.js";

export interface TokenRetryOptions {
  /** Total attempts per refresh, first one included (≥ 1). */
  attempts: number;
  /** Backoff before the second attempt; doubles each time. */
  baseMs: number;
  /** Cap on one backoff (and on a Retry-After from the token endpoint). */
  maxMs: number;
}

/** Spacing of token requests while Orange refuses freshly obtained tokens (HTTP 401). */
export interface IncidentBackoff {
  /** Hold after the first refused fresh token; doubles each round. */
  baseMs: number;
  /** Cap of one hold. */
  maxMs: number;
}

export interface TokenCacheOptions {
  tokenUrl: string;
  clientId: string;
  clientSecret: string;
  /** undici dispatcher to use; by default the cache owns an Agent built from `timeoutMs`. */
  dispatcher?: Dispatcher;
  clock?: Clock;
  /** How long before expiry a new token is fetched (default 60 s; at most half the lifetime). */
  refreshAheadMs?: number;
  /** Deadline of one token request (default 10 s). */
  timeoutMs?: number;
  retry?: Partial<TokenRetryOptions>;
  /** Default: 5 s doubling up to 1 h (the defaults of EVENT_RETRY_BASE_MS and EVENT_RETRY_MAX_MS). */
  incidentBackoff?: IncidentBackoff;
  logger?: EventLogger;
  /** Told of every token request as it ends (metrics): a token issued, refused (not worth retrying), or failed (network, timeout, 5xx, 408, 429). */
  onRequest?: (outcome: "issued" | "refused" | "failed") => void;
  /** Injected by tests: the backoff wait and the jitter source. */
  sleep?: Sleep;
  random?: () => number;
}

export interface TokenCache {
  /** A valid access token, fetched only when none is cached or the cached one is about to expire. */
  getToken(signal?: AbortSignal): Promise<string>;
  /**
   * Orange answered 401 to a call made with `token`. true: a new token is worth trying now
   * (`token` was dropped, or another caller already replaced it); false: Orange refuses even
   * fresh tokens and the hold of the current incident round has not passed: keep the token,
   * retry the delivery later.
   */
  invalidate(token: string): boolean;
  /** Orange accepted a call made with `token`: ends an identity incident, if one was running. */
  accepted(token: string): void;
  /** `requests`: token requests sent so far (each retry counts). */
  stats(): { requests: number };
  /** Stops a running refresh and closes the Agent the cache created, if any. */
  close(): Promise<void>;
}

/** The token endpoint could not give a token. `retryable` says whether a later call may succeed. */
export class TokenRequestError extends Error {
  readonly status: number | undefined;
  readonly retryable: boolean;
  readonly retryAfterMs: number | undefined;
  constructor(
    message: string,
    details: { status?: number; retryable: boolean; retryAfterMs?: number; cause?: unknown },
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "TokenRequestError";
    this.status = details.status;
    this.retryable = details.retryable;
    this.retryAfterMs = details.retryAfterMs;
  }
}

const DEFAULT_RETRY: TokenRetryOptions = { attempts: 4, baseMs: 250, maxMs: 10_000 };
const DEFAULT_INCIDENT_BACKOFF: IncidentBackoff = { baseMs: 5_000, maxMs: 3_600_000 };
const MAX_TOKEN_BODY_BYTES = 64 * 1024;

const TokenResponseSchema = z.object({
  token_type: z.string().refine((t) => t.toLowerCase() === "bearer", { message: 'token_type must be "Bearer"' }),
  access_token: z.string().min(1),
  // Seconds; some gateways send it as a string.
  expires_in: z.union([z.number(), z.string().regex(/^\d+$/).transform(Number)]).pipe(z.number().int().positive()),
});

const OAuthErrorSchema = z.object({ error: z.string(), error_description: z.string().optional() });

interface CachedToken {
  token: string;
  expiresAt: number;
  refreshAt: number;
  /** Obtained after Orange refused a token, and not accepted yet: a 401 on it means an incident. */
  probation: boolean;
  /** Refused while on probation and kept through the hold of an incident round. */
  held: boolean;
}

export function createTokenCache(options: TokenCacheOptions): TokenCache {
  const clock = options.clock ?? systemClock;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const refreshAheadMs = options.refreshAheadMs ?? 60_000;
  const retry = { ...DEFAULT_RETRY, ...options.retry };
  const incidentBackoff = options.incidentBackoff ?? DEFAULT_INCIDENT_BACKOFF;
  const sleep = options.sleep ?? defaultSleep;
  const random = options.random ?? Math.random;
  const logger = options.logger;
  const ownAgent = options.dispatcher ? undefined : createOutboundAgent({ timeoutMs, connections: 2 });
  const dispatcher: Dispatcher = options.dispatcher ?? (ownAgent as Dispatcher);
  const url = safeUrl(options.tokenUrl);
  const credentials = Buffer.from(`${options.clientId}:${options.clientSecret}`, "utf8").toString("base64");
  const closing = new AbortController();

  let cached: CachedToken | undefined;
  let inflight: Promise<CachedToken> | undefined;
  let requests = 0;
  // After a failed background refresh, the still-valid token is served without a new attempt
  // until this time, so a token endpoint outage is not met with back-to-back refresh cycles.
  let backgroundPauseUntil = 0;
  // Identity incident at Orange: a token was refused since Orange last accepted one (the next
  // token obtained is on probation); rounds of refused fresh tokens; no new token before holdUntil.
  let refusedSinceAccepted = false;
  let incidentRound = 0;
  let holdUntil = 0;

  /** Removes anything secret from text that came from outside (e.g. an error_description). */
  function redact(text: string): string {
    let out = text.replace(/Basic\s+[A-Za-z0-9+/=._~-]+/gi, "Basic [redacted]");
    for (const secret of [options.clientSecret, credentials]) {
      if (secret.length > 0) out = out.split(secret).join("[redacted]");
    }
    return out;
  }

  async function requestToken(): Promise<CachedToken> {
    requests++;
    const startedAt = clock.now().getTime();
    let res;
    try {
      res = await httpPost(dispatcher, options.tokenUrl, {
        headers: {
          authorization: `Basic ${credentials}`,
          "content-type": "application/x-www-form-urlencoded",
          accept: "application/json",
        },
        body: "grant_type=client_credentials",
        timeoutMs,
        signal: closing.signal,
        maxBodyBytes: MAX_TOKEN_BODY_BYTES,
      });
    } catch (err) {
      const reason = err instanceof OutboundCallError ? err.message : "request failed";
      throw new TokenRequestError(`token request to ${url} failed: ${redact(reason)}`, {
        retryable: !(err instanceof OutboundCallError && err.kind === "aborted"),
        cause: err,
      });
    }

    if (res.status < 200 || res.status > 299) {
      const oauth = OAuthErrorSchema.safeParse(safeJson(res.text));
      const detail = oauth.success
        ? `${oauth.data.error}${oauth.data.error_description ? `: ${oauth.data.error_description}` : ""}`
        : "";
      const hint = res.status === 401 || res.status === 403 ? " (check the client id and client secret)" : "";
      const retryable = res.status >= 500 || res.status === 408 || res.status === 429;
      const retryAfterMs = parseRetryAfter(res.headers["retry-after"], clock.now().getTime());
      throw new TokenRequestError(
        redact(`token request to ${url} failed: HTTP ${res.status}${detail ? ` ${detail}` : ""}${hint}`),
        { status: res.status, retryable, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) },
      );
    }

    const parsed = TokenResponseSchema.safeParse(safeJson(res.text));
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "(body)"}: ${i.message}`).join("; ");
      throw new TokenRequestError(`token endpoint ${url} answered an invalid token response: ${redact(issues)}`, {
        status: res.status,
        retryable: false,
      });
    }
    const lifetimeMs = parsed.data.expires_in * 1000;
    const expiresAt = startedAt + lifetimeMs;
    // A short-lived token must not sit in its refresh window from birth (a request per call).
    const refreshAt = expiresAt - Math.min(refreshAheadMs, lifetimeMs / 2);
    logger?.debug(
      { tokenUrl: url, expiresInS: parsed.data.expires_in, requestId: headerValue(res.headers, "x-oapi-request-id") },
      "obtained an Orange access token",
    );
    return { token: parsed.data.access_token, expiresAt, refreshAt, probation: false, held: false };
  }

  function backoffMs(failedAttempt: number): number {
    const ceiling = Math.min(retry.maxMs, retry.baseMs * 2 ** (failedAttempt - 1));
    // "Equal jitter": at least half the exponential delay, so retries stay spaced out.
    return Math.round(ceiling / 2 + random() * (ceiling / 2));
  }

  async function requestWithRetry(): Promise<CachedToken> {
    const attempts = Math.max(1, Math.floor(retry.attempts));
    for (let attempt = 1; ; attempt++) {
      try {
        const token = await requestToken();
        options.onRequest?.("issued");
        return token;
      } catch (err) {
        const error =
          err instanceof TokenRequestError
            ? err
            : new TokenRequestError(`token request to ${url} failed`, { retryable: false, cause: err });
        options.onRequest?.(error.retryable || error.status === undefined ? "failed" : "refused");
        if (!error.retryable || attempt >= attempts || closing.signal.aborted) {
          throw attempt > 1
            ? new TokenRequestError(`${error.message} (after ${attempt} attempts)`, {
                retryable: error.retryable,
                cause: error.cause,
                ...(error.status === undefined ? {} : { status: error.status }),
              })
            : error;
        }
        const waitMs = Math.min(retry.maxMs, error.retryAfterMs ?? backoffMs(attempt));
        logger?.warn({ tokenUrl: url, attempt, status: error.status, err: error.message, waitMs }, "token request failed, retrying");
        await sleep(waitMs, closing.signal);
      }
    }
  }

  function refresh(): Promise<CachedToken> {
    if (!inflight) {
      const attempt = requestWithRetry()
        .then(
          (fresh) => {
            fresh.probation = refusedSinceAccepted;
            cached = fresh;
            return fresh;
          },
          (err: unknown) => {
            backgroundPauseUntil = clock.now().getTime() + retry.maxMs;
            throw err;
          },
        )
        .finally(() => {
          inflight = undefined;
        });
      // Background refreshes may have no one awaiting them; the failure is logged once here.
      attempt.catch((err: unknown) => {
        logger?.warn({ tokenUrl: url, err: err instanceof Error ? err.message : String(err) }, "token refresh failed");
      });
      inflight = attempt;
    }
    return inflight;
  }

  return {
    async getToken(signal) {
      signal?.throwIfAborted();
      if (closing.signal.aborted) throw new TokenRequestError("token cache is closed", { retryable: false });
      const now = clock.now().getTime();
      if (cached && now < cached.refreshAt) return cached.token;
      if (cached && now < cached.expiresAt) {
        if (!inflight && now >= backgroundPauseUntil && now >= holdUntil) void refresh();
        return cached.token;
      }
      cached = undefined;
      return (await abortable(refresh(), signal)).token;
    },
    invalidate(token) {
      // Already replaced (or expired): the caller gets the current token, or shares its request.
      if (cached?.token !== token) return true;
      const now = clock.now().getTime();
      if (now < holdUntil) return false;
      if (cached.probation && !cached.held) {
        // A token obtained after a 401 is refused too: Orange's identity service is failing. A new
        // token would most likely be refused as well; hold this one for the round.
        incidentRound++;
        const holdMs = Math.min(incidentBackoff.maxMs, incidentBackoff.baseMs * 2 ** Math.min(incidentRound - 1, 40));
        holdUntil = now + holdMs;
        cached.held = true;
        logger?.warn(
          { tokenUrl: url, round: incidentRound, holdMs },
          "Orange refuses freshly obtained access tokens (HTTP 401): taken for an incident at Orange; deliveries are retried " +
            "with backoff, and a new token is requested once the hold has passed",
        );
        return false;
      }
      cached = undefined;
      refusedSinceAccepted = true;
      return true;
    },
    accepted() {
      if (!refusedSinceAccepted) return;
      if (incidentRound > 0) {
        logger?.info({ tokenUrl: url, rounds: incidentRound }, "Orange accepts the access token again: identity incident over");
      }
      refusedSinceAccepted = false;
      incidentRound = 0;
      holdUntil = 0;
      // Whichever token it was: Orange's identity service answers again.
      if (cached) {
        cached.probation = false;
        cached.held = false;
      }
    },
    stats() {
      return { requests };
    },
    async close() {
      closing.abort();
      await ownAgent?.close();
    },
  };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** Lets one caller stop waiting without cancelling the request shared with the others. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
