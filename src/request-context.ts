import type { IncomingMessage } from "node:http";
import type { FastifyBaseLogger, FastifyRequest } from "fastify";
import type { IdGenerator } from "./lib/ids.js";

/**
 * The request id: the caller's `x-request-id` when it is short and plain (it ends up in every
 * log line and in an answer header, so nothing else is taken from a client), else a fresh one.
 * It is echoed in the `x-request-id` header of every answer.
 */
export const REQUEST_ID_HEADER = "x-request-id";

const VALID_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function requestIdFor(req: IncomingMessage, ids: IdGenerator): string {
  const sent = req.headers[REQUEST_ID_HEADER];
  return typeof sent === "string" && VALID_REQUEST_ID.test(sent) ? sent : ids.next("req");
}

/**
 * The headers by which Orange identifies a call, kept with the request in the history (the one
 * list to extend): the request id, and the request id of Orange's API gateway.
 */
export const TRACE_HEADERS = [REQUEST_ID_HEADER, "x-oapi-request-id"] as const;

/** Longest value kept per header: a correlation id, not a payload. */
const MAX_TRACE_VALUE = 256;

/** How the call identified itself: its request id, and the trace headers it carried, as sent. */
export function traceOf(request: FastifyRequest): { requestId: string; headers: Record<string, string> } {
  const headers: Record<string, string> = {};
  for (const name of TRACE_HEADERS) {
    const value = request.headers[name];
    const first = Array.isArray(value) ? value[0] : value;
    if (typeof first === "string" && first !== "") headers[name] = first.slice(0, MAX_TRACE_VALUE);
  }
  return { requestId: request.id, headers };
}

/** Ids a request's log lines carry once known (its order, update, fleet, licence…). */
export type LogIds = Partial<Record<"orderRef" | "orderId" | "updateRef" | "updateId" | "fleetId" | "licenceId", string>>;

/**
 * Adds `ids` to every later log line of the request, Fastify's "request completed" included
 * (request.log and reply.log are the same pino child). Undefined values are left out.
 */
export function bindLogIds(request: FastifyRequest, ids: LogIds): void {
  const log = request.log as FastifyBaseLogger & { setBindings?: (bindings: Record<string, string>) => void };
  if (typeof log.setBindings !== "function") return; // logging is off
  // pino adds bindings, it does not replace them: a key bound twice would appear twice in a line.
  let bound = boundKeys.get(request);
  if (!bound) boundKeys.set(request, (bound = new Set()));
  const bindings: Record<string, string> = {};
  for (const [key, value] of Object.entries(ids)) {
    if (value === undefined || bound.has(key)) continue;
    bindings[key] = value;
    bound.add(key);
  }
  if (Object.keys(bindings).length > 0) log.setBindings(bindings);
}

const boundKeys = new WeakMap<FastifyRequest, Set<string>>();
