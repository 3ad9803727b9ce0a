import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { buildApp } from "./app.js";
import { loadConfig } from "./config.js";
import { createServices } from "./compose.js";
import { createDb } from "./db/sql.js";
import { createCatalogue } from "./domain/catalogue.js";

/** Where the committed OpenAPI document lives. */
export const OPENAPI_FILE = fileURLToPath(new URL("../openapi/openapi.json", import.meta.url));

/**
 * The OpenAPI document generated from the route schemas, as committed under openapi/.
 * Built from default settings so it does not depend on the machine's environment; the
 * database is never contacted.
 */
export async function generateOpenApi(): Promise<string> {
  const config = loadConfig({ INBOUND_AUTH_DISABLED: "true" });
  const catalogue = createCatalogue(
    JSON.parse(readFileSync(new URL("../config/catalogue.json", import.meta.url), "utf8")),
  );
  const db = createDb("postgresql://unused@127.0.0.1:1/unused");
  const services = createServices({ db, catalogue, partnerName: config.partnerName, requestMaxAttempts: config.requestMaxAttempts });
  const app = await buildApp({ config, services, logger: false });
  try {
    await app.ready();
    return JSON.stringify(app.swagger(), null, 2) + "\n";
  } finally {
    await app.close();
    await db.close();
  }
}
