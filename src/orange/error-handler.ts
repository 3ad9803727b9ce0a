import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import {
  AppError,
  InternalError,
  InvalidJson,
  MethodNotAllowed,
  MissingBody,
  NotFound,
  PayloadTooLarge,
  ServiceUnavailable,
  UnsupportedMediaType,
} from "../errors.js";
import { isDatabaseUnavailable } from "../db/errors.js";
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

export function registerErrorHandling(app: FastifyInstance, bodyLimit: number) {
  app.setErrorHandler((error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    let appError: AppError;
    if (error instanceof AppError) appError = error;
    else if (isDatabaseUnavailable(error)) {
      request.log.error({ err: error }, "database unavailable");
      appError = new ServiceUnavailable();
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
