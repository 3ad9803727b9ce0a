import { createServer, maxHeaderSize, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import type { HttpLimits } from "./config.js";
import { ExpectationFailed, MethodNotAllowed, MissingHeader, ServiceUnavailable } from "./errors.js";
import { clientErrorAnswer, rawErrorResponse, sendRawError } from "./orange/error-handler.js";
import type { PingFastPath } from "./orange/ping.js";

/**
 * The node:http server under Fastify. It exists for the /ping fast path (src/orange/ping.ts);
 * with a server of its own, Fastify applies none of its timeouts, so the limits are set here:
 * time to send the headers and the whole request, keep-alive idle time, open connections.
 * Everything Node would answer by itself (a request it cannot parse, headers too large, a
 * request too slow, an unsupported Expect, a missing Host, CONNECT) is answered in Orange's
 * error format with an `x-request-id`, and so is a request arriving while the server drains.
 */

export interface HttpFrontDeps {
  limits: HttpLimits;
  pingFastPath: PingFastPath;
  /** The request id of a parsed request (the caller's when well formed). */
  requestId(req: IncomingMessage): string;
  /** A fresh request id, for connections whose request could not be parsed. */
  freshRequestId(): string;
}

export interface HttpFront {
  /** Fastify's serverFactory. */
  serverFactory(handler: (req: IncomingMessage, res: ServerResponse) => void): Server;
  /** Fastify's clientErrorHandler. */
  clientErrorHandler(this: FastifyInstance, err: Error & { code?: string }, socket: Socket): void;
  /** From now on, requests are answered 503 (the server is closing). */
  drain(): void;
  /** The logger for what happens outside any request (dropped connections, CONNECT). */
  setLogger(log: FastifyBaseLogger): void;
}

const DROP_LOG_INTERVAL_MS = 10_000;
/** How long a connection is kept alive after an answer once the server is closing. */
const DRAINING_KEEP_ALIVE_MS = 1_000;

export function createHttpFront(deps: HttpFrontDeps): HttpFront {
  const { limits } = deps;
  let draining = false;
  let server: Server | undefined;
  let log: FastifyBaseLogger | undefined;
  let dropped = 0;
  let lastDropLog = 0;

  const errorLimits = { ...limits, maxHeaderSize };

  return {
    serverFactory(handler) {
      const created = createServer(
        {
          headersTimeout: limits.headersTimeoutMs,
          requestTimeout: limits.requestTimeoutMs,
          keepAliveTimeout: limits.keepAliveTimeoutMs,
          // Node enforces both timeouts when it sweeps its connections (every 30 s by default,
          // hence slow headers cut after 60 to 90 s): sweep often enough for the limits to hold.
          connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(limits.headersTimeoutMs / 4))),
          // Checked below, so that the 400 is in Orange's format.
          requireHostHeader: false,
        },
        (req, res) => {
          if (draining) {
            sendRawError(res, new ServiceUnavailable("the server is shutting down; retry"), deps.requestId(req));
            return;
          }
          if (req.httpVersion === "1.1" && req.headers.host === undefined) {
            sendRawError(res, new MissingHeader("an HTTP/1.1 request must carry a Host header"), deps.requestId(req));
            return;
          }
          if (!deps.pingFastPath.handle(req, res)) handler(req, res);
        },
      );
      created.maxConnections = limits.maxConnections;
      created.on("drop", () => {
        dropped++;
        const now = Date.now();
        if (now - lastDropLog >= DROP_LOG_INTERVAL_MS) {
          log?.warn({ dropped, maxConnections: limits.maxConnections }, "connections refused: HTTP_MAX_CONNECTIONS reached");
          lastDropLog = now;
          dropped = 0;
        }
      });
      created.on("checkExpectation", (req: IncomingMessage, res: ServerResponse) => {
        sendRawError(
          res,
          new ExpectationFailed(`Expect: ${req.headers.expect} is not supported; only 100-continue is`),
          deps.requestId(req),
        );
      });
      created.on("connect", (req: IncomingMessage, socket: Socket) => {
        const err = new MethodNotAllowed("CONNECT is not allowed: this server is not a proxy", ["GET", "POST"]);
        socket.end(rawErrorResponse(err, deps.requestId(req)));
      });
      server = created;
      return created;
    },

    clientErrorHandler(err, socket) {
      // A reset connection has nobody to answer.
      if (err.code === "ECONNRESET" || socket.destroyed) return;
      const answer = clientErrorAnswer(err, errorLimits);
      const requestId = deps.freshRequestId();
      // The raw error may hold the request's bytes (credentials included): only its code goes to the log.
      this.log.info({ reqId: requestId, code: err.code, status: answer.statusCode }, "request refused by the HTTP server");
      // As Node does: answer unless an answer to this connection's request has begun.
      const inFlight = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage;
      if (socket.writable && !inFlight?.headersSent) socket.write(rawErrorResponse(answer, requestId));
      socket.destroy();
    },

    drain() {
      draining = true;
      deps.pingFastPath.disable();
      // Closing, Node ends the connections idle at that moment only: one whose request is still
      // under way would stay open after its answer, kept alive for HTTP_KEEP_ALIVE_TIMEOUT_MS (a
      // caller such as Orange's IT keeps its connections), and the stop would wait for it past
      // its own deadline. From now on a connection is kept alive a second after an answer: a
      // request arriving on it meanwhile still gets its 503 (above), then it is ended.
      if (server) server.keepAliveTimeout = Math.min(server.keepAliveTimeout, DRAINING_KEEP_ALIVE_MS);
    },

    setLogger(logger) {
      log = logger;
    },
  };
}
