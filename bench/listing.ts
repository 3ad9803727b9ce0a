// The large-fleet step of `npm run bench` (bench/run.ts): memory and time of
// GET /userservice/v2/userService?productRefId= on a fleet of 100,000 licences, alone and with 8
// listings at once, on a server process started for this step only (its VmHWM is this step's).

import type pg from "pg";
import { download, median, readCpuMs, type RssSampler } from "./support.js";

export const BIG_LIST = { licences: 100_000, concurrency: 8, sequential: 3 };

export interface BigListingResult {
  answerBytes: number;
  /** One listing at a time: server (HTTP, whole body received) and bare baseline, ms. */
  sequentialMs: number[];
  bareMs: number[];
  sequentialP50: number;
  bareP50: number;
  serverCpuMsPerListing: number;
  /** The concurrent listings: wall time of the whole batch and the time of each listing, ms. */
  concurrentWallMs: number;
  concurrentMs: number[];
  concurrentCpuMs: number;
  /** Peak RSS of the server (sampled RSS and VmHWM) at the end of each phase, MB. */
  peakMbAfterSequential: number;
  peakMbAfterConcurrent: number;
}

/**
 * `listSql` is the query of a listing without the server (the bare baseline): the same rows
 * selected with pg and turned into JSON with one JSON.stringify.
 */
export async function benchBigListing(
  base: string,
  token: string,
  pool: pg.Pool,
  fleetId: string,
  pid: number,
  sampler: RssSampler,
  listSql: string,
): Promise<BigListingResult> {
  const url = `${base}/userservice/v2/userService?productRefId=${encodeURIComponent(fleetId)}`;
  const headers = { authorization: `Bearer ${token}`, accept: "application/json" };

  // The answer is checked once in full; the other answers must have its length and its ends.
  const reference = await download(url, { headers, keep: true });
  if (reference.status !== 200) throw new Error(`GET by fleet answered ${reference.status}: ${reference.head}`);
  const list = JSON.parse(reference.body!.toString("utf8")) as { id?: string; relatedProductRefId?: string }[];
  if (!Array.isArray(list) || list.length !== BIG_LIST.licences || list.some((l) => l.relatedProductRefId !== fleetId)) {
    throw new Error(`GET by fleet answered ${Array.isArray(list) ? list.length : "no"} licences of fleet ${fleetId}`);
  }
  const answerBytes = reference.bytes;
  const check = (r: Awaited<ReturnType<typeof download>>, what: string) => {
    if (r.status !== 200 || r.bytes !== answerBytes || !r.head.startsWith('[{"id":"us_') || !r.tail.endsWith("}]")) {
      throw new Error(`${what}: ${r.status}, ${r.bytes} bytes (expected ${answerBytes}), starting ${r.head} ending ${r.tail}`);
    }
  };

  const sequentialMs: number[] = [];
  const bareMs: number[] = [];
  let cpuMs = 0;
  for (let i = 0; i < BIG_LIST.sequential; i++) {
    const cpuBefore = readCpuMs(pid);
    const r = await download(url, { headers });
    cpuMs += readCpuMs(pid) - cpuBefore;
    check(r, `listing ${i + 1}`);
    sequentialMs.push(r.ms);
    const started = performance.now();
    const rows = await pool.query(listSql, [fleetId]);
    if (JSON.stringify(rows.rows).length === 0) throw new Error("empty JSON");
    bareMs.push(performance.now() - started);
  }
  const peakMbAfterSequential = sampler.phase("concurrent");

  const cpuBefore = readCpuMs(pid);
  const started = performance.now();
  const concurrent = await Promise.all(Array.from({ length: BIG_LIST.concurrency }, () => download(url, { headers })));
  const concurrentWallMs = performance.now() - started;
  const concurrentCpuMs = readCpuMs(pid) - cpuBefore;
  concurrent.forEach((r, i) => check(r, `concurrent listing ${i + 1}`));
  const peakMbAfterConcurrent = sampler.phase("end");

  return {
    answerBytes,
    sequentialMs,
    bareMs,
    sequentialP50: median(sequentialMs),
    bareP50: median(bareMs),
    serverCpuMsPerListing: cpuMs / BIG_LIST.sequential,
    concurrentWallMs,
    concurrentMs: concurrent.map((r) => r.ms),
    concurrentCpuMs,
    peakMbAfterSequential,
    peakMbAfterConcurrent,
  };
}
