import { STATUS_CODES, type ServerResponse } from "node:http";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import {
  AppError,
  HeadersTooLarge,
  InternalError,
  InvalidHeader,
  InvalidJson,
  InvalidUrl,
  MethodNotAllowed,
  MissingBody,
  NotFound,
  PayloadTooLarge,
  RequestTimeout,
  ServiceUnavailable,
  UnsupportedMediaType,
  UriTooLong,
} from "../errors.js";
import { isDatabaseUnavailable, isTransient } from "../db/errors.js";
import type { ErrorBody } from "./schemas.js";

/**
 * The one place where errors become HTTP answers in Orange's format
 * `{code, message, description}` (contract section 7). 5xx bodies never carry internals: the
 * detail goes to the log with the request id.
 */

function fromFastifyError(err: FastifyError, bodyLimit: number): AppError | undefined {
  switch (err.code) {
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new MissingBody("the request has Content-Type application/json but no body");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return new InvalidJson(`the body is not valid JSON: ${err.message}`);
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new PayloadTooLarge(`the body exceeds the limit of ${bodyLimit} bytes`);
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE"
        ? new UnsupportedMediaType("the body must be JSON: send Content-Type: application/json")
        : new InvalidJson("the Content-Length header does not match the body");
  }
  if (err instanceof SyntaxError || (err.statusCode === 400 && /JSON/i.test(err.message))) {
    return new InvalidJson(`the body is not valid JSON: ${err.message}`);
  }
  return undefined;
}

export function toErrorBody(err: AppError): ErrorBody {
  return { code: err.code, message: err.message, description: err.description };
}

export function sendError(reply: FastifyReply, err: AppError) {
  return reply.code(err.statusCode).headers(err.headers).type("application/json").send(toErrorBody(err));
}

/**
 * Errors Fastify meets before a route runs (a malformed percent-encoding, a path parameter over
 * maxParamLength), which it would otherwise answer in its own format.
 */
export function frameworkError(error: FastifyError): AppError {
  switch (error.code) {
    case "FST_ERR_BAD_URL":
      return new InvalidUrl(`the path is not valid percent-encoded UTF-8: ${error.message}`);
    case "FST_ERR_MAX_PARAM_LENGTH":
      return new UriTooLong("a path parameter is too long");
    default:
      return new InternalError();
  }
}

// ---------------------------------------------------------------------------------------------
// Answers below Fastify: Node's HTTP parser and timers, and the server's own checks

/** The headers of an error answered outside Fastify; the connection is closed after it. */
function rawHeaders(err: AppError, body: string, requestId: string): Record<string, string> {
  return {
    "content-type": "application/json; charset=utf-8",
    "content-length": String(Buffer.byteLength(body)),
    "x-request-id": requestId,
    connection: "close",
    ...err.headers,
  };
}

/** Answers through Node's response object (no Fastify request exists), then closes the connection. */
export function sendRawError(res: ServerResponse, err: AppError, requestId: string): void {
  const body = JSON.stringify(toErrorBody(err));
  res.writeHead(err.statusCode, rawHeaders(err, body, requestId));
  res.end(body);
}

/** The whole HTTP/1.1 answer, for a socket whose request could not be parsed. */
export function rawErrorResponse(err: AppError, requestId: string): string {
  const body = JSON.stringify(toErrorBody(err));
  const lines = Object.entries(rawHeaders(err, body, requestId)).map(([k, v]) => `${k}: ${v}\r\n`);
  return `HTTP/1.1 ${err.statusCode} ${STATUS_CODES[err.statusCode] ?? ""}\r\n${lines.join("")}\r\n${body}`;
}

