import { request } from "undici";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { buildConsoleScene, chromiumPath, launchChromium, type ConsoleScene } from "./support/console-scene.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { ORDER_URL, uc2 } from "./support/fixtures.js";
import { gatewayEnv, startServerProcess, type ServerProcess } from "./support/server-process.js";

/**
 * The operators' console (/console, issue 11) in a real browser (Debian's chromium through
 * playwright-core) against the real server process, its PostgreSQL and the mock gateway: log in
 * (a wrong token first), find an order by its Orange reference, read its timeline, re-send its
 * parked event; then the database and what Orange's gateway received. Skipped only outside CI on
 * a machine without chromium: in CI (CI set) a missing browser fails the test.
 */

const ADMIN_TOKEN = "console-admin-token-4f9a2c";
const RUN = process.env.CI !== undefined || chromiumPath() !== undefined;

let database: TestDatabase;
let gw: MockGateway;
let server: ServerProcess;
let scene: ConsoleScene;
let browser: Browser;

beforeAll(async () => {
  if (!RUN) return;
  [database, gw] = await Promise.all([createTestDatabase(), startMockGateway()]);
  [server, browser] = await Promise.all([
    startServerProcess({ env: { DATABASE_URL: database.url, ADMIN_TOKEN, ORDERING_MODE: "async", ...gatewayEnv(gw) } }),
    launchChromium(),
  ]);
  scene = await buildConsoleScene(server, gw, ADMIN_TOKEN);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await gw?.close();
  await database?.drop();
});

/** A page that fails the test on any script error or refused resource (CSP included). */
async function openConsole(): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const problems: string[] = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    // The wrong token's 401 is expected; anything else (a missing file, a CSP refusal) is not.
    if (msg.type() === "error" && !/status of 401/.test(msg.text())) problems.push(`console: ${msg.text()}`);
  });
  await page.goto(`${server.url}/console`);
  return { page, problems };
}

async function logIn(page: Page, token: string) {
  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
}

