/**
 * What operators look up: customers, fleets, licences, orders and updates, each listed with
 * filters and pages, read with its timeline, and the search box. Read only: every listing reads
 * its count and its page in one snapshot, so that the two agree.
 */
import type { Db, Queryable } from "../db/sql.js";
import * as commands from "./commands.dal.js";
import type { CommandRow } from "./commands.dal.js";
import * as history from "./history.dal.js";
import type { TimelineRow, TimelineSubject } from "./history.dal.js";
import * as records from "./records.dal.js";
import type {
  CustomerDetailRow,
  CustomerFilter,
  CustomerRow,
  CustomerSortField,
  FleetDetailRow,
  FleetFilter,
  FleetRow,
  FleetSortField,
  FoundRow,
  LicenceFilter,
  LicenceRow,
  LicenceSortField,
  PageRequest,
  RequestDetailRow,
  RequestEventRow,
  RequestFilter,
  RequestKind,
  RequestRow,
  RequestSortField,
} from "./records.dal.js";

export type * from "./records.dal.js";
export type { CommandRow, TimelineRow, TimelineSubject };

/** Most timeline entries a detail carries (the latest); the timeline routes page through the rest. */
export const TIMELINE_IN_DETAIL = 100;

export interface Listed<T> {
  total: number;
  items: T[];
}

export interface Timeline {
  /** The latest entries, oldest first. */
  entries: TimelineRow[];
  /** Entries in the whole timeline (more than `entries` holds when it is long). */
  total: number;
}

export interface RequestDetail {
  request: RequestDetailRow;
  command?: CommandRow;
  events: RequestEventRow[];
  timeline: Timeline;
}

export function createRecordQueries(deps: { db: Db }) {
  const { db } = deps;

  function listed<T>(page: (q: Queryable) => Promise<T[]>, total: (q: Queryable) => Promise<number>): Promise<Listed<T>> {
    return db.transaction(async (tx) => ({ total: await total(tx), items: await page(tx) }), { readOnlySnapshot: true });
  }

  async function latest(q: Queryable, subject: TimelineSubject): Promise<Timeline> {
    const entries = await history.timeline(q, subject, { offset: 0, limit: TIMELINE_IN_DETAIL, newestFirst: true });
    const total = entries.length < TIMELINE_IN_DETAIL ? entries.length : await history.countTimeline(q, subject);
    return { entries: entries.reverse(), total };
  }

  /** One read of a thing and its timeline, in one snapshot. */
  function detail<R>(read: (q: Queryable) => Promise<R | undefined>, subject: TimelineSubject): Promise<{ row: R; timeline: Timeline } | undefined> {
    return db.transaction(
      async (tx) => {
        const row = await read(tx);
        return row === undefined ? undefined : { row, timeline: await latest(tx, subject) };
      },
      { readOnlySnapshot: true },
    );
  }

  async function request(kind: RequestKind, id: string): Promise<RequestDetail | undefined> {
    return db.transaction(
      async (tx) => {
        const row = await records.getRequest(tx, kind, id);
        if (!row) return undefined;
        return {
          request: row,
          command: await commands.commandOfRequest(tx, kind, id),
          events: await records.eventsOfRequest(tx, kind, id),
          timeline: await latest(tx, { of: kind, id }),
        };
      },
      { readOnlySnapshot: true },
    );
  }

  return {
    listCustomers: (f: CustomerFilter, page: PageRequest<CustomerSortField>): Promise<Listed<CustomerRow>> =>
      listed((q) => records.listCustomers(q, f, page), (q) => records.countCustomers(q, f)),
    customer: (id: string): Promise<{ row: CustomerDetailRow; timeline: Timeline } | undefined> =>
      detail((q) => records.getCustomer(q, id), { of: "customer", id }),

    listFleets: (f: FleetFilter, page: PageRequest<FleetSortField>): Promise<Listed<FleetRow>> =>
      listed((q) => records.listFleets(q, f, page), (q) => records.countFleets(q, f)),
    fleet: (id: string): Promise<{ row: FleetDetailRow; timeline: Timeline } | undefined> => detail((q) => records.getFleet(q, id), { of: "fleet", id }),

    listLicences: (f: LicenceFilter, page: PageRequest<LicenceSortField>): Promise<Listed<LicenceRow>> =>
      listed((q) => records.listLicences(q, f, page), (q) => records.countLicences(q, f)),
    licence: (id: string): Promise<{ row: LicenceRow; timeline: Timeline } | undefined> =>
      detail((q) => records.getLicence(q, id), { of: "licence", id }),

    listRequests: (kind: RequestKind, f: RequestFilter, page: PageRequest<RequestSortField>): Promise<Listed<RequestRow>> =>
      listed((q) => records.listRequests(q, kind, f, page), (q) => records.countRequests(q, kind, f)),
    request,

    /** A page of a timeline; undefined when the subject does not exist. */
    async timeline(
      subject: TimelineSubject,
      page: { offset: number; limit: number; newestFirst: boolean },
    ): Promise<Listed<TimelineRow> | undefined> {
      return db.transaction(
        async (tx) => {
          if (!(await exists(tx, subject))) return undefined;
          return { total: await history.countTimeline(tx, subject), items: await history.timeline(tx, subject, page) };
        },
        { readOnlySnapshot: true },
      );
    },

    search: (text: string, page: { offset: number; limit: number }): Promise<Listed<FoundRow>> =>
      listed((q) => records.search(q, text, page), (q) => records.countFound(q, text)),
  };
}

async function exists(q: Queryable, s: TimelineSubject): Promise<boolean> {
  switch (s.of) {
    case "order":
    case "update":
      return (await records.getRequest(q, s.of, s.id)) !== undefined;
    case "fleet":
      return (await records.getFleet(q, s.id)) !== undefined;
    case "customer":
      return (await records.getCustomer(q, s.id)) !== undefined;
    case "licence":
      return (await records.getLicence(q, s.id)) !== undefined;
  }
}

export type RecordQueries = ReturnType<typeof createRecordQueries>;