const REQUEST_LINE_ERRORS = new Set([
  "HPE_INVALID_METHOD",
  "HPE_INVALID_URL",
  "HPE_INVALID_VERSION",
  "HPE_INVALID_CONSTANT",
  "HPE_UNEXPECTED_SPACE",
]);
const HEADER_ERRORS = new Set([
  "HPE_INVALID_HEADER_TOKEN",
  "HPE_INVALID_CONTENT_LENGTH",
  "HPE_UNEXPECTED_CONTENT_LENGTH",
  "HPE_INVALID_TRANSFER_ENCODING",
  "HPE_CR_EXPECTED",
  "HPE_LF_EXPECTED",
]);

/**
 * The answer to an error Node reports on a connection before any request exists (the server's
 * `clientError`): a request it cannot parse, headers over its limit, a request not received in
 * time. Node's reason (e.g. "Invalid header value char") is in the description.
 */
export function clientErrorAnswer(
  err: Error & { code?: string; reason?: string },
  limits: { headersTimeoutMs: number; requestTimeoutMs: number; maxHeaderSize: number },
): AppError {
  const reason = typeof err.reason === "string" ? err.reason : err.message;
  const code = err.code ?? "";
  if (code === "ERR_HTTP_REQUEST_TIMEOUT") {
    return new RequestTimeout(
      `the request was not received in time: headers within ${limits.headersTimeoutMs} ms, ` +
        `the whole request within ${limits.requestTimeoutMs} ms`,
    );
  }
  if (code === "HPE_HEADER_OVERFLOW") {
    return new HeadersTooLarge(`the request line and headers exceed ${limits.maxHeaderSize} bytes`);
  }
  if (code === "HPE_CHUNK_EXTENSIONS_OVERFLOW") return new PayloadTooLarge("the chunk extensions of the body are too large");
  if (REQUEST_LINE_ERRORS.has(code)) return new InvalidUrl(`the request line is not valid HTTP/1.1: ${reason}`);
  if (HEADER_ERRORS.has(code)) return new InvalidHeader(`the headers are not valid HTTP/1.1: ${reason}`);
  return new InvalidJson(`the request is not valid HTTP/1.1: ${reason}`);
}

export function registerErrorHandling(app: FastifyInstance, bodyLimit: number) {
  app.setErrorHandler((error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    let appError: AppError;
    if (error instanceof AppError) appError = error;
    else if (isDatabaseUnavailable(error)) {
      request.log.error({ err: error }, "database unavailable");
      appError = new ServiceUnavailable();
    } else if (isTransient(error)) {
      // The database answered, but the work could not end in time or collided with another
      // (a transaction past its bound, a statement timeout, a deadlock, a serialization failure):
      // rolled back whole, nothing was kept, and the same call may well succeed later.
      request.log.error({ err: error }, "database work rolled back (timeout or conflict); the caller may retry");
      appError = new ServiceUnavailable("the licence store could not complete the request in time; retry later");
    } else {
      const mapped = fromFastifyError(error, bodyLimit);
      if (mapped) appError = mapped;
      else {
        request.log.error({ err: error }, "unhandled error");
        appError = new InternalError();
      }
    }
    if (appError.statusCode < 500) request.log.info({ code: appError.code, description: appError.description }, appError.message);
    return sendError(reply, appError);
  });

  app.setNotFoundHandler((request, reply) => {
    const url = request.url.split("?")[0] ?? request.url;
    return sendError(reply, new NotFound(`no resource at ${request.method} ${url}`));
  });
}

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"] as const;

/**
 * Answers 405 with an Allow header for the methods a path does not serve (Fastify would say
 * 404). Hidden from the OpenAPI document.
 */
export function rejectOtherMethods(app: FastifyInstance, url: string, allowed: (typeof METHODS)[number][]) {
  const others = METHODS.filter((m) => !allowed.includes(m));
  app.route({
    method: others,
    url,
    schema: { hide: true },
    handler: async (request, reply) =>
      sendError(
        reply,
        new MethodNotAllowed(`${request.method} is not allowed on ${url}; allowed: ${allowed.join(", ")}`, allowed),
      ),
  });
}
