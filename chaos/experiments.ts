/**
 * The experiments of `npm run chaos`. Each breaks one thing around the real server, lets Orange's
 * side (and the partner's application) carry on as they would, then reads the database and the
 * mocks' records: what was accepted must have been carried out once, announced once, in order.
 */
import { randomBytes } from "node:crypto";
import { connect } from "node:net";
import { startPartnerApp, WEBHOOK_PATH } from "../examples/partner-app/app.js";
import { ORDER_PATH, startOrderLoad, uc2Order, type OrderCall } from "../test/support/order-load.js";
import type { ServerProcess } from "../test/support/server-process.js";
import { auditEvents, auditRequests, isAccepted, settle, workLeft, type SentRequest } from "./audit.js";
import { startFaultProxy, type Fault } from "./fault-proxy.js";
import { sleep, uniqueRef, type Experiment } from "./lab.js";
import { prepareFleets, startFleetStreams, UPDATE_PATH } from "./workload.js";

export interface ExperimentSpec {
  id: string;
  title: string;
  run(x: Experiment): Promise<void>;
}

/** How long the work left after the faults may take before it counts as stuck. */
const SETTLE_MS = 90_000;

function fromLoad(calls: readonly OrderCall[]): SentRequest[] {
  return calls.map((c) => ({ kind: "order", ref: c.ref, quantity: c.quantity, answers: [c], expect: "completed" }));
}

async function count(x: Experiment, text: string): Promise<number> {
  const [row] = await x.query<{ n: number }>(text);
  return row?.n ?? -1;
}

/** Settles (bounded); what is left afterwards is counted as stuck by the audits. */
async function settleOrNote(x: Experiment, when = "after the faults"): Promise<void> {
  const started = Date.now();
  const settled = await settle(x, SETTLE_MS);
  if (!settled) x.fail(`${when}: work left after ${SETTLE_MS / 1000} s: ${await workLeft(x)} requests or events`);
  else x.note(`${when}: everything ended within ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function alive(x: Experiment, server: ServerProcess): Promise<void> {
  const ping = await x.call(server, "GET", "/ping", undefined, { label: "ping after" });
  x.expect(server.alive() && ping.status === 200, `the server does not answer /ping at the end (${ping.status ?? ping.error})`);
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 mid-order, then Orange's retry with the same reference

function killMidOrder(mode: "sync" | "async"): ExperimentSpec {
  return {
    id: `kill-order-${mode}`,
    title: `kill -9 mid-order (${mode})`,
    async run(x) {
      const env = { ORDERING_MODE: mode, UPDATE_MODE: mode };
      const first = await x.startServer(env);
      const load = startOrderLoad({ url: first.url, token: first.token, concurrency: 4, pauseMs: 0, maxQuantity: 300, answerTimeoutMs: 15_000 });
      // Mid-order: calls in flight and, in async mode, acknowledged orders the worker is carrying out.
      let waiting = 0;
      const ready = await x.waitFor(
        async () => {
          if (load.calls.length < 25 || load.inFlight() === 0) return false;
          if (mode === "sync") return true;
          waiting = await count(x, `SELECT count(*)::int AS n FROM product_order WHERE state = 'acknowledged'`);
          const done = await count(x, `SELECT count(*)::int AS n FROM product_order WHERE state = 'completed'`);
          return waiting > 0 && done >= 5 && load.inFlight() > 0;
        },
        60_000,
        20,
      );
      const inFlight = load.inFlight();
      const killedAt = Date.now();
      await x.kill9(first);
      await load.stop();
      if (!ready) x.fail("the load never reached the state to kill in");

      const cut = load.calls.filter((c) => c.error !== undefined && c.startedAt < killedAt && c.endedAt >= killedAt);
      const refused = load.calls.filter((c) => c.error !== undefined && c.startedAt >= killedAt);
      const noAnswer = load.calls.filter((c) => c.error !== undefined && c.endedAt < killedAt);
      x.tally.stuck += noAnswer.length;
      if (noAnswer.length) x.fail(`${noAnswer.length} calls got no answer before the kill`);
      x.count5xx(load.calls);
      x.tally.faults.push(`kill -9 with ${inFlight} calls in flight${mode === "async" ? `, ${waiting} orders queued` : ""}`);

      const second = await x.startServer(env);
      // Orange retries every reference with the same body: those cut and those answered alike.
      const sent = fromLoad(load.calls);
      let replayed = 0;
      let committedBeforeKill = 0;
      const queue = [...sent];
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          for (let s = queue.shift(); s; s = queue.shift()) {
            const retry = await x.call(second, "POST", ORDER_PATH, uc2Order(s.ref, s.quantity!), { label: "Orange's retry" });
            const wasCut = s.answers[0]?.status === undefined;
            s.answers.push(retry);
            const isReplay = retry.headers?.["idempotent-replayed"] === "true";
            if (isReplay) replayed++;
            if (wasCut && isReplay) committedBeforeKill++;
            const expected = mode === "sync" ? "completed" : "acknowledged";
            if (retry.status !== 201 || retry.body?.state !== expected) {
              x.fail(`${s.ref}: Orange's retry got ${retry.status ?? retry.error} ${retry.body?.state ?? ""}, expected 201 ${expected}`);
            }
            if (s.answers[0] && isAccepted(s.answers[0]) && !isReplay) x.fail(`${s.ref}: accepted before the kill, its retry was not a replay`);
          }
        }),
      );
      x.tally.faults.push(`${sent.length} retried`);
      x.note(
        `${cut.length} calls cut by the kill (${committedBeforeKill} had been committed: their retry was a replay), ` +
          `${refused.length} refused while the server was down, ${replayed}/${sent.length} retries replayed`,
      );

      if (mode === "async") await settleOrNote(x);
      const found = await auditRequests(x, sent);
      if (mode === "async") await auditEvents(x, { requestIds: [...found.values()].map((r) => r.id) });
      else x.expect((await count(x, `SELECT count(*)::int AS n FROM outbox_event`)) === 0, "sync orders wrote events");
      x.count5xx(x.calls);
      await alive(x, second);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 mid-delivery of events, the gateway slow

