/**
 * `npm run screenshots`: the README's pictures of the operators' console (docs/console-*.png),
 * taken with the browser of its test (chromium through playwright-core) on a real server with its
 * own embedded PostgreSQL and the mock gateway, around the scene the test uses: a parked event
 * holding its fleet, delivered orders, a failed one, an update.
 */
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { startMockGateway } from "../src/simulator/gateway.js";
import { buildConsoleScene, launchChromium } from "../test/support/console-scene.js";
import { startRestartablePostgres } from "../test/support/restartable-postgres.js";
import { gatewayEnv, startServerProcess } from "../test/support/server-process.js";

const OUT = fileURLToPath(new URL("../docs/", import.meta.url));
const ADMIN_TOKEN = "screenshots-admin-token";

const pg = await startRestartablePostgres();
const gw = await startMockGateway();
const server = await startServerProcess({ env: { DATABASE_URL: pg.url, ADMIN_TOKEN, ORDERING_MODE: "async", ...gatewayEnv(gw) } });
const browser = await launchChromium();
try {
  const scene = await buildConsoleScene(server, gw, ADMIN_TOKEN);
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  mkdirSync(OUT, { recursive: true });
  const shot = async (name: string) => {
    await page.screenshot({ path: `${OUT}console-${name}.png` });
    console.log(`docs/console-${name}.png`);
  };

  await page.goto(`${server.url}/console`);
  await page.fill("#token", "a-wrong-token");
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#login-message:has-text('Wrong token')");
  await shot("login");

  await page.fill("#token", ADMIN_TOKEN);
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#parked");
  await shot("overview");

  await page.fill("#search input[name=q]", scene.parked.orangeRef);
  await page.press("#search input[name=q]", "Enter");
  await page.click(`main a[href="#/orders/${scene.parked.orderId}"]`);
  await page.waitForSelector("#timeline");
  await shot("order");

  await page.goto(`${server.url}/console#/events/${scene.parked.eventId}`);
  await page.waitForSelector("text=Delivery attempts");
  await shot("event");

  await page.goto(`${server.url}/console#/fleets/${scene.parked.fleetId}`);
  await page.waitForSelector("main h1:has-text('Fleet')");
  await page.click("main tr:has-text('Paul') a[href^='#/licences/']");
  await page.waitForSelector("#change");
  // A UC5 change through the form: a login for the end user, then the licence's history shows it.
  await page.selectOption("#change select[name=operation]", "rightOperation");
  await page.fill("#change input[name=login]", "paul.martin");
  await page.fill("#change input[name=loginEmail]", "paul@boulangerie-martin.example");
  await page.click("#change button[type=submit]");
  await page.waitForSelector("#timeline:has-text('licence.changed')");
  await shot("licence");
} finally {
  await browser.close();
  await server.stop();
  await gw.close();
  await pg.close();
}
