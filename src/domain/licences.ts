/**
 * Reading licences as Orange consults them (userService GET): a fleet's, some by id, one.
 */
import type { Db, Tx } from "../db/sql.js";
import * as licences from "./licences.dal.js";
import type { LicenceRecord } from "./licences.dal.js";
import { orderLike } from "./updates.js";

export type { LicenceRecord };

/** A page of a fleet listing, in creation order: the licences from `offset` on, at most `limit` (all when absent). */
export interface FleetPage {
  offset: number;
  limit?: number;
}

/** One consistent read of a fleet's licences (see readFleet). */
export interface FleetListing {
  /** Licences in the fleet. */
  total: number;
  /** Licences in the page asked for. */
  count: number;
  /**
   * The page's licences in creation order, a chunk per statement, read one chunk ahead of the
   * consumer: one that stops asking leaves the rest of the page unread.
   */
  chunks: AsyncIterator<LicenceRecord[], void, undefined> & { return(): Promise<IteratorResult<LicenceRecord[], void>> };
}

/**
 * A page read at once, as the chunks of a listing: a plain iterator that lets go of the page once
 * taken. With an async generator here, the server's peak RSS over 55 listings of 10,000 licences
 * one after the other (npm run bench, steps 1–3) was 350 MB instead of about 200 MB.
 */
function oneChunk(records: LicenceRecord[]): FleetListing["chunks"] {
  let left: LicenceRecord[] | undefined = records.length > 0 ? records : undefined;
  const done = async (): Promise<IteratorResult<LicenceRecord[], void>> => {
    left = undefined;
    return { done: true, value: undefined };
  };
  return {
    async next() {
      if (left === undefined) return done();
      const value = left;
      left = undefined;
      return { done: false, value };
    },
    return: done,
  };
}

/**
 * Licences per statement of a streamed listing (about 290 kB once rendered); larger chunks cost
 * memory when several listings run at once.
 */
export const FLEET_CHUNK_SIZE = 1000;

/**
 * The largest page read by one statement and answered in one piece, as before listings were
 * streamed (one round trip; about 2.9 MB once rendered, the largest `limit`); above it, a listing
 * is streamed.
 */
export const FLEET_AT_ONCE_MAX = 10_000;

/**
 * Listings streamed at once by default (FLEET_STREAMS_MAX). Each holds a pooled connection while
 * it is sent, and V8's heap grows with the licences rendered: eight 100,000-licence listings at
 * once peaked at 450 MB of RSS, four at 350 MB, one at 320 MB (npm run bench, step 7). Eight
 * asked at once: with four turns they peaked at 364–420 MB over the whole runs of two sessions
 * (385–387 MB with BENCH_ONLY=listing), with two at 355–365 MB; all sent in 2.6–2.8 s either way:
 * the cores are the limit, not the waiting.
 */
export const FLEET_STREAMS_MAX = 2;

export interface FleetListingLimits {
  /** Licences per statement of a streamed listing (default FLEET_CHUNK_SIZE). */
  chunkSize?: number;
  /** The largest page read at once (default FLEET_AT_ONCE_MAX). */
  atOnceMax?: number;
  /** Listings streamed at once; the others wait, in arrival order (default FLEET_STREAMS_MAX). */
  streamsMax?: number;
}

/** Streamed listings of this process: being sent, and waiting for their turn. */
export interface StreamedListings {
  running: number;
  waiting: number;
}

/** At most `max` holders at once; the others wait for a turn, first come first served. */
function turns(max: number): { take(): Promise<() => void>; load(): StreamedListings } {
  let free = max;
  const waiting: (() => void)[] = [];
  return {
    load: () => ({ running: max - free, waiting: waiting.length }),
    async take() {
      if (free > 0) free--;
      else await new Promise<void>((resolve) => waiting.push(resolve));
      let given = false;
      // The turn passes to the first waiting, or is free again.
      return () => {
        if (given) return;
        given = true;
        const next = waiting.shift();
        if (next) next();
        else free++;
      };
    },
  };
}

