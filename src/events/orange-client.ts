/**
 * Sends one event to Orange's event API (contract sections 1 and 6) and classifies the answer
 * for the delivery job: `delivered` (2xx), `retry` (5xx, 408, 429, 401, timeout, connection
 * error, no token), `park` (any other 4xx). It never throws for an HTTP outcome; retry
 * scheduling, attempts and parking belong to the caller.
 *
 * A 401 drops the token and the event is sent once more with a new one. A 401 that persists
 * (also on a freshly obtained token) is Orange's identity service failing, not the event: it is
 * retried like a 5xx, within the attempt and age bounds, and the token cache spaces the token
 * requests out (one per incident round, however many deliveries fail meanwhile).
 */
import type { Dispatcher } from "undici";
import { systemClock, type Clock } from "../lib/clock.js";
import {
  OutboundCallError,
  createOutboundAgent,
  headerValue,
  httpPost,
  parseRetryAfter,
  type EventLogger,
  type HttpResponse,
} from "./http.js";
import type { TokenCache } from "./token-cache.js";

export type OrangeEventApi = "productordering" | "userservice";

/** The event envelope of contract section 6; `resource` is already in Orange's wire format. */
export interface OrangeEvent {
  id: string;
  type: string;
  time: string;
  resource: unknown;
}

/** An event already serialised (as stored in the outbox): sent byte for byte. */
export interface SerializedOrangeEvent {
  id: string;
  type: string;
  json: string;
}

export type DeliveryOutcome = "delivered" | "retry" | "park";

export interface DeliveryResult {
  outcome: DeliveryOutcome;
  /** HTTP status of Orange's (last) answer; absent when none came. */
  status?: number;
  /** Orange's `X-OAPI-Request-Id` answer header, to quote when asking Orange about a delivery. */
  requestId?: string;
  /** Orange's answer body, cut at `maxBodyChars`. */
  body?: string;
  /** From `Retry-After` (delay-seconds or HTTP date), when Orange sent one. */
  retryAfterMs?: number;
  /** Why the event was not delivered; short and free of secrets. */
  error?: string;
}

export interface OrangeEventClientOptions {
  /** e.g. `https://ope.apibackbone.orange.com` */
  baseUrl: string;
  /** `mba2` in production, `mba2-beta` in Orange's integration environment. */
  offer: string;
  productOrderingPath?: string;
  userServicePath?: string;
  tokens: Pick<TokenCache, "getToken" | "invalidate" | "accepted">;
  /** Deadline of one POST (default 10 s). */
  timeoutMs?: number;
  /** undici dispatcher to use; by default the client owns an Agent built from `timeoutMs`. */
  dispatcher?: Dispatcher;
  /** For `Retry-After` given as an HTTP date. */
  clock?: Clock;
  logger?: EventLogger;
  /** Characters of Orange's answer body kept in the result (default 4096). */
  maxBodyChars?: number;
}

export interface OrangeEventClient {
  send(api: OrangeEventApi, event: OrangeEvent | SerializedOrangeEvent, signal?: AbortSignal): Promise<DeliveryResult>;
  /** The URL events of `api` are POSTed to. */
  urlFor(api: OrangeEventApi): string;
  /** Closes the Agent the client created, if any. */
  close(): Promise<void>;
}

export const DEFAULT_PRODUCT_ORDERING_EVENT_PATH = "/productordering/v2/event";
export const DEFAULT_USER_SERVICE_EVENT_PATH = "/userservice/v2/event";

type Attempt = { kind: "answer"; res: HttpResponse } | { kind: "failed"; error: string };

