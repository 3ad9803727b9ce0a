import { createHash, timingSafeEqual } from "node:crypto";
import { BlockList, isIPv4, isIPv6 } from "node:net";
import type { FastifyRequest } from "fastify";
import { hasInboundCredential, type InboundAuthConfig } from "../config.js";
import { Forbidden, Unauthorized } from "../errors.js";

/**
 * How Orange authenticates to the partner (contract section 9): HTTP Basic, a static bearer
 * token, an API key in a named header, and a source-IP allow-list, in any combination.
 *
 * - The allow-list, when set, applies first (403 outside it).
 * - Among the configured credentials, any one valid credential is enough (Orange uses the one
 *   agreed at onboarding); a presented but wrong credential is 41, none at all is 40.
 */

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

/** Constant-time comparison (hashing first makes lengths equal). */
function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

export function buildAllowList(entries: string[]): BlockList | undefined {
  if (entries.length === 0) return undefined;
  const list = new BlockList();
  for (const raw of entries) {
    const [address, prefix] = raw.split("/");
    if (!address) continue;
    const type = isIPv4(address) ? "ipv4" : isIPv6(address) ? "ipv6" : undefined;
    if (!type) throw new Error(`INBOUND_IP_ALLOWLIST: ${JSON.stringify(raw)} is not an IP address or CIDR range`);
    if (prefix === undefined) list.addAddress(address, type);
    else {
      const bits = Number(prefix);
      if (!Number.isInteger(bits) || bits < 0 || bits > (type === "ipv4" ? 32 : 128)) {
        throw new Error(`INBOUND_IP_ALLOWLIST: ${JSON.stringify(raw)} has an invalid prefix length`);
      }
      list.addSubnet(address, bits, type);
    }
  }
  return list;
}

function ipAllowed(list: BlockList, ip: string): boolean {
  const mapped = ip.startsWith("::ffff:") ? ip.slice(7) : ip;
  if (isIPv4(mapped)) return list.check(mapped, "ipv4");
  return isIPv6(ip) && list.check(ip, "ipv6");
}

export type Authenticator = (request: FastifyRequest) => void;

export function createAuthenticator(config: InboundAuthConfig): Authenticator {
  const allowList = buildAllowList(config.ipAllowList);
  // An allow-list alone is a valid setup (a private link from Orange's gateway).
  const credentialRequired = hasInboundCredential(config);
  // The challenge names a scheme the server accepts: Basic, else Bearer, else the API key's header
  // (no registered scheme exists for it; "ApiKey" with the header name is the common form).
  const challenge = config.basic
    ? 'Basic realm="orange-partner", charset="UTF-8"'
    : config.bearerToken !== undefined || !config.apiKey
      ? "Bearer"
      : `ApiKey header="${config.apiKey.header.toLowerCase()}"`;
  return (request) => {
    if (config.disabled) return;
    if (allowList && !ipAllowed(allowList, request.ip)) {
      throw new Forbidden(`source address ${request.ip} is not in the allow-list`);
    }
    if (!credentialRequired) return;
    const presented: string[] = [];
    const authorization = request.headers.authorization;
    if (authorization !== undefined) {
      const [scheme = "", ...rest] = authorization.trim().split(/\s+/);
      const value = rest.join(" ");
      const s = scheme.toLowerCase();
      if (s === "basic" && config.basic) {
        presented.push("Basic");
        const decoded = Buffer.from(value, "base64").toString("utf8");
        const colon = decoded.indexOf(":");
        if (
          colon >= 0 &&
          sameSecret(decoded.slice(0, colon), config.basic.user) &&
          sameSecret(decoded.slice(colon + 1), config.basic.password)
        ) {
          return;
        }
      } else if (s === "bearer" && config.bearerToken !== undefined) {
        presented.push("Bearer");
        if (sameSecret(value, config.bearerToken)) return;
      } else {
        presented.push(`Authorization scheme ${JSON.stringify(scheme)}`);
      }
    }
    if (config.apiKey) {
      const key = request.headers[config.apiKey.header];
      if (typeof key === "string") {
        presented.push(`header ${config.apiKey.header}`);
        if (sameSecret(key, config.apiKey.value)) return;
      }
    }
    if (presented.length === 0) {
      throw new Unauthorized(40, "credentials are required: " + describeAccepted(config), challenge);
    }
    throw new Unauthorized(41, `invalid credentials (${presented.join(", ")})`, challenge);
  };
}

function describeAccepted(config: InboundAuthConfig): string {
  const ways: string[] = [];
  if (config.basic) ways.push("HTTP Basic");
  if (config.bearerToken !== undefined) ways.push("a bearer token");
  if (config.apiKey) ways.push(`an API key in header ${config.apiKey.header}`);
  return ways.length > 0 ? ways.join(" or ") : "none configured";
}
