// Webhook steps of `npm run bench` (bench/run.ts): what PROVISIONING_MODE=webhook costs. Two
// servers on one database, identical but for PROVISIONING_MODE: `none`, and `webhook` in front of
// the loopback application of bench/bare-app.ts (200 `{}` at once); the same orders go to both,
// alternated, in the same run.
//
//   a. a UC2 order of 10,000 licences, end to end (median of 5, after a warm-up)
//   b. sync UC2 orders of 1 licence, each for a new customer, 16 callers at once (autocannon):
//      orders per second, median of 3 rounds of 5 s
//
// Why the bare application rather than the reference one (examples/partner-app): the figure is
// the server's own cost of the stage (the command built and stored with its plan, signed, sent,
// its answer settled, the plan applied), which an application answering at once leaves alone.
// The reference application, in `ok` mode, would add its own work to the figure: 10,000 seats
// kept in its store, and an answer naming each licence's resource and login.

import { randomBytes } from "node:crypto";
import autocannon from "autocannon";
import { uc2Request } from "../test/support/examples.js";
import { postgresCpuMs } from "./events.js";
import { readCpuMs, request } from "./support.js";

export const WEBHOOK = {
  big: { licences: 10_000, runs: 5, warmups: 1 },
  small: { connections: 16, warmupSeconds: 2, seconds: 5, rounds: 3 },
};

export interface Side {
  name: "none" | "webhook";
  base: string;
  pid: number;
}

function order(reference: string, licences: number, customerRef: string) {
  const body = uc2Request();
  body.externalReference.id = reference;
  body.customer.externalReference.id = customerRef;
  body.orderItem[0]!.productRef.userServiceQuantity = licences;
  return body;
}

async function placeOrder(side: Side, token: string, body: unknown): Promise<number> {
  const r = await request("POST", `${side.base}/productordering/v2/productOrder`, {
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify(body),
  });
  const answer = JSON.parse(r.body.toString("utf8")) as { state?: string; orderItem?: { productRef?: { userServiceQuantity?: number } }[] };
  if (r.status !== 201 || answer.state !== "completed") {
    throw new Error(`${side.name}: UC2 order answered ${r.status}: ${r.body.toString("utf8").slice(0, 500)}`);
  }
  return r.ms;
}

export interface BigOrderResult {
  ms: Record<Side["name"], number[]>;
  serverCpuMs: Record<Side["name"], number[]>;
  postgresCpuMs: Record<Side["name"], number[]>;
  appCpuMs: number[];
}

/** a. UC2 orders of 10,000 licences, alternated between the two servers (who goes first alternates too). */
export async function benchBigOrders(sides: [Side, Side], token: string, appPid: number, log: (line: string) => void): Promise<BigOrderResult> {
  const tag = randomBytes(4).toString("hex");
  const out: BigOrderResult = { ms: { none: [], webhook: [] }, serverCpuMs: { none: [], webhook: [] }, postgresCpuMs: { none: [], webhook: [] }, appCpuMs: [] };
  for (let i = 0; i < WEBHOOK.big.warmups + WEBHOOK.big.runs; i++) {
    const warm = i < WEBHOOK.big.warmups;
    const cells: string[] = [];
    for (const side of i % 2 === 0 ? sides : ([sides[1], sides[0]] as const)) {
      const cpu = readCpuMs(side.pid);
      const pg = postgresCpuMs();
      const app = readCpuMs(appPid);
      const ms = await placeOrder(side, token, order(`BENCH-WH-${tag}-${side.name}-${i}`, WEBHOOK.big.licences, `BENCH-WH-CUST-${tag}-${side.name}`));
      const serverCpu = readCpuMs(side.pid) - cpu;
      const pgCpu = postgresCpuMs() - pg;
      cells.push(`${side.name} ${ms.toFixed(0)} ms (server CPU ${serverCpu.toFixed(0)} ms, PostgreSQL ${pgCpu.toFixed(0)} ms)`);
      if (warm) continue;
      out.ms[side.name].push(ms);
      out.serverCpuMs[side.name].push(serverCpu);
      out.postgresCpuMs[side.name].push(pgCpu);
      if (side.name === "webhook") out.appCpuMs.push(readCpuMs(appPid) - app);
    }
    log(`  ${warm ? "warm-up" : `run ${i - WEBHOOK.big.warmups + 1}`}: ${cells.join(", ")}`);
  }
  return out;
}