export function createOrangeEventClient(options: OrangeEventClientOptions): OrangeEventClient {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const clock = options.clock ?? systemClock;
  const maxBodyChars = options.maxBodyChars ?? 4096;
  const logger = options.logger;
  const ownAgent = options.dispatcher ? undefined : createOutboundAgent({ timeoutMs });
  const dispatcher: Dispatcher = options.dispatcher ?? (ownAgent as Dispatcher);

  const base = `${options.baseUrl.replace(/\/+$/, "")}/${options.offer.replace(/^\/+|\/+$/g, "")}`;
  const urls: Record<OrangeEventApi, string> = {
    productordering: base + withLeadingSlash(options.productOrderingPath ?? DEFAULT_PRODUCT_ORDERING_EVENT_PATH),
    userservice: base + withLeadingSlash(options.userServicePath ?? DEFAULT_USER_SERVICE_EVENT_PATH),
  };

  async function post(url: string, token: string, body: string, signal?: AbortSignal): Promise<Attempt> {
    try {
      const res = await httpPost(dispatcher, url, {
        headers: {
          authorization: `Bearer ${token}`,
          accept: "application/json",
          "content-type": "application/json",
        },
        body,
        timeoutMs,
        ...(signal ? { signal } : {}),
        // Bytes ≥ characters; the text is cut to characters below.
        maxBodyBytes: maxBodyChars * 4,
      });
      return { kind: "answer", res };
    } catch (err) {
      return { kind: "failed", error: err instanceof OutboundCallError ? err.message : "request failed" };
    }
  }

  async function token(signal?: AbortSignal): Promise<{ token: string } | { error: string }> {
    try {
      return { token: await options.tokens.getToken(signal) };
    } catch (err) {
      return { error: `no access token: ${err instanceof Error ? err.message : String(err)}` };
    }
  }

  function classify(attempt: Attempt, afterRefresh: boolean): DeliveryResult {
    if (attempt.kind === "failed") return { outcome: "retry", error: attempt.error };
    const { res } = attempt;
    const result: DeliveryResult = { outcome: "park", status: res.status };
    const requestId = headerValue(res.headers, "x-oapi-request-id");
    if (requestId !== undefined) result.requestId = requestId;
    if (res.text.length > 0) result.body = res.text.length > maxBodyChars ? res.text.slice(0, maxBodyChars) : res.text;
    const retryAfterMs = parseRetryAfter(res.headers["retry-after"], clock.now().getTime());
    if (retryAfterMs !== undefined) result.retryAfterMs = retryAfterMs;

    if (res.status >= 200 && res.status <= 299) {
      result.outcome = "delivered";
    } else if (res.status >= 500 || res.status === 408 || res.status === 429) {
      result.outcome = "retry";
      result.error = `HTTP ${res.status}`;
    } else if (res.status === 401) {
      result.outcome = "retry";
      result.error = afterRefresh
        ? "HTTP 401 with a freshly obtained access token: Orange refuses our tokens (an incident at Orange); retried"
        : "HTTP 401: Orange still refuses our access tokens (an incident at Orange); retried, a new token is requested once its hold has passed";
    } else {
      result.error = `HTTP ${res.status}`;
    }
    return result;
  }

  return {
    urlFor: (api) => urls[api],

    async send(api, event, signal) {
      const url = urls[api];
      const body = "json" in event ? event.json : JSON.stringify(event);
      let bearer = await token(signal);
      if ("error" in bearer) return logged(api, event, { outcome: "retry", error: bearer.error });
      let attempt = await post(url, bearer.token, body, signal);
      let afterRefresh = false;
      if (attempt.kind === "answer" && attempt.res.status === 401 && options.tokens.invalidate(bearer.token)) {
        // The token was revoked or expired early: dropped (only if still cached); once more with a new one.
        logger?.info(
          { api, eventId: event.id, requestId: headerValue(attempt.res.headers, "x-oapi-request-id") },
          "Orange answered 401, refreshing the access token",
        );
        bearer = await token(signal);
        if ("error" in bearer) return logged(api, event, { outcome: "retry", status: 401, error: bearer.error });
        attempt = await post(url, bearer.token, body, signal);
        afterRefresh = true;
        // Refused too: tells the cache, which holds this token for an incident round when it was a fresh one.
        if (attempt.kind === "answer" && attempt.res.status === 401) options.tokens.invalidate(bearer.token);
      }
      if (attempt.kind === "answer" && attempt.res.status >= 200 && attempt.res.status <= 299) options.tokens.accepted(bearer.token);
      return logged(api, event, classify(attempt, afterRefresh));
    },

    async close() {
      await ownAgent?.close();
    },
  };

  function logged(api: OrangeEventApi, event: OrangeEvent | SerializedOrangeEvent, result: DeliveryResult): DeliveryResult {
    if (logger) {
      const fields = {
        api,
        eventId: event.id,
        eventType: event.type,
        outcome: result.outcome,
        status: result.status,
        requestId: result.requestId,
        ...(result.error === undefined ? {} : { error: result.error }),
      };
      if (result.outcome === "delivered") logger.info(fields, "Orange event delivered");
      else logger.warn(fields, "Orange event not delivered");
    }
    return result;
  }
}

function withLeadingSlash(path: string): string {
  return path.startsWith("/") ? path : `/${path}`;
}
