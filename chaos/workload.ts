/**
 * Orange's side for the experiments on event delivery: a few fleets, then, per fleet, a stream of
 * requests sent one after the other (UC3 orders adding a licence, suspensions, reactivations),
 * each giving one event on the fleet, so that the order of a fleet's events can be checked. A
 * request that gets no acknowledgement (server down, 503) is sent again with the same reference,
 * as Orange does, until it is acknowledged or the stream gives up.
 */
import type { ServerProcess } from "../test/support/server-process.js";
import { ORDER_PATH, uc2Order } from "../test/support/order-load.js";
import { isAccepted, type SentRequest } from "./audit.js";
import { sleep, uniqueRef, type Experiment } from "./lab.js";

export const UPDATE_PATH = "/userservice/v2/userService/update";
const OFFER = "MBA-CAISSE-PRO";

export interface Fleet {
  fleetId: string;
  licenceIds: string[];
}

export function uc3Order(ref: string, fleetId: string, quantity: number) {
  return {
    externalReference: { type: "orange", id: ref },
    category: "production",
    orderItem: [{ id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: OFFER } }, productRef: { id: fleetId, userServiceQuantity: quantity } }],
  };
}

export function update(ref: string, licenceId: string, externalState: "suspended" | "active") {
  return { externalReference: { type: "orange", id: ref }, userService: [{ id: licenceId, externalState }] };
}

/** UC2 orders (async mode), waited for: the fleets and their licences, as the database holds them. */
export async function prepareFleets(x: Experiment, server: ServerProcess, count: number, sent: SentRequest[]): Promise<Fleet[]> {
  const refs: string[] = [];
  for (let i = 0; i < count; i++) {
    const ref = uniqueRef("FLT");
    const call = await x.call(server, "POST", ORDER_PATH, uc2Order(ref, 2), { label: "prepare fleet" });
    sent.push({ kind: "order", ref, quantity: 2, answers: [call], expect: "completed" });
    if (!isAccepted(call)) throw new Error(`a fleet's first order was not accepted: ${call.status} ${call.text ?? call.error}`);
    refs.push(ref);
  }
  const rows = await x.waitFor(async () => {
    const r = await x.query<{ fleet_id: string; licences: string[] }>(
      `SELECT o.fleet_id, array_agg(l.id ORDER BY l.id) AS licences
         FROM product_order o JOIN licence l ON l.order_id = o.id
        WHERE o.orange_ref = ANY($1::text[]) AND o.state = 'completed' GROUP BY o.fleet_id`,
      [refs],
    );
    return r.length === count ? r : undefined;
  }, 60_000);
  if (!rows) throw new Error("the fleets' first orders were not completed within 60 s");
  return rows.map((r) => ({ fleetId: r.fleet_id, licenceIds: r.licences }));
}

export interface Streams {
  /** Requests sent so far, by every stream. */
  readonly sent: SentRequest[];
  /** Requests acknowledged so far. */
  acknowledged(): number;
  /** Resolves once every stream has sent its last request (or given up). */
  done: Promise<void>;
  stop(): Promise<void>;
}

/**
 * One stream per fleet, `perFleet` requests each. `server()` is asked before every call: after a
 * restart the streams go on with the new process.
 */
export function startFleetStreams(
  x: Experiment,
  server: () => ServerProcess,
  fleets: readonly Fleet[],
  opts: { perFleet: number; pauseMs?: number; retryForMs?: number },
): Streams {
  const sent: SentRequest[] = [];
  let stopping = false;
  const pauseMs = opts.pauseMs ?? 50;
  const retryForMs = opts.retryForMs ?? 60_000;

  async function stream(fleet: Fleet): Promise<void> {
    const licence = fleet.licenceIds[0]!;
    for (let i = 0; i < opts.perFleet && !stopping; i++) {
      const step = i % 3;
      const ref = uniqueRef(step === 0 ? "UC3" : "UPD");
      const request: SentRequest =
        step === 0
          ? { kind: "order", ref, quantity: 1, answers: [], expect: "completed" }
          : { kind: "update", ref, answers: [], expect: "completed" };
      sent.push(request);
      const body = step === 0 ? uc3Order(ref, fleet.fleetId, 1) : update(ref, licence, step === 1 ? "suspended" : "active");
      const path = step === 0 ? ORDER_PATH : UPDATE_PATH;
      const giveUpAt = Date.now() + retryForMs;
      for (;;) {
        const call = await x.call(server(), "POST", path, body, { label: "fleet stream", timeoutMs: 10_000 });
        request.answers.push(call);
        if (isAccepted(call) || Date.now() > giveUpAt || stopping) break;
        await sleep(300);
      }
      await sleep(pauseMs);
    }
  }

  const done = Promise.all(fleets.map(stream)).then(() => undefined);
  return {
    sent,
    acknowledged: () => sent.filter((s) => s.answers.some(isAccepted)).length,
    done,
    async stop() {
      stopping = true;
      await done;
    },
  };
}
