/**
 * An embedded PostgreSQL started by a process of its own, for tests that kill that process.
 * Arguments: data directory, port. Prints "ready <url>" on stdout once the server is up; on
 * SIGTERM it stops the server and exits.
 */
import { startEmbeddedPostgres } from "../../src/db/embedded.js";

const [dataDir, port] = process.argv.slice(2);
if (!dataDir || !port) throw new Error("usage: embedded-owner.ts <dataDir> <port>");
const server = await startEmbeddedPostgres({ dataDir, port: Number(port) });
process.on("SIGTERM", () => void server.stop().then(() => process.exit(0)));
process.stdout.write(`ready ${server.url}\n`);
