import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyRequest } from "fastify";
import { AppError, Unauthorized } from "../errors.js";

/**
 * The operators' credential: a bearer token (ADMIN_TOKEN) distinct from every credential Orange
 * uses (config.ts refuses the same value), so Orange's token never opens /admin. Without
 * ADMIN_TOKEN the admin API is disabled: its routes stay in the OpenAPI document and answer 503.
 */

export class AdminApiDisabled extends AppError {
  constructor() {
    super(503, 5, "Service unavailable", "the admin API is disabled on this server: set ADMIN_TOKEN to enable it");
  }
}

const CHALLENGE = 'Bearer realm="admin"';

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

export type AdminAuthenticator = (request: FastifyRequest) => void;

export function createAdminAuthenticator(token: string | undefined): AdminAuthenticator {
  const expected = token === undefined ? undefined : digest(token);
  return (request) => {
    if (expected === undefined) throw new AdminApiDisabled();
    const authorization = request.headers.authorization;
    if (authorization === undefined || authorization.trim() === "") {
      throw new Unauthorized(40, "the admin API requires 'Authorization: Bearer <ADMIN_TOKEN>'", CHALLENGE);
    }
    const [scheme = "", ...rest] = authorization.trim().split(/\s+/);
    if (scheme.toLowerCase() !== "bearer") {
      throw new Unauthorized(41, `invalid credentials: the admin API accepts a bearer token only (got scheme ${JSON.stringify(scheme)})`, CHALLENGE);
    }
    // Constant time: both sides hashed to the same length first.
    if (!timingSafeEqual(digest(rest.join(" ")), expected)) {
      throw new Unauthorized(41, "invalid credentials: this bearer token is not the admin token", CHALLENGE);
    }
  };
}