const killMidDelivery: ExperimentSpec = {
  id: "kill-delivery",
  title: "kill -9 mid-delivery of events",
  async run(x) {
    const env = { ORDERING_MODE: "async", UPDATE_MODE: "async" };
    let server = await x.startServer(env);
    const sent: SentRequest[] = [];
    const fleets = await prepareFleets(x, server, 6, sent);
    // Slow: the gateway takes each event at once, its answer reaches the server 500 ms later.
    x.orange.fault = { kind: "slow", ms: 500 };
    const streams = startFleetStreams(x, () => server, fleets, { perFleet: 9, pauseMs: 100 });
    const held = new Set<string>();
    const kills = 2;
    for (let k = 0; k < kills; k++) {
      const inFlight = await x.waitFor(() => x.orange.holding() >= 2 && streams.acknowledged() >= 8 * (k + 1), 60_000, 10);
      if (!inFlight) {
        x.fail(`kill ${k + 1}: no delivery in flight to kill`);
        break;
      }
      for (const c of x.orange.calls) {
        if (c.fault === "slow" && c.answeredAt === undefined && c.status === undefined) held.add((JSON.parse(c.body) as { id: string }).id);
      }
      await x.kill9(server);
      await sleep(500); // Orange's calls meanwhile are refused; its streams retry them
      server = await x.startServer(env);
    }
    x.tally.faults.push(`gateway slow (500 ms), kill -9 ×${kills} with ${held.size} events in flight`);
    await streams.done;
    sent.push(...streams.sent);
    await settleOrNote(x);

    const found = await auditRequests(x, sent);
    await auditEvents(x, { requestIds: [...found.values()].map((r) => r.id) });
    const arrivals = x.gateway.delivered().map((e) => (e.body as { id: string }).id);
    const again = [...held].filter((id) => arrivals.filter((a) => a === id).length >= 2);
    x.expect(again.length === held.size, `${held.size - again.length} events in flight at a kill were not delivered again with the same id`);
    x.note(`${again.length}/${held.size} events in flight at a kill reached the gateway again, same id`);
    // Calls refused while the server was down are Orange's retries, not answers; none timed out.
    const timedOut = x.calls.filter((c) => c.timedOut);
    x.tally.stuck += timedOut.length;
    x.count5xx(x.calls);
    await alive(x, server);
  },
};

