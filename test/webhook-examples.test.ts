/**
 * The README's example bodies of the commands sent to the partner's application are what the
 * server really sends: the contract's story (UC1, UC2, UC3, suspend, reactivate, swap, delete)
 * played in webhook mode, each command's body compared with its example in the README, ids and
 * times aside. `UPDATE_WEBHOOK_EXAMPLES=1 npx vitest run test/webhook-examples.test.ts` writes
 * the examples again from what the server sent.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readContractExamples } from "../src/contract-examples.js";
import { ORDER_URL, UPDATE_URL } from "./support/fixtures.js";
import { startProvisioned, type Provisioned } from "./support/provisioned.js";

const README = new URL("../README.md", import.meta.url);
const TYPES = ["customer.upserted", "licences.provision", "licences.suspend", "licences.reactivate", "licences.change_offer", "licences.terminate"];
const MARKER = (type: string) => `<!-- webhook example: ${type} -->`;

type Json = Record<string, unknown>;

/** Ids and times differ from run to run: compared by their form only. */
function normalise(value: unknown): unknown {
  if (typeof value === "string") {
    const id = /^([a-z]{2,3})_[0-9a-z]{16,}$/.exec(value);
    if (id) return `${id[1]}_…`;
    if (/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(value)) return "<time>";
    return value;
  }
  if (Array.isArray(value)) return value.map(normalise);
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalise(v)]));
  return value;
}

/** The JSON block after each type's marker in the README. */
function readmeExamples(text: string): Map<string, { start: number; end: number; value: unknown }> {
  const found = new Map<string, { start: number; end: number; value: unknown }>();
  for (const type of TYPES) {
    const at = text.indexOf(MARKER(type));
    if (at < 0) continue;
    const start = text.indexOf("```json\n", at) + "```json\n".length;
    const end = text.indexOf("\n```", start);
    found.set(type, { start, end, value: JSON.parse(text.slice(start, end)) });
  }
  return found;
}

describe("the commands' example bodies in the README", () => {
  let p: Provisioned;
  const sent = new Map<string, Json>();

  beforeAll(async () => {
    p = await startProvisioned({ ORDERING_MODE: "sync", UPDATE_MODE: "sync" });
    const { t } = p;
    const book = readContractExamples();
    const request = (name: string) => structuredClone(book.get(name)!.value) as Json;
    const call = async (url: string, body: Json) => {
      const res = await t.call("POST", url, body);
      expect(res.status, res.text).toBeLessThan(300);
      expect(res.body.state, res.text).toBe("completed");
      return res.body;
    };
    await call(ORDER_URL, request("uc1-request"));
    const uc2 = await call(ORDER_URL, request("uc2-request"));
    const fleetId = uc2.orderItem[0].productRef.id as string;
    const uc3 = request("uc3-request");
    (uc3.orderItem as Json[])[0]!.productRef = { ...((uc3.orderItem as Json[])[0]!.productRef as Json), id: fleetId };
    await call(ORDER_URL, uc3);
    const licences = (await t.db.licence.findMany({ where: { fleetId }, orderBy: { id: "asc" } })).map((l) => l.id);
    // Each update on its own licences, as in the contract: the first suspended then reactivated.
    const update = (name: string, ids: string[]) => {
      const body = request(name);
      const template = (body.userService as Json[])[0]!;
      body.userService = ids.map((id) => ({ ...template, id }));
      return call(UPDATE_URL, body);
    };
    await update("suspend-request", [licences[0]!, licences[1]!]);
    await update("reactivate-request", [licences[0]!]);
    await update("swap-request", [licences[2]!]);
    await update("delete-request", [licences[3]!]);

    const wh = new Webhook(p.secret);
    for (const received of p.partner.received) {
      // Signed as the README says: the application's check passes on the bytes received.
      const body = wh.verify(received.body, received.headers as Record<string, string>) as Json;
      if (!sent.has(body.type as string)) sent.set(body.type as string, body);
    }
  }, 60_000);

  afterAll(async () => p?.close());

  it("has one example per command type, each the body the server sent, ids and times aside", () => {
    expect([...sent.keys()].sort()).toEqual([...TYPES].sort());
    let text = readFileSync(README, "utf8");
    if (process.env.UPDATE_WEBHOOK_EXAMPLES === "1") {
      // From the last block to the first: the offsets of the earlier ones stay right.
      const blocks = [...readmeExamples(text).entries()].sort((a, b) => b[1].start - a[1].start);
      for (const [type, block] of blocks) text = text.slice(0, block.start) + JSON.stringify(sent.get(type), null, 2) + text.slice(block.end);
      writeFileSync(README, text);
    }
    const examples = readmeExamples(text);
    expect([...examples.keys()].sort(), "a README example per command type").toEqual([...TYPES].sort());
    for (const type of TYPES) {
      expect(normalise(examples.get(type)!.value), `the README's ${type}`).toEqual(normalise(sent.get(type)));
    }
  });
});
