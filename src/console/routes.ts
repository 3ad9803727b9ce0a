import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { FastifyInstance } from "fastify";
import { rejectOtherMethods } from "../orange/error-handler.js";

/**
 * The operators' console: one HTML page, one ES module and one style sheet, served as they are
 * (no build step, no framework) at /console. The page holds no data and no credential: the
 * operator pastes ADMIN_TOKEN into its login form, the script keeps it in sessionStorage (gone
 * with the tab) and sends it as `Authorization: Bearer` to the admin API (/admin/v1), whose
 * authentication decides everything. The token never travels in a URL, so never in a log.
 *
 * Its files, read once at start from src/console/static (the sources: `npm run build` compiles
 * TypeScript only, and the image keeps src/; from dist/console/ as from src/console/ the path is
 * ../../src/console/static). A strict Content-Security-Policy on every answer: the script comes
 * from this server only, nothing inline, nothing loaded from elsewhere, no framing.
 */

const STATIC_DIR = fileURLToPath(new URL("../../src/console/static/", import.meta.url));

/** Every answer of the console's routes carries these. */
export const CONSOLE_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  // Revalidated on every load (ETag): a new release is seen at once, an unchanged one costs a 304.
  "cache-control": "no-cache",
};

const FILES: Record<string, { file: string; type: string }> = {
  "/console": { file: "index.html", type: "text/html; charset=utf-8" },
  "/console/console.js": { file: "console.js", type: "text/javascript; charset=utf-8" },
  "/console/console.css": { file: "console.css", type: "text/css; charset=utf-8" },
  "/console/favicon.svg": { file: "favicon.svg", type: "image/svg+xml" },
};

interface Served {
  body: Buffer;
  type: string;
  etag: string;
}

function load(dir: string): Map<string, Served> {
  const served = new Map<string, Served>();
  for (const [path, { file, type }] of Object.entries(FILES)) {
    const body = readFileSync(`${dir}${file}`);
    served.set(path, { body, type, etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 27)}"` });
  }
  return served;
}

export function registerConsoleRoutes(app: FastifyInstance, options: { dir?: string } = {}): void {
  const served = load(options.dir ?? STATIC_DIR);
  for (const [path, file] of served) {
    app.get(path, { schema: { hide: true } }, async (request, reply) => {
      reply.headers(CONSOLE_HEADERS).header("etag", file.etag);
      if (request.headers["if-none-match"] === file.etag) return reply.code(304).send();
      return reply.type(file.type).send(file.body);
    });
    rejectOtherMethods(app, path, ["GET"]);
  }
  // /console/ (a typed trailing slash) is the page too.
  app.get("/console/", { schema: { hide: true } }, async (_request, reply) => reply.redirect("/console", 301));
}