export function createLicenceQueries(deps: { db: Db; fleetListing?: FleetListingLimits }) {
  const { db } = deps;
  const chunkSize = deps.fleetListing?.chunkSize ?? FLEET_CHUNK_SIZE;
  const atOnceMax = deps.fleetListing?.atOnceMax ?? FLEET_AT_ONCE_MAX;
  const streams = turns(deps.fleetListing?.streamsMax ?? FLEET_STREAMS_MAX);

  /** The page's licences, `chunkSize` at a time from a cursor, the next chunk read while one is used. */
  async function* chunksOf(tx: Tx, fleetId: string, offset: number, count: number): AsyncGenerator<LicenceRecord[], void, undefined> {
    if (count === 0) return;
    await licences.openFleetCursor(tx, fleetId, offset, count);
    let left = count;
    // A chunk read ahead may fail while the consumer is away (connection lost, transaction past
    // its bound): the failure is handled when the consumer comes back for it, not reported as an
    // unhandled rejection meanwhile.
    const readAhead = () => {
      const read = licences.fetchFleetCursor(tx, Math.min(chunkSize, left));
      read.catch(() => undefined);
      return read;
    };
    let next: Promise<LicenceRecord[]> | undefined = readAhead();
    try {
      while (next) {
        const chunk: LicenceRecord[] = await next;
        left -= chunk.length;
        next = chunk.length > 0 && left > 0 ? readAhead() : undefined;
        if (chunk.length > 0) yield chunk;
      }
    } finally {
      // A consumer that stopped early: the chunk read ahead is waited for (and dropped), so that
      // the transaction ends with no statement running.
      await next?.catch(() => undefined);
    }
  }

  /**
   * Reads a page of a fleet's licences in creation order (licence id order), with the fleet's
   * count, from one snapshot: a listing never shows an update half applied nor a licence added
   * after its count, however long it takes to send. Null when the fleet does not exist (`use` is
   * not called).
   *
   * A page of at most `atOnceMax` licences (most fleets) is read with its count by one statement,
   * one snapshot by itself, and given to `use` as one chunk. A larger one is read a chunk at a time
   * (a cursor) in one read-only REPEATABLE READ transaction, inside which `use` runs: the transaction holds its
   * pooled connection until `use` settles, at most the database's transaction bound (after which
   * the next chunk fails). `use` takes the chunks it wants; what it leaves is never read. At most
   * `streamsMax` such listings run at once; the next one begins when one of them has settled.
   */
  async function readFleet<T>(fleetId: string, page: FleetPage, use: (listing: FleetListing) => Promise<T>): Promise<{ value: T } | null> {
    const pageCount = (total: number) => Math.max(0, Math.min(total - page.offset, page.limit ?? Number.POSITIVE_INFINITY));
    const atOnce = await licences.fleetPageAtOnce(db, fleetId, { offset: page.offset, limit: page.limit ?? null }, atOnceMax);
    if (atOnce === null) return null;
    if (atOnce.licences !== null) {
      return { value: await use({ total: atOnce.total, count: atOnce.licences.length, chunks: oneChunk(atOnce.licences) }) };
    }
    // Its turn first: streamed listings beyond FLEET_STREAMS_MAX wait, before their snapshot.
    const done = await streams.take();
    try {
      return await db.transaction(
        async (tx) => {
          // Counted again in the snapshot the chunks are read from.
          const total = await licences.countFleetLicences(tx, fleetId);
          if (total === null) return null;
          const count = pageCount(total);
          return { value: await use({ total, count, chunks: chunksOf(tx, fleetId, page.offset, count) }) };
        },
        { readOnlySnapshot: true },
      );
    } finally {
      done();
    }
  }

  return {
    readFleet,
    /** The streamed listings under way and waiting (the operators' gauge). */
    streamedListings: (): StreamedListings => streams.load(),
    /** The licences that exist among `ids`, in the order asked. */
    listByIds: async (ids: string[]): Promise<LicenceRecord[]> => orderLike(await licences.selectLicences(db, ids), ids),
    getById: async (id: string): Promise<LicenceRecord | null> => (await licences.selectLicences(db, [id]))[0] ?? null,
  };
}

export type LicenceQueries = ReturnType<typeof createLicenceQueries>;