// ---------------------------------------------------------------------------------------------
// 3. PostgreSQL stopped 8 s under async load

const OUTAGE_MS = 8_000;

const databaseOutage: ExperimentSpec = {
  id: "db-outage",
  title: "PostgreSQL stopped 8 s",
  async run(x) {
    const server = await x.startServer({ ORDERING_MODE: "async", UPDATE_MODE: "async" });
    const connectTimeoutMs = 1_500;
    const load = startOrderLoad({ url: server.url, token: server.token, concurrency: 3, answerTimeoutMs: connectTimeoutMs + 8_000 });
    let left = 0;
    const busy = await x.waitFor(
      async () => load.accepted().length >= 15 && x.gateway.delivered().length >= 5 && (left = await workLeft(x)) > 0,
      60_000,
      50,
    );
    x.expect(busy !== undefined, "the worker was never busy before the outage");
    await x.dropPool();
    const downAt = Date.now();
    await x.run.pg.stop();
    await sleep(connectTimeoutMs + 500);
    const ready = await x.call(server, "GET", "/health/ready", undefined, { label: "ready during the outage" });
    const live = await x.call(server, "GET", "/health/live", undefined, { label: "live during the outage" });
    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - downAt)));
    const aliveDuring = server.alive();
    const restartAt = Date.now();
    await x.run.pg.start();
    const upAt = Date.now();
    x.tally.faults.push(
      `database stopped ${((restartAt - downAt) / 1000).toFixed(1)} s (+${((upAt - restartAt) / 1000).toFixed(1)} s to start) under async load`,
    );
    x.expect(aliveDuring, "the server died during the outage");
    x.expect(ready.status === 503 && ready.body?.code === 5, `/health/ready during the outage: ${ready.status}`);
    x.expect(live.status === 200, `/health/live during the outage: ${live.status}`);

    await x.waitFor(async () => (await x.call(server, "GET", "/health/ready", undefined, { label: "ready after" })).status === 200, 30_000);
    await x.waitFor(() => load.accepted().some((c) => c.startedAt > upAt), 30_000);
    await load.stop();

    // 503 with Retry-After while the database is away (and the moments the pools take to notice
    // its return) is the answer promised; any other failure is not.
    const expected = (c: { status?: number; retryAfter?: string; startedAt: number; endedAt: number }) =>
      c.status === 503 && c.retryAfter === "5" && c.endedAt >= downAt && c.startedAt <= upAt + 5_000;
    x.count5xx(load.calls, expected);
    // Ended before the restart was asked for: PostgreSQL accepts connections a moment before its
    // start is reported (upAt), and a call answered in that moment is rightly acknowledged.
    const during = load.calls.filter((c) => c.startedAt >= downAt + connectTimeoutMs && c.endedAt <= restartAt);
    x.expect(during.length > 0 && during.every((c) => c.status === 503), "calls during the outage did not all get 503");
    const noAnswer = load.calls.filter((c) => c.status === undefined);
    x.tally.stuck += noAnswer.length;
    if (noAnswer.length) x.fail(`${noAnswer.length} calls got no answer (${noAnswer[0]?.error})`);
    const other = load.calls.filter((c) => c.status !== undefined && c.status < 500 && !(c.status === 201 && c.body?.state === "acknowledged"));
    if (other.length) x.fail(`${other.length} answers other than 201 acknowledged or 503 (first: ${other[0]?.status})`);
    x.note(`${left} orders or events in progress when the database stopped; ${load.calls.length} orders sent, ${during.length} while it was down`);

    await settleOrNote(x);
    const sent = fromLoad(load.calls);
    const found = await auditRequests(x, sent);
    await auditEvents(x, { requestIds: [...found.values()].map((r) => r.id) });
    x.count5xx(x.calls.filter((c) => c.label !== "ready during the outage" && c.label !== "ready after"));
    await alive(x, server);
  },
};

