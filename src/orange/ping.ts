import type { IncomingMessage, ServerResponse } from "node:http";

/**
 * `GET /ping` is Orange's availability probe: cheap by contract (no database round trip). When
 * it needs no credential (the default), the HTTP server answers it before Fastify's routing, with
 * the very bytes and headers of the Fastify route, which tests compare. Everything else, and
 * every /ping that is not a plain open GET, goes through Fastify.
 */
export const PING_BODY = JSON.stringify({ status: "ok" });
const PING_HEADERS = {
  "content-type": "application/json; charset=utf-8",
  "content-length": String(Buffer.byteLength(PING_BODY)),
};

/** Orange always sends `Accept: application/json` or nothing; anything that excludes JSON gets 406. */
export function acceptsJson(accept: string | undefined): boolean {
  if (accept === undefined || accept.trim() === "") return true;
  return accept
    .split(",")
    .map((part) => part.split(";")[0]!.trim().toLowerCase())
    .some((type) => type === "application/json" || type === "*/*" || type === "application/*" || type.endsWith("+json"));
}

export interface PingFastPath {
  /** Answers the request and returns true when it is an open GET /ping; false: hand it to Fastify. */
  handle(req: IncomingMessage, res: ServerResponse): boolean;
  /** From now on every request goes through Fastify (which answers 503 while closing). */
  disable(): void;
}

/** `requestId`: the request's id, echoed in `x-request-id` as on every answer. */
export function createPingFastPath(enabled: boolean, requestId: (req: IncomingMessage) => string): PingFastPath {
  let on = enabled;
  return {
    handle(req, res) {
      if (!on || req.method !== "GET" || req.url !== "/ping" || !acceptsJson(req.headers.accept)) return false;
      res.writeHead(200, { ...PING_HEADERS, "x-request-id": requestId(req) });
      res.end(PING_BODY);
      return true;
    },
    disable() {
      on = false;
    },
  };
}