export interface SmallOrderRound {
  side: Side["name"];
  ordersPerSecond: number;
  p50: number;
  p99: number;
  serverCpuUsPerOrder: number;
  postgresCpuUsPerOrder: number;
}

/** b. One autocannon round of sync UC2 orders of 1 licence, each for a new customer; every answer must be `completed`. */
async function smallOrderRound(side: Side, token: string, seconds: number, tag: string): Promise<SmallOrderRound & { orders: number }> {
  let n = 0;
  let completed = 0;
  const wrong: string[] = [];
  const cpu = readCpuMs(side.pid);
  const pg = postgresCpuMs();
  const result = await autocannon({
    url: `${side.base}/productordering/v2/productOrder`,
    connections: WEBHOOK.small.connections,
    duration: seconds,
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
    requests: [
      {
        setupRequest: (req) => {
          n++;
          return { ...req, body: JSON.stringify(order(`BENCH-WHS-${tag}-${n}`, 1, `BENCH-WHS-CUST-${tag}-${n}`)) };
        },
        onResponse: (status, body) => {
          if (status === 201 && (JSON.parse(body) as { state?: string }).state === "completed") completed++;
          else if (wrong.length < 3) wrong.push(`${status} ${body.slice(0, 300)}`);
        },
      },
    ],
  });
  const serverCpu = readCpuMs(side.pid) - cpu;
  const pgCpu = postgresCpuMs() - pg;
  if (result.errors > 0 || result.timeouts > 0 || result.non2xx > 0 || wrong.length > 0) {
    throw new Error(`${side.name}: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx; answers not completed: ${wrong.join(" | ")}`);
  }
  return {
    side: side.name,
    orders: completed,
    ordersPerSecond: completed / seconds,
    p50: result.latency.p50,
    p99: result.latency.p99,
    serverCpuUsPerOrder: (serverCpu * 1000) / completed,
    postgresCpuUsPerOrder: (pgCpu * 1000) / completed,
  };
}

export interface SmallOrderResult {
  rounds: SmallOrderRound[];
  median: Record<Side["name"], SmallOrderRound>;
}

/** b. Rounds alternated between the two servers (who goes first alternates too), after a warm-up of each. */
export async function benchSmallOrders(sides: [Side, Side], token: string, log: (line: string) => void): Promise<SmallOrderResult & { orders: Record<Side["name"], number> }> {
  const tag = randomBytes(4).toString("hex");
  /** Every order completed, warm-ups included: the application must have received as many. */
  const orders = { none: 0, webhook: 0 };
  for (const side of sides) orders[side.name] += (await smallOrderRound(side, token, WEBHOOK.small.warmupSeconds, `${tag}w${side.name}`)).orders;
  const rounds: SmallOrderRound[] = [];
  for (let round = 1; round <= WEBHOOK.small.rounds; round++) {
    for (const side of round % 2 === 1 ? sides : ([sides[1], sides[0]] as const)) {
      const r = await smallOrderRound(side, token, WEBHOOK.small.seconds, `${tag}r${round}${side.name}`);
      orders[side.name] += r.orders;
      const { orders: _n, ...kept } = r;
      rounds.push(kept);
      log(
        `  ${side.name.padEnd(7)} round ${round}: ${r.ordersPerSecond.toFixed(0)} orders/s (p50 ${r.p50} ms, p99 ${r.p99} ms), ` +
          `CPU per order: server ${r.serverCpuUsPerOrder.toFixed(0)} µs, PostgreSQL ${r.postgresCpuUsPerOrder.toFixed(0)} µs`,
      );
    }
  }
  const pick = (name: Side["name"]) => {
    const mine = rounds.filter((r) => r.side === name).sort((a, b) => a.ordersPerSecond - b.ordersPerSecond);
    return mine[Math.floor(mine.length / 2)]!;
  };
  return { rounds, median: { none: pick("none"), webhook: pick("webhook") }, orders };
}