// ---------------------------------------------------------------------------------------------
// 4. Orange's gateway failing: 500, 429, 401 for a while, no answer, then back

const orangeError = (code: number, message: string) => ({ code, message, description: "fault injected by npm run chaos" });

const ORANGE_FAULTS: Array<{ name: string; fault: Fault; ms: number }> = [
  { name: "500", fault: { kind: "status", status: 500, body: orangeError(1, "Internal error") }, ms: 3_000 },
  { name: "429", fault: { kind: "status", status: 429, headers: { "retry-after": "1" }, body: orangeError(53, "Too many requests") }, ms: 3_000 },
  {
    name: "401",
    fault: { kind: "status", status: 401, headers: { "www-authenticate": 'Bearer error="invalid_token"' }, body: orangeError(42, "Expired credentials") },
    ms: 3_000,
  },
  { name: "hang", fault: { kind: "hang" }, ms: 3_000 },
];

const orangeFaults: ExperimentSpec = {
  id: "orange-faults",
  title: "Orange answering 500, 429, 401, nothing",
  async run(x) {
    // Retries bounded wider than the fault windows: within the bounds nothing may be parked.
    const env = { ORDERING_MODE: "async", UPDATE_MODE: "async", EVENT_RETRY_MAX_MS: "2000", EVENT_MAX_ATTEMPTS: "50" };
    const server = await x.startServer(env);
    const sent: SentRequest[] = [];
    const fleets = await prepareFleets(x, server, 6, sent);
    const streams = startFleetStreams(x, () => server, fleets, { perFleet: 1_000, pauseMs: 250 });
    const load = startOrderLoad({ url: server.url, token: server.token, concurrency: 1, pauseMs: 200 });
    await sleep(1_000);
    const windows: Array<{ name: string; from: number; to: number }> = [];
    for (const phase of ORANGE_FAULTS) {
      const from = x.orange.calls.length;
      x.orange.fault = phase.fault;
      await sleep(phase.ms);
      windows.push({ name: phase.name, from, to: x.orange.calls.length });
    }
    x.orange.fault = { kind: "none" };
    await sleep(1_000);
    await streams.stop();
    await load.stop();
    const counts = windows.map((w) => ({ name: w.name, n: x.orange.calls.slice(w.from, w.to).filter((c) => c.fault !== "none").length }));
    x.tally.faults.push(counts.map((c) => `${c.name}×${c.n}`).join(" "));
    for (const c of counts) x.expect(c.n > 0, `the ${c.name} fault was never exercised`);

    await settleOrNote(x);
    sent.push(...streams.sent, ...fromLoad(load.calls));
    const found = await auditRequests(x, sent);
    await auditEvents(x, { requestIds: [...found.values()].map((r) => r.id) });

    // Retry-After: 1 was respected: the next try of an event answered 429 came a second later at least.
    let early = 0;
    let after429 = 0;
    x.orange.calls.forEach((c, i) => {
      if (c.status !== 429 || c.answeredAt === undefined) return;
      const id = (JSON.parse(c.body) as { id: string }).id;
      const next = x.orange.calls.slice(i + 1).find((n) => n.body.includes(`"id":"${id}"`));
      if (!next) return;
      after429++;
      if (next.at < c.answeredAt + 1_000) early++;
    });
    x.expect(early === 0, `${early} events tried again sooner than the Retry-After of their 429`);
    const [attempts] = await x.query<{ max: number; parked: number }>(
      `SELECT max(attempts)::int AS max, count(*) FILTER (WHERE state IN ('dead', 'discarded'))::int AS parked FROM outbox_event`,
    );
    x.note(`${after429} tries after a 429, none early: ${early === 0}; most attempts for one event: ${attempts?.max}; parked: ${attempts?.parked}; token requests: ${x.gateway.tokenRequests}`);
    x.count5xx([...x.calls, ...load.calls]);
    x.tally.stuck += x.calls.filter((c) => c.timedOut).length + load.calls.filter((c) => c.status === undefined).length;
    await alive(x, server);
  },
};

