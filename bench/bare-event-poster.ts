// Baseline of the events-delivery figure: the same number of events POSTed to the same mock
// gateway, with the same token, at the worker's concurrency, by a bare undici client and nothing
// else (no database, no outbox, no ordering). Run by bench/run.ts as a child process, like the
// server, so that it never shares the mock's event loop. Prints one JSON line: {ms, failed}.

import { Agent, request } from "undici";

const url = process.env.EVENT_URL!;
const token = process.env.TOKEN!;
const total = Number(process.env.EVENTS);
const concurrency = Number(process.env.CONCURRENCY);
const tag = process.env.TAG ?? "bare";

const agent = new Agent({ connections: concurrency, pipelining: 1 });
const headers = { authorization: `Bearer ${token}`, accept: "application/json", "content-type": "application/json" };
let next = 0;
let failed = 0;

async function lane(): Promise<void> {
  for (;;) {
    const i = next++;
    if (i >= total) return;
    const body = JSON.stringify({
      id: `ev_${tag}_${i}`,
      type: "updateNotification",
      time: new Date().toISOString(),
      resource: { id: `us_${tag}_${i}`, productRef: { id: `fl_${tag}_${i % 500}` }, benchRun: tag, seq: i, state: "active" },
    });
    const res = await request(url, { method: "POST", headers, body, dispatcher: agent });
    await res.body.dump();
    if (res.statusCode !== 201) failed++;
  }
}

const started = performance.now();
await Promise.all(Array.from({ length: concurrency }, lane));
const ms = performance.now() - started;
process.stdout.write(`${JSON.stringify({ ms, failed })}\n`);
await agent.close();
