import type { IncomingMessage } from "node:http";
import type { IdGenerator } from "./domain/ids.js";

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
