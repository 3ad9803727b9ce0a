/**
 * The application's own records: customers, fleets, licences (seats), and, for idempotency, the
 * answer given to every webhook-id. One JSON file, rewritten whole and atomically (a temporary
 * file renamed over the old one) after each change: a crash leaves the old file or the new one,
 * never half of one, and a seat change is never on disk without the answer that records it.
 *
 * Why a file: the example runs anywhere with no database, and its state survives a restart, so
 * a retried command after a restart still gets its first answer. Without a folder the store
 * lives in memory only (tests). A real application keeps the same records in its own database,
 * in one transaction per command.
 */
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";

export interface Customer {
  id: string;
  orangeReference?: string;
  tradingName?: string;
  name?: string;
  organizationCode?: string;
  contacts: Record<string, unknown>[];
  updatedAt: string;
}

export interface Fleet {
  id: string;
  customerId?: string;
  /** As the server sent it: `{ code, name, plan }`. */
  offer?: unknown;
  createdAt: string;
}

export interface Licence {
  id: string;
  fleetId?: string;
  customerId?: string;
  /** active, inactive or terminated, as the server's commands say. */
  state: string;
  offer?: unknown;
  endUser?: unknown;
  realizingResource?: unknown;
  login?: { key: string; value: string };
  createdAt: string;
  updatedAt: string;
  /** Every command applied to it: a command applied twice would show here twice. */
  history: { command: string; type: string; state: string; at: string }[];
}

/** What was answered to one webhook-id: a repeated id gets exactly this again. */
export interface StoredAnswer {
  status: number;
  body: unknown;
  at: string;
}

/** A command answered 202 whose result is still to be reported to the server. */
export interface PendingResult {
  id: string;
  command: { type: string; data: unknown };
  /** What to report: decided by the control settings when the command arrived. */
  outcome: "completed" | "failed";
  reason?: string;
  dueAt: string;
  /** Set once the work is done (and saved), so a restart reports the same result. */
  result?: { outcome: "completed"; licences: unknown[] } | { outcome: "failed"; reason: string };
}

export interface StoreData {
  customers: Record<string, Customer>;
  fleets: Record<string, Fleet>;
  licences: Record<string, Licence>;
  answers: Record<string, StoredAnswer>;
  pendingResults: Record<string, PendingResult>;
}

/** Numbers the temporary files of every store of the process: two stores never share one. */
let tmpFiles = 0;

export class Store {
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    readonly data: StoreData,
    private readonly file: string | undefined,
  ) {}

  /** Opens (or starts) the store in `dir`; in memory when `dir` is undefined. */
  static async open(dir?: string): Promise<Store> {
    const empty: StoreData = { customers: {}, fleets: {}, licences: {}, answers: {}, pendingResults: {} };
    if (dir === undefined) return new Store(empty, undefined);
    await mkdir(dir, { recursive: true });
    const file = join(dir, "partner-app-store.json");
    let text: string | undefined;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    return new Store(text === undefined ? empty : { ...empty, ...(JSON.parse(text) as Partial<StoreData>) }, file);
  }

  /**
   * Writes the whole state; resolves once what was in memory when it was called is on disk.
   * Writes are chained, so an older state never lands after a newer one.
   */
  save(): Promise<void> {
    if (this.file === undefined) return Promise.resolve();
    const file = this.file;
    const tmp = `${file}.${process.pid}.${++tmpFiles}.tmp`;
    const text = JSON.stringify(this.data, null, 2);
    // A failed write fails its caller (who then answers 500), not every later one.
    const next = this.writing
      .catch(() => undefined)
      .then(async () => {
        await writeFile(tmp, text, { flush: true });
        await rename(tmp, file);
      });
    this.writing = next;
    return next;
  }
}