describe.skipIf(!RUN)("the console", () => {
  it("is served with a strict Content-Security-Policy, no inline script, and revalidated by ETag", async () => {
    const res = await request(`${server.url}/console`);
    const html = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toBe("text/html; charset=utf-8");
    const csp = String(res.headers["content-security-policy"]);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain("unsafe");
    expect(res.headers["x-content-type-options"]).toBe("nosniff");
    // Every script is a file of this server's: none inline.
    expect([...html.matchAll(/<script\b[^>]*>/g)].map((m) => m[0])).toEqual(['<script type="module" src="/console/console.js">']);
    expect(html).not.toMatch(/\son[a-z]+=/i);

    const script = await request(`${server.url}/console/console.js`);
    await script.body.text();
    expect(script.headers["content-type"]).toBe("text/javascript; charset=utf-8");
    expect(script.headers["content-security-policy"]).toBe(csp);
    const again = await request(`${server.url}/console/console.js`, { headers: { "if-none-match": String(script.headers.etag) } });
    await again.body.text();
    expect(again.statusCode).toBe(304);
    const slash = await request(`${server.url}/console/`);
    await slash.body.text();
    expect([slash.statusCode, slash.headers.location]).toEqual([301, "/console"]);
    const post = await request(`${server.url}/console`, { method: "POST" });
    expect(post.statusCode).toBe(405);
    await post.body.text();
  });

  it("logs in (a wrong token first), finds an order by its Orange reference, shows its timeline and re-sends its parked event", { timeout: 60_000 }, async () => {
    const { page, problems } = await openConsole();

    // A wrong token: told so, nothing kept, still on the login form.
    await logIn(page, "not-the-admin-token");
    await expect.poll(() => page.textContent("#login-message")).toContain("Wrong token: the server refused it");
    expect(await page.evaluate(() => Object.keys(sessionStorage))).toEqual([]);
    expect(await page.isVisible("#top")).toBe(false);

    // The right one: the overview, with the parked event and its held fleet.
    await logIn(page, ADMIN_TOKEN);
    await page.waitForSelector("#parked");
    expect(await page.textContent("#parked h2")).toBe("Parked events (1)");
    expect(await page.textContent("#held h2")).toBe("Held fleets (1)");
    expect(await page.textContent("#held")).toContain(scene.parked.fleetId);

    // The search box: the order by its Orange reference, then its page and timeline.
    await page.fill("#search input[name=q]", scene.parked.orangeRef);
    await page.press("#search input[name=q]", "Enter");
    await page.waitForSelector(`main a[href="#/orders/${scene.parked.orderId}"]`);
    expect(page.url()).toBe(`${server.url}/console#/search?q=${scene.parked.orangeRef}`);
    await page.click(`main a[href="#/orders/${scene.parked.orderId}"]`);
    await page.waitForSelector("#timeline");
    expect(await page.textContent("main h1")).toBe(`Order ${scene.parked.orderId}`);
    const timeline = (await page.textContent("#timeline")) ?? "";
    expect(timeline).toContain("Orange sent the request (async mode)");
    expect(timeline).toContain(scene.parked.orangeRef);
    expect(timeline).toContain("delivery 1 to Orange: park (400)");
    expect(timeline).toContain("event parked (dead)");

    // Its event, then the re-send from the overview's parked events.
    await page.click(`main a[href="#/events/${scene.parked.eventId}"]`);
    await page.waitForSelector("text=Delivery attempts");
    expect(await page.textContent("main")).toContain("orderItem[0].state: unexpected");
    await page.click('nav a[href="#/"]');
    await page.waitForSelector("#parked button[data-action=resend]");
    await page.click("#parked button[data-action=resend]");
    await expect.poll(() => page.textContent("#toast")).toContain(`Event ${scene.parked.eventId} re-sent`);

    // The database: delivered (the worker took it at once), then the event that waited behind it.
    await expect
      .poll(async () => (await database.prisma.outboxEvent.findUniqueOrThrow({ where: { id: scene.parked.eventId } })).state, { timeout: 20_000 })
      .toBe("delivered");
    await expect
      .poll(async () => (await database.prisma.outboxEvent.findUniqueOrThrow({ where: { id: scene.held.eventId } })).state, { timeout: 20_000 })
      .toBe("delivered");
    const row = await database.prisma.outboxEvent.findUniqueOrThrow({ where: { id: scene.parked.eventId } });
    expect(row.resentAt).not.toBeNull();
    const resent = await database.prisma.historyEntry.findFirst({ where: { eventId: scene.parked.eventId, kind: "event.resent" } });
    expect(resent?.actor).toBe("admin");

    // The gateway: refused once, then received again under the same id, before the held event.
    const calls = gw.received.filter((e) => [scene.parked.eventId, scene.held.eventId].includes((e.body as { id: string }).id));
    expect(calls.map((e) => [(e.body as { id: string }).id, e.status])).toEqual([
      [scene.parked.eventId, 400],
      [scene.parked.eventId, 201],
      [scene.held.eventId, 201],
    ]);

    // The overview, refreshed: nothing parked any more.
    await page.click("text=Refresh");
    await expect.poll(() => page.textContent("#parked h2")).toBe("Parked events (0)");

    // A UC5 change through the licence's form: a login for its end user, told to Orange.
    await page.goto(`${server.url}/console#/fleets/${scene.parked.fleetId}`);
    await page.click("main tr:has-text('Paul') a[href^='#/licences/']");
    await page.waitForSelector("#change");
    const licenceId = decodeURIComponent(page.url().split("#/licences/")[1]!);
    await page.selectOption("#change select[name=operation]", "rightOperation");
    await page.fill("#change input[name=login]", "paul.martin");
    await page.fill("#change input[name=loginEmail]", "paul@boulangerie-martin.example");
    await page.click("#change button[type=submit]");
    await expect.poll(() => page.textContent("#toast")).toContain(`Licence ${licenceId} changed; Orange is told by event ev_`);
    await page.waitForSelector("#timeline:has-text('licence.changed')");
    expect(await page.textContent("#timeline")).toContain("login none → paul.martin");
    const changed = await database.prisma.licence.findUniqueOrThrow({ where: { id: licenceId } });
    expect(changed.login).toEqual({ key: "login", value: "paul.martin" });
    const told = await database.prisma.outboxEvent.findFirstOrThrow({ where: { fleetId: scene.parked.fleetId, type: "updateNotification" } });
    await expect.poll(() => gw.delivered().some((e) => (e.body as { id: string }).id === told.id), { timeout: 20_000 }).toBe(true);

    // The token never left the Authorization header: not in the page's address, not in the server's output.
    expect(page.url()).not.toContain(ADMIN_TOKEN);
    expect(server.output()).not.toContain(ADMIN_TOKEN);
    expect(problems).toEqual([]);
    await page.close();
  });

  it("renders every view of the scene without an error: listings, filters, paging, details", { timeout: 60_000 }, async () => {
    const { page, problems } = await openConsole();
    await logIn(page, ADMIN_TOKEN);
    await page.waitForSelector("#parked");
    const customer = (await database.prisma.productOrder.findUniqueOrThrow({ where: { id: scene.parked.orderId } })).customerId!;
    const update = await database.prisma.licenceUpdate.findFirstOrThrow();
    const views: [string, string][] = [
      ["#/orders", "Orders"],
      ["#/orders?state=failed", "Orders"],
      ["#/updates", "Updates"],
      ["#/customers?name=Martin", "Customers"],
      ["#/fleets", "Fleets"],
      ["#/licences?state=active", "Licences"],
      ["#/events?state=delivered&sort=-createdAt", "Events to Orange"],
      ["#/provisioning", "Commands to the partner's application"],
      [`#/customers/${customer}`, "Customer Boulangerie Martin"],
      [`#/fleets/${scene.delivered.fleetId}`, `Fleet ${scene.delivered.fleetId}`],
      [`#/updates/${update.id}`, `Update ${update.id}`],
      [`#/orders/${scene.held.orderId}/timeline`, `Timeline of ${scene.held.orderId}`],
      ["#/search?q=NO-SUCH-REF", "Search: NO-SUCH-REF"],
    ];
    for (const [hash, title] of views) {
      await page.goto(`${server.url}/console${hash}`);
      await expect.poll(() => page.textContent("main h1"), { message: hash }).toBe(title);
      expect(await page.locator("main .error").count(), hash).toBe(0);
    }
    // A filter typed in the form becomes the route's query, and the listing follows it.
    await page.goto(`${server.url}/console#/orders`);
    await page.waitForSelector("form.filters");
    await page.selectOption("form.filters select[name=state]", "failed");
    await page.click("form.filters button[type=submit]");
    await expect.poll(() => page.url()).toBe(`${server.url}/console#/orders?state=failed`);
    await expect.poll(() => page.locator("main tbody tr").count()).toBe(1);
    expect(await page.textContent("main tbody")).toContain("MBA-CAISSE-UNKNOWN");
    // An unknown id: the admin API's 404, shown as such.
    await page.goto(`${server.url}/console#/orders/po_01m8n2j25c0000prkhq4`);
    await expect.poll(() => page.textContent("main .error")).toContain("404");
    expect(problems.filter((p) => !/status of 404/.test(p))).toEqual([]);
    await page.close();
  });

  it("shows what Orange sent as text: markup in a customer's name is not interpreted", async () => {
    const name = `<img src=x onerror="document.title='pwned'">Boulangerie <b>Martin</b>`;
    const body = uc2({ quantity: 1 });
    const res = await request(`${server.url}${ORDER_URL}`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
      body: JSON.stringify({ ...body, customer: { ...body.customer, tradingName: name } }),
    });
    await res.body.text();
    expect(res.statusCode).toBe(201);
    // Asynchronous mode: the customer exists once the worker has carried the order out.
    let customerId: string | undefined;
    await expect
      .poll(
        async () => {
          const found = await request(`${server.url}/admin/v1/customers?orangeRef=${body.customer.externalReference.id}`, {
            headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
          });
          customerId = ((await found.body.json()) as { id: string }[])[0]?.id;
          return customerId;
        },
        { timeout: 20_000 },
      )
      .toMatch(/^cu_/);

    const { page, problems } = await openConsole();
    await logIn(page, ADMIN_TOKEN);
    await page.waitForSelector("#parked");
    await page.goto(`${server.url}/console#/customers/${customerId}`);
    await page.waitForSelector("main h1:has-text('Customer')");
    expect(await page.textContent("main h1")).toBe(`Customer ${name}`);
    expect(await page.locator("main img, main b").count()).toBe(0);
    expect(await page.title()).not.toBe("pwned");
    expect(problems).toEqual([]);
    await page.close();
  });
});