// ---------------------------------------------------------------------------------------------
// 5. The partner's application down, hanging, slow, then back; then down past the bounds

const partnerFaults: ExperimentSpec = {
  id: "partner-faults",
  title: "partner's application down, hanging, slow",
  async run(x) {
    const secret = `whsec_${randomBytes(32).toString("base64")}`;
    const partner = await startPartnerApp({ secrets: [secret], port: 0, host: "127.0.0.1" });
    x.onTearDown(() => partner.close());
    const proxy = await startFaultProxy(partner.url, (path) => path === WEBHOOK_PATH);
    x.onTearDown(() => proxy.close());
    // Room for the faults within the bounds on a busy machine; the last phase outlasts it.
    const maxAgeMs = 12_000;
    const server = await x.startServer({
      ORDERING_MODE: "async",
      UPDATE_MODE: "async",
      PROVISIONING_MODE: "webhook",
      PROVISIONING_URL: `${proxy.url}${WEBHOOK_PATH}`,
      PROVISIONING_SECRET: secret,
      PROVISIONING_TIMEOUT_MS: "800",
      PROVISIONING_RETRY_BASE_MS: "100",
      PROVISIONING_RETRY_MAX_MS: "500",
      PROVISIONING_MAX_ATTEMPTS: "1000",
      PROVISIONING_MAX_AGE_MS: String(maxAgeMs),
    });

    // Within the bounds: down (503), hanging (no answer), slow (the work done, the answer lost).
    const load = startOrderLoad({ url: server.url, token: server.token, concurrency: 1, pauseMs: 200 });
    await sleep(1_000);
    partner.setMode({ mode: "down" });
    await sleep(2_000);
    partner.setMode({ mode: "ok" });
    proxy.fault = { kind: "hang" };
    await sleep(2_000);
    proxy.fault = { kind: "none" };
    partner.setMode({ mode: "slow", delayMs: 3_000 });
    await sleep(2_000);
    partner.setMode({ mode: "ok" });
    await sleep(500);
    await load.stop();
    await settleOrNote(x, "within the bounds");
    const within = fromLoad(load.calls);

    // Past the bounds: down longer than PROVISIONING_MAX_AGE_MS.
    partner.setMode({ mode: "down" });
    const beyond: SentRequest[] = [];
    for (let i = 0; i < 3; i++) {
      const ref = uniqueRef("DOWN");
      const call = await x.call(server, "POST", ORDER_PATH, uc2Order(ref, 2), { label: "order while down" });
      beyond.push({ kind: "order", ref, quantity: 2, answers: [call], expect: "failed", reason: "did not carry out" });
    }
    const parkedInTime = await x.waitFor(
      async () =>
        (await count(x, `SELECT count(*)::int AS n FROM product_order WHERE orange_ref LIKE 'DOWN-%' AND state <> 'acknowledged'`)) === beyond.length,
      maxAgeMs + 20_000,
    );
    x.expect(parkedInTime !== undefined, "orders placed while the application was down were not ended within its bounds");
    partner.setMode({ mode: "ok" });
    const back: SentRequest[] = [];
    for (let i = 0; i < 2; i++) {
      const ref = uniqueRef("BACK");
      const call = await x.call(server, "POST", ORDER_PATH, uc2Order(ref, 2), { label: "order once back" });
      back.push({ kind: "order", ref, quantity: 2, answers: [call], expect: "completed" });
    }
    await settleOrNote(x, "past the bounds");

    const received503 = partner.received.filter((r) => r.status === 503).length;
    const hung = proxy.calls.filter((c) => c.fault === "hang").length;
    const replayed = partner.received.filter((r) => r.replayed).length;
    x.tally.faults.push(`app 503×${received503}, hanging×${hung}, slow (answer lost)→replayed×${replayed}; down ${maxAgeMs / 1000} s+ → parked`);
    x.expect(received503 > 0 && hung > 0 && replayed > 0, "a fault of the application was never exercised");

    const sent = [...within, ...beyond, ...back];
    const found = await auditRequests(x, sent);
    await auditEvents(x, { requestIds: [...found.values()].map((r) => r.id) });

    // Commands: one per order, done (or parked past the bounds), sent under one webhook-id, applied once by the application.
    const commands = await x.query<{ id: string; request_id: string; state: string; attempts: number; seconds: number }>(
      `SELECT id, request_id, state::text AS state, attempts,
              extract(epoch FROM finished_at - created_at)::float AS seconds FROM provisioning_command`,
    );
    const parkedRefs = new Set(beyond.map((b) => b.ref));
    let retried = 0;
    for (const s of sent) {
      const order = found.get(s.ref);
      if (!order) continue;
      const mine = commands.filter((c) => c.request_id === order.id);
      if (mine.length !== 1) {
        if (mine.length > 1) x.tally.duplicated += mine.length - 1;
        x.fail(`${s.ref}: ${mine.length} commands`);
        continue;
      }
      const command = mine[0]!;
      if (command.attempts > 1) retried++;
      const wanted = parkedRefs.has(s.ref) ? "parked" : "done";
      x.expect(command.state === wanted, `${s.ref}: command ${command.state}, expected ${wanted}`);
      const ids = new Set(partner.received.filter((r) => r.body.includes(order.id)).map((r) => r.headers["webhook-id"]));
      x.expect(ids.size === 1 && ids.has(command.id), `${s.ref}: the application got it under ${ids.size} webhook-ids`);
      const seats = Object.values(partner.store.licences).filter((l) => l.history.some((h) => h.command === command.id));
      const applied = seats.reduce((n, l) => n + l.history.filter((h) => h.command === command.id).length, 0);
      const expectedSeats = wanted === "done" ? (s.quantity ?? 0) : 0;
      if (applied > expectedSeats) {
        x.tally.duplicated += applied - expectedSeats;
        x.fail(`${s.ref}: the application applied ${applied} seat changes for ${expectedSeats}`);
      } else if (seats.length < expectedSeats) {
        x.tally.lost += expectedSeats - seats.length;
        x.fail(`${s.ref}: the application holds ${seats.length} seats for ${expectedSeats}`);
      }
    }
    const failedEvents = await count(
      x,
      `SELECT count(*)::int AS n FROM outbox_event e JOIN product_order o ON o.id = e.order_id
        WHERE o.orange_ref LIKE 'DOWN-%' AND e.type = 'failedStateNotification' AND e.state = 'delivered'`,
    );
    x.expect(failedEvents === beyond.length, `Orange told failed for ${failedEvents} of ${beyond.length} orders past the bounds`);
    const slowest = Math.max(...commands.filter((c) => c.state === "done").map((c) => c.seconds));
    x.note(
      `${commands.length} commands, ${retried} needed more than one attempt (most: ${Math.max(...commands.map((c) => c.attempts))}), ` +
        `the slowest done in ${slowest.toFixed(1)} s (bound ${maxAgeMs / 1000} s), ${commands.filter((c) => c.state === "parked").length} parked`,
    );
    x.count5xx([...x.calls, ...load.calls]);
    x.tally.stuck += x.calls.filter((c) => c.timedOut).length + load.calls.filter((c) => c.status === undefined).length;
    await alive(x, server);
  },
};

