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
