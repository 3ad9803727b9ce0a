/**
 * Outbound HTTP shared by the token cache and the Orange event client: one undici call with a
 * hard deadline, a capped response body, and network errors turned into short, secret-free
 * descriptions.
 */
import { setTimeout as delay } from "node:timers/promises";
import { Agent, request, type Dispatcher } from "undici";

/** The subset of a pino logger these modules use; a pino (or Fastify) logger fits as is. */
export interface EventLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

/** Waits `ms`, or rejects as soon as `signal` aborts. Injected by tests to observe backoff. */
export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

export const defaultSleep: Sleep = async (ms, signal) => {
  await delay(ms, undefined, signal ? { signal } : {});
};

export interface OutboundAgentOptions {
  /** Connect, headers and body timeout of every call, in milliseconds. */
  timeoutMs: number;
  /** Sockets per origin; bounded so a burst of deliveries never opens hundreds of connections. */
  connections?: number;
  keepAliveTimeoutMs?: number;
}

/** An undici Agent with every timeout set: connect, response headers, and gaps in the body. */
export function createOutboundAgent({
  timeoutMs,
  connections = 16,
  keepAliveTimeoutMs = 10_000,
}: OutboundAgentOptions): Agent {
  return new Agent({
    connect: { timeout: timeoutMs },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    keepAliveTimeout: keepAliveTimeoutMs,
    connections,
  });
}

export interface PostOptions {
  headers: Record<string, string>;
  body: string;
  /** Deadline for the whole exchange (connect, headers and body). */
  timeoutMs: number;
  signal?: AbortSignal;
  /** Bytes of response body kept; the rest is discarded. */
  maxBodyBytes: number;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** Response body as text, cut at `maxBodyBytes`. */
  text: string;
  truncated: boolean;
}

/** A call that got no HTTP answer: timeout, connection refused or reset, caller abort. */
export class OutboundCallError extends Error {
  constructor(
    message: string,
    readonly kind: "timeout" | "aborted" | "network",
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "OutboundCallError";
  }
}

/** POSTs `body` to `url` and reads the answer; throws only OutboundCallError. */
export async function httpPost(dispatcher: Dispatcher, url: string, options: PostOptions): Promise<HttpResponse> {
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(new Error("deadline")), options.timeoutMs);
  const onCallerAbort = () => deadline.abort(new Error("aborted"));
  options.signal?.addEventListener("abort", onCallerAbort, { once: true });
  try {
    if (options.signal?.aborted) onCallerAbort();
    const res = await request(url, {
      method: "POST",
      dispatcher,
      headers: options.headers,
      body: options.body,
      signal: deadline.signal,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
    const { text, truncated } = await readCapped(res.body, options.maxBodyBytes);
    return { status: res.statusCode, headers: res.headers, text, truncated };
  } catch (err) {
    const callerAborted = options.signal?.aborted === true;
    throw toOutboundError(err, options.timeoutMs, callerAborted, deadline.signal.aborted && !callerAborted);
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onCallerAbort);
  }
}

async function readCapped(
  body: Dispatcher.ResponseData["body"],
  maxBytes: number,
): Promise<{ text: string; truncated: boolean }> {
  const chunks: Buffer[] = [];
  let size = 0;
  let truncated = false;
  for await (const chunk of body) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
    if (size + buf.length > maxBytes) {
      chunks.push(buf.subarray(0, maxBytes - size));
      truncated = true;
      break; // leaving the loop destroys the stream: the rest is never buffered
    }
    chunks.push(buf);
    size += buf.length;
  }
  return { text: Buffer.concat(chunks).toString("utf8"), truncated };
}

const TIMEOUT_CODES = new Set(["UND_ERR_CONNECT_TIMEOUT", "UND_ERR_HEADERS_TIMEOUT", "UND_ERR_BODY_TIMEOUT", "ETIMEDOUT"]);

function errorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && typeof e === "object" && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function toOutboundError(
  err: unknown,
  timeoutMs: number,
  callerAborted: boolean,
  deadlinePassed: boolean,
): OutboundCallError {
  if (err instanceof OutboundCallError) return err;
  if (callerAborted) return new OutboundCallError("aborted by the caller", "aborted", { cause: err });
  const code = errorCode(err);
  if (deadlinePassed) return new OutboundCallError(`no answer within ${timeoutMs} ms`, "timeout", { cause: err });
  if (code !== undefined && TIMEOUT_CODES.has(code)) {
    return new OutboundCallError(`no answer within ${timeoutMs} ms (${code})`, "timeout", { cause: err });
  }
  if (code === "ECONNREFUSED") return new OutboundCallError("connection refused (ECONNREFUSED)", "network", { cause: err });
  const message = err instanceof Error ? err.message : String(err);
  return new OutboundCallError(`connection failed: ${message}${code ? ` (${code})` : ""}`, "network", { cause: err });
}

/** `Retry-After` as milliseconds: delay-seconds or an HTTP date (relative to `nowMs`). */
export function parseRetryAfter(value: string | string[] | undefined, nowMs: number): number | undefined {
  const raw = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!raw) return undefined;
  if (/^\d+$/.test(raw)) return Number(raw) * 1000;
  // An HTTP date names its weekday and month; V8 would read "1.5" or "-3" as dates too.
  if (!/[a-z]{3}/i.test(raw)) return undefined;
  const at = Date.parse(raw);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

export function headerValue(headers: HttpResponse["headers"], name: string): string | undefined {
  const value = headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

/** A URL fit for messages and logs: no user-info, no query string. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return "<invalid URL>";
  }
}
