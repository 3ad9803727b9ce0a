/**
 * Command line: `npm run partner-app` from the repository (or `npx tsx main.ts` in this folder).
 * Settings come from the environment; see README.md.
 */
import { startPartnerApp, type Mode } from "./app.js";

const env = process.env;

function fail(message: string): never {
  console.error(`partner-app: ${message}`);
  process.exit(1);
}

const secrets = (env.WEBHOOK_SECRETS ?? "").split(/\s+/).filter((s) => s !== "");
if (secrets.length === 0) {
  fail(
    "set WEBHOOK_SECRETS to the secret the server signs with (the same whsec_… value on both sides), e.g. " +
      `node -e "console.log('whsec_' + require('crypto').randomBytes(32).toString('base64'))"`,
  );
}

const line = (message: string, fields: Record<string, unknown> = {}) =>
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), msg: message, ...fields })}\n`);

try {
  const app = await startPartnerApp({
    secrets,
    port: Number(env.PORT ?? 8081),
    host: env.HOST ?? "127.0.0.1",
    dataDir: env.DATA_DIR ?? ".data/partner-app",
    serverUrl: env.SERVER_URL ?? "http://localhost:8080",
    ...(env.APP_TOKEN ? { appToken: env.APP_TOKEN } : {}),
    ...(env.PUBLIC_URL ? { publicUrl: env.PUBLIC_URL } : {}),
    behaviour: {
      mode: (env.MODE ?? "ok") as Mode,
      ...(env.DELAY_MS ? { delayMs: Number(env.DELAY_MS) } : {}),
      ...(env.REASON ? { reason: env.REASON } : {}),
      ...(env.REFUSE_MENTIONING ? { refuseMentioning: env.REFUSE_MENTIONING } : {}),
    },
    log: line,
  });
  line("partner application listening", { webhookUrl: app.webhookUrl, control: `${app.url}/control`, behaviour: app.behaviour() });
  const stop = () => {
    line("stopping");
    void app.close().then(() => process.exit(0));
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
} catch (err) {
  fail((err as Error).message);
}
