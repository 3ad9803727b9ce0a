/**
 * Typed errors, each carrying the HTTP status and Orange's error code (contract section 7).
 * One Fastify error handler (src/orange/error-handler.ts) renders them; nothing else builds
 * error bodies.
 */
export class AppError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: number,
    message: string,
    readonly description: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = new.target.name;
  }
}

export class MissingBody extends AppError {
  constructor(description = "a JSON body is required") {
    super(400, 21, "Missing body", description);
  }
}

export class InvalidJson extends AppError {
  constructor(description: string) {
    super(400, 22, "Invalid body", description);
  }
}

export class MissingBodyField extends AppError {
  constructor(description: string) {
    super(400, 23, "Missing body field", description);
  }
}

export class InvalidBodyField extends AppError {
  constructor(description: string) {
    super(400, 24, "Invalid body field", description);
  }
}

export class InvalidUrl extends AppError {
  constructor(description: string) {
    super(400, 20, "Invalid URL", description);
  }
}

export class MissingHeader extends AppError {
  constructor(description: string) {
    super(400, 25, "Missing header", description);
  }
}

export class InvalidHeader extends AppError {
  constructor(description: string) {
    super(400, 26, "Invalid header value", description);
  }
}

export class InvalidQuery extends AppError {
  constructor(description: string) {
    super(400, 28, "Invalid query-string parameter", description);
  }
}

/** [decision] Orange publishes no code for 408; 65 is this server's. */
export class RequestTimeout extends AppError {
  constructor(description: string) {
    super(408, 65, "Request timeout", description);
  }
}

/** An over-long request line or path parameter: Orange's "Invalid URL" code with status 414. */
export class UriTooLong extends AppError {
  constructor(description: string) {
    super(414, 20, "Invalid URL", description);
  }
}

/** An unsupported Expect header: Orange's "Invalid header value" code with status 417. */
export class ExpectationFailed extends AppError {
  constructor(description: string) {
    super(417, 26, "Invalid header value", description);
  }
}

/** Headers over Node's limit: Orange's "Invalid header value" code with status 431. */
export class HeadersTooLarge extends AppError {
  constructor(description: string) {
    super(431, 26, "Request header fields too large", description);
  }
}

export class Unauthorized extends AppError {
  constructor(code: 40 | 41, description: string, challenge?: string) {
    super(
      401,
      code,
      code === 40 ? "Missing credentials" : "Invalid credentials",
      description,
      challenge ? { "www-authenticate": challenge } : {},
    );
  }
}

export class Forbidden extends AppError {
  constructor(description: string) {
    super(403, 50, "Access denied", description);
  }
}

export class NotFound extends AppError {
  constructor(description: string) {
    super(404, 60, "Resource not found", description);
  }
}

export class MethodNotAllowed extends AppError {
  constructor(description: string, allow: string[]) {
    super(405, 61, "Method not allowed", description, { allow: allow.join(", ") });
  }
}

export class NotAcceptable extends AppError {
  constructor(description: string) {
    super(406, 62, "Not acceptable", description);
  }
}

export class Conflict extends AppError {
  constructor(description: string) {
    super(409, 63, "Conflict", description);
  }
}

export class PayloadTooLarge extends AppError {
  constructor(description: string) {
    super(413, 64, "Request entity too large", description);
  }
}

export class UnsupportedMediaType extends AppError {
  constructor(description: string) {
    super(415, 68, "Unsupported media type", description);
  }
}

export class InternalError extends AppError {
  constructor() {
    super(500, 1, "Internal error", "the server could not process the request; it has been logged");
  }
}

/** An answer that breaks its own schema (RESPONSE_VALIDATION); the issues go to the log, not to the client. */
export class ResponseSchemaViolation extends AppError {
  constructor(readonly details: string) {
    super(500, 1, "Internal error", "the server built an answer that breaks the contract; it has been logged");
  }
}

export class ServiceUnavailable extends AppError {
  constructor(description = "the licence store is unavailable; retry later") {
    super(503, 5, "Service unavailable", description, { "retry-after": "5" });
  }
}

/**
 * A synchronous request whose outcome the partner's application has not confirmed within the
 * deadline: Orange retries with the same reference and gets the outcome of the same command.
 */
export class OutcomePending extends AppError {
  constructor(description: string, retryAfterSeconds: number) {
    super(503, 5, "Service unavailable", description, { "retry-after": String(retryAfterSeconds) });
  }
}