// ---------------------------------------------------------------------------------------------
// 6. Bad inputs

/**
 * Opens a connection, writes `head` at once and then `text` one character every `everyMs`;
 * resolves with what came back once the server closed the connection (or `giveUpMs` passed).
 */
function dribble(port: number, head: string, text: string, everyMs: number, giveUpMs: number): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    let answer = "";
    let done = false;
    const end = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ text: answer, closed });
    };
    const timer = setTimeout(() => end(false), giveUpMs);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => (answer += chunk));
    socket.on("error", () => undefined);
    socket.on("close", () => end(true));
    socket.on("connect", async () => {
      socket.write(head);
      for (const char of text) {
        if (done || socket.destroyed) return;
        socket.write(char);
        await sleep(everyMs);
      }
    });
  });
}

function parseRaw(text: string): { status: number; body: unknown } {
  const end = text.indexOf("\r\n\r\n");
  const status = Number(text.slice(0, end).split(" ")[1]);
  try {
    return { status, body: JSON.parse(text.slice(end + 4)) };
  } catch {
    return { status, body: text.slice(end + 4, end + 200) };
  }
}

function isOrangeError(body: unknown): boolean {
  return typeof body === "object" && body !== null && Object.keys(body).sort().join() === "code,description,message";
}

const badInputs: ExperimentSpec = {
  id: "bad-inputs",
  title: "bad inputs",
  async run(x) {
    const headersTimeoutMs = 1_500;
    const server = await x.startServer({
      ORDERING_MODE: "async",
      UPDATE_MODE: "async",
      HTTP_HEADERS_TIMEOUT_MS: String(headersTimeoutMs),
      HTTP_REQUEST_TIMEOUT_MS: "3000",
    });
    const port = Number(new URL(server.url).port);
    const controls: SentRequest[] = [];
    const control = async (label: string) => {
      const ref = uniqueRef("CTL");
      const call = await x.call(server, "POST", ORDER_PATH, uc2Order(ref, 2), { label });
      controls.push({ kind: "order", ref, quantity: 2, answers: [call], expect: "completed" });
      return call;
    };
    await control("control before");
    await settleOrNote(x, "control order");
    const [licence] = await x.query<{ id: string; fleet_id: string }>(`SELECT id, fleet_id FROM licence LIMIT 1`);

    const order = () => uc2Order(uniqueRef("BAD"), 2);
    const long = randomBytes(4_000).toString("hex"); // random: no compression below the index limit
    const deep = (levels: number) => {
      const o = JSON.stringify(order());
      return `${o.slice(0, -1)},"extra":${'{"a":'.repeat(levels)}1${"}".repeat(levels)}}`;
    };
    const inputs: Array<{ name: string; method: string; path: string; body?: unknown; headers?: Record<string, string> }> = [
      { name: "NUL in a string", method: "POST", path: ORDER_PATH, body: { ...order(), category: "produc\u0000tion" } },
      { name: "NUL in a field name", method: "POST", path: ORDER_PATH, body: JSON.stringify({ ...order(), ["bad\u0000key"]: 1 }) },
      {
        name: "lone surrogate",
        method: "POST",
        path: ORDER_PATH,
        body: (() => {
          const o = order();
          o.customer.tradingName = "Boulangerie \ud800";
          return JSON.stringify(o);
        })(),
      },
      { name: "8,000-character order reference", method: "POST", path: ORDER_PATH, body: { ...order(), externalReference: { type: "orange", id: long } } },
      { name: "8,000-character Idempotency-Key", method: "POST", path: ORDER_PATH, body: order(), headers: { "idempotency-key": long } },
      {
        name: "8,000-character update reference",
        method: "POST",
        path: UPDATE_PATH,
        body: { externalReference: { type: "orange", id: long }, userService: [{ id: licence?.id ?? "us_x", externalState: "suspended" }] },
      },
      { name: "NUL in a licence id", method: "POST", path: UPDATE_PATH, body: { externalReference: { type: "orange", id: uniqueRef("BAD") }, userService: [{ id: "us_\u0000", externalState: "suspended" }] } },
      { name: "10,000-deep JSON", method: "POST", path: ORDER_PATH, body: deep(10_000) },
      { name: "1,000,000 nested arrays", method: "POST", path: ORDER_PATH, body: `${"[".repeat(1_000_000)}${"]".repeat(1_000_000)}` },
      { name: "NUL in ?productRefId=", method: "GET", path: `/userservice/v2/userService?productRefId=fl_%00` },
    ];
    let refused = 0;
    for (const input of inputs) {
      const call = await x.call(server, input.method, input.path, input.body, { label: input.name, ...(input.headers ? { headers: input.headers } : {}) });
      if (call.status === 400 && isOrangeError(call.body)) refused++;
      else x.fail(`${input.name}: answered ${call.status ?? call.error} ${call.text?.slice(0, 120) ?? ""}`);
      if (isAccepted(call)) x.fail(`${input.name}: accepted`);
    }

    // Slowloris: headers dribbled on 40 connections; meanwhile Orange's calls are served.
    const slowHeaders = `POST ${ORDER_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${server.token}\r\n${"X-Slow: y\r\n".repeat(100)}\r\n`;
    const body = JSON.stringify(order());
    const bodyHead = `POST ${ORDER_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${server.token}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`;
    const slow = [
      ...Array.from({ length: 40 }, () => dribble(port, "", slowHeaders, 100, 20_000)),
      ...Array.from({ length: 5 }, () => dribble(port, bodyHead, body, 50, 20_000)),
    ];
    await sleep(300);
    const during = await control("control during slowloris");
    const ping = await x.call(server, "GET", "/ping", undefined, { label: "ping during slowloris" });
    x.expect(isAccepted(during) && ping.status === 200, "Orange's calls were not served during the slowloris");
    const cut = await Promise.all(slow);
    let timedOut = 0;
    for (const c of cut) {
      const answer = c.text ? parseRaw(c.text) : undefined;
      if (c.closed && answer?.status === 408 && isOrangeError(answer.body) && (answer.body as { code: number }).code === 65) timedOut++;
    }
    x.expect(timedOut === cut.length, `${cut.length - timedOut} slow connections were not cut with 408 code 65`);
    x.tally.faults.push(`${inputs.length} malformed, ${cut.length} slowloris`);
    x.note(`${refused}/${inputs.length} refused 400 in Orange's format, ${timedOut}/${cut.length} slow connections cut 408`);
    await settleOrNote(x);

    // Nothing stored but the controls: every row belongs to a control order.
    const controlRefs = controls.map((c) => c.ref);
    const strays = await x.query<{ what: string; n: number }>(
      `SELECT 'orders' AS what, count(*)::int AS n FROM product_order WHERE NOT (orange_ref = ANY($1::text[]))
       UNION ALL SELECT 'updates', count(*)::int FROM licence_update
       UNION ALL SELECT 'customers', count(*)::int FROM customer WHERE NOT (orange_ref = ANY($2::text[]))
       UNION ALL SELECT 'events', count(*)::int FROM outbox_event e WHERE e.order_id IS NULL OR e.order_id NOT IN (SELECT id FROM product_order)
       UNION ALL SELECT 'jobs', count(*)::int FROM graphile_worker.jobs`,
      [controlRefs, controlRefs.map((r) => `CUS-${r}`)],
    );
    for (const s of strays) if (s.n > 0) x.fail(`${s.n} ${s.what} stored by bad inputs`);
    const found = await auditRequests(x, controls);
    await auditEvents(x, { requestIds: [...found.values()].map((r) => r.id) });
    x.count5xx(x.calls);
    x.tally.stuck += x.calls.filter((c) => c.status === undefined).length;
    await alive(x, server);
  },
};

export const EXPERIMENTS: ExperimentSpec[] = [
  killMidOrder("sync"),
  killMidOrder("async"),
  killMidDelivery,
  databaseOutage,
  orangeFaults,
  partnerFaults,
  badInputs,
];
