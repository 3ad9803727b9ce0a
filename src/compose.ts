/**
 * The composition root: every service is built here, once, and the same instances serve the
 * HTTP app (app.ts) and the worker (main.ts). The domain receives its ports here: the outbox and
 * the job queue (src/events), Orange's codecs (src/orange).
 */
import type { Db } from "./db/sql.js";
import { isTransient } from "./db/errors.js";
import type { Catalogue } from "./domain/catalogue.js";
import { createCommandService, type CommandService } from "./domain/commands.js";
import { createLicenceChangeService, type LicenceChangeService } from "./domain/licence-changes.js";
import { createLicenceQueries, type FleetListingLimits, type LicenceQueries } from "./domain/licences.js";
import { commandLeaseMs, createRequestLifecycle, type ProvisioningStage, type RequestLifecycle } from "./domain/lifecycle.js";
import { createOrderHandler, type PlaceOrderCommand } from "./domain/orders.js";
import { createRecordQueries, type RecordQueries } from "./domain/records.js";
import type { InlineRunner, TaskHandler } from "./domain/ports.js";
import { createRequestSweep, createRequestTasks, type RequestJobsLogger } from "./domain/request-jobs.js";
import { createUpdateHandler, type UpdateLicencesCommand } from "./domain/updates.js";
import { createEventOperatorService, type EventOperatorService } from "./events/operator.js";
import { createOutbox } from "./events/outbox.js";
import { jobQueue } from "./events/queue.js";
import { systemClock, type Clock } from "./lib/clock.js";
import { createIdGenerator, type IdGenerator } from "./lib/ids.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { createCodecs, licenceChangeNotification, type Codecs } from "./orange/codecs.js";

export interface ServiceDeps {
  db: Db;
  catalogue: Catalogue;
  /** `note.author` of failed orders and updates. */
  partnerName: string;
  /** Failed runs of an acknowledged request (not transient) before it ends `failed`. */
  requestMaxAttempts: number;
  /** Async requests of at most this many licences are carried out before their acknowledgement, inline (default: AT_ONCE_MAX_LICENCES). */
  atOnceMaxLicences?: number;
  /** The partner's application carries out every order and change (PROVISIONING_MODE=webhook). */
  provisioning?: ProvisioningStage;
  clock?: Clock;
  ids?: IdGenerator;
  log?: RequestJobsLogger;
  /** The process's metrics (main.ts builds them first: the provisioning stage and the worker count into them too). */
  metrics?: Metrics;
  /** How fleet listings are read (tests make them stream sooner); the defaults otherwise. */
  fleetListing?: FleetListingLimits;
  /**
   * How long the sweep leaves a request acknowledged without a job alone: one carried out inline
   * may still be under way in its process (main.ts: the worker's lease, as for a job's run). Default 0.
   */
  inlineGraceMs?: number;
}

export interface Services {
  db: Db;
  catalogue: Catalogue;
  codecs: Codecs;
  orders: RequestLifecycle<PlaceOrderCommand>;
  updates: RequestLifecycle<UpdateLicencesCommand>;
  licences: LicenceQueries;
  licenceChanges: LicenceChangeService;
  events: EventOperatorService;
  /** The commands to the partner's application (PROVISIONING_MODE=webhook). */
  commands: CommandService;
  /** What operators look up: customers, fleets, licences, orders, updates, their timelines. */
  records: RecordQueries;
  /** The worker's tasks of the request lifecycle (process_order, process_update). */
  requestTasks: Record<string, TaskHandler>;
  /** The worker's sweep of acknowledged requests without a live job. */
  sweepRequests: () => Promise<string[]>;
  /** GET /metrics; the domain counts into it through its Telemetry port. */
  metrics: Metrics;
  /**
   * From now on, acknowledged requests are carried out at once by `runner` (the worker of this
   * process) while it has a free slot, instead of waiting for a worker to claim their job.
   */
  runInline(runner: InlineRunner | undefined): void;
}

export function createServices(deps: ServiceDeps): Services {
  const { db, catalogue } = deps;
  const clock = deps.clock ?? systemClock;
  const ids = deps.ids ?? createIdGenerator();
  const outbox = createOutbox({ clock, ids });
  const codecs = createCodecs({ catalogue, partnerName: deps.partnerName });
  const metrics = deps.metrics ?? createMetrics({ db });
  const inline: { current?: InlineRunner } = {};
  const common = { db, clock, ids, outbox, jobs: jobQueue, maxAttempts: deps.requestMaxAttempts, atOnceMaxLicences: deps.atOnceMaxLicences, provisioning: deps.provisioning, telemetry: metrics.telemetry, inline };
  const orders = createRequestLifecycle({ ...common, codec: codecs.order, handler: createOrderHandler({ catalogue, clock, ids }) });
  const updates = createRequestLifecycle({ ...common, codec: codecs.update, handler: createUpdateHandler({ catalogue, clock }) });
  const lifecycles = [orders, updates];
  return {
    db,
    catalogue,
    codecs,
    orders,
    updates,
    licences: createLicenceQueries({ db, fleetListing: deps.fleetListing }),
    licenceChanges: createLicenceChangeService({ db, clock, ids, outbox, notification: licenceChangeNotification }),
    events: createEventOperatorService({ db }),
    commands: createCommandService({ db, lifecycles }),
    records: createRecordQueries({ db }),
    requestTasks: createRequestTasks({ lifecycles, isTransient, log: deps.log }),
    sweepRequests: createRequestSweep({
      lifecycles,
      isTransient,
      log: deps.log,
      db,
      jobs: jobQueue,
      maxAttempts: deps.requestMaxAttempts,
      commandMaxAgeMs: deps.provisioning?.retry.maxAgeMs,
      commandLeaseMs: deps.provisioning ? commandLeaseMs(deps.provisioning.timeoutMs) : undefined,
      graceMs: deps.inlineGraceMs ?? 0,
    }),
    metrics,
    runInline(runner) {
      inline.current = runner;
    },
  };
}
