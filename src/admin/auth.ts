import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyRequest } from "fastify";
import { AppError, Forbidden, Unauthorized } from "../errors.js";

/**
 * Who may call the admin API:
 * - operators, with ADMIN_TOKEN: every route;
 * - the partner's application, with APP_TOKEN: only the routes it calls (its late provisioning
 *   results, its own licence changes), marked `config: { application: true }`.
 * Both are bearer tokens distinct from every credential Orange uses (config.ts refuses the same
 * value), so Orange's token never opens /admin. Without ADMIN_TOKEN the operators' routes answer
 * 503 (the application's, when APP_TOKEN is set, still work).
 */

export class AdminApiDisabled extends AppError {
  constructor() {
    super(503, 5, "Service unavailable", "the admin API is disabled on this server: set ADMIN_TOKEN to enable it");
  }
}

const CHALLENGE = 'Bearer realm="admin"';

/** Who made a call, as recorded on what it did. */
export type Caller = "admin" | "application";

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

/** Checks the credential of the request (throws) and tells who called. */
export type AdminAuthenticator = (request: FastifyRequest) => Caller;

export function createAdminAuthenticator(tokens: { admin?: string; application?: string }): AdminAuthenticator {
  const admin = tokens.admin === undefined ? undefined : digest(tokens.admin);
  const application = tokens.application === undefined ? undefined : digest(tokens.application);
  return (request) => {
    const applicationRoute = request.routeOptions.config.application === true;
    if (admin === undefined && !(applicationRoute && application !== undefined)) throw new AdminApiDisabled();
    const authorization = request.headers.authorization;
    const expected = applicationRoute && application !== undefined ? "<ADMIN_TOKEN> or <APP_TOKEN>" : "<ADMIN_TOKEN>";
    if (authorization === undefined || authorization.trim() === "") {
      throw new Unauthorized(40, `the admin API requires 'Authorization: Bearer ${expected}'`, CHALLENGE);
    }
    const [scheme = "", ...rest] = authorization.trim().split(/\s+/);
    if (scheme.toLowerCase() !== "bearer") {
      throw new Unauthorized(41, `invalid credentials: the admin API accepts a bearer token only (got scheme ${JSON.stringify(scheme)})`, CHALLENGE);
    }
    // Constant time: both sides hashed to the same length first.
    const presented = digest(rest.join(" "));
    if (admin !== undefined && timingSafeEqual(presented, admin)) return "admin";
    if (application !== undefined && timingSafeEqual(presented, application)) {
      if (applicationRoute) return "application";
      throw new Forbidden("the application's token (APP_TOKEN) opens only the routes the application calls, not this one");
    }
    throw new Unauthorized(41, `invalid credentials: this bearer token is not ${expected}`, CHALLENGE);
  };
}

declare module "fastify" {
  interface FastifyContextConfig {
    /** An admin route the partner's application may call with APP_TOKEN. */
    application?: boolean;
  }
  interface FastifyRequest {
    /** Who called the admin API (set by its authentication). */
    caller?: Caller;
  }
}
