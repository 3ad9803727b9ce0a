import { z } from "zod";
import { EVENT_SORT_FIELDS, RESEND_MAX_PER_CALL } from "../events/operator.js";
import {
  CharacteristicSchema,
  DateTimeSchema,
  eachLicenceOnce,
  IndividualSchema,
  LIMITS,
  LoginKeyValueSchema,
  PartnerIdSchema,
  RealizingResourceSchema,
  UserServiceSchema,
} from "../orange/schemas.js";

/**
 * Wire schemas of the operators' admin API (/admin/v1). The licence-change body reuses the
 * shapes of Orange's UC5 operations (contract section 6), plus an optional password that is
 * never stored nor sent. Unlike Orange's routes, unknown fields are rejected: an operator's typo
 * must not pass silently.
 */

const MAX_LICENCES_PER_CHANGE = 1000;

function requiredUnless<T extends { action: string }>(field: keyof T & string, exempt: string) {
  return (op: T, ctx: z.RefinementCtx) => {
    if (op.action !== exempt && op[field] === undefined) {
      ctx.addIssue({ code: "custom", path: [field], message: `is required for action ${JSON.stringify(op.action)}` });
    }
  };
}

export const AdminEndUserOperationSchema = z
  .strictObject({
    action: z.enum(["add", "modify", "swap", "delete"]),
    endUser: IndividualSchema.optional().describe(
      "add/swap: the end user to link (its id is kept only if it is a known end user); modify: the fields to change; delete: not needed",
    ),
  })
  .superRefine(requiredUnless("endUser", "delete"));

export const AdminRealizingResourceOperationSchema = z
  .strictObject({
    action: z.enum(["add", "modify", "swap", "delete"]),
    realizingResource: RealizingResourceSchema.optional().describe(
      "add/swap: the new resource; modify: type and characteristics to change (merged by name); delete: not needed",
    ),
  })
  .superRefine(requiredUnless("realizingResource", "delete"));

export const AdminRightOperationSchema = z
  .strictObject({
    action: z.enum(["add", "modify", "reset"]),
    loginKeyValue: LoginKeyValueSchema.optional().describe("add/modify: the login; reset: optional, must be the licence's login"),
    email: z.email().max(LIMITS.email).describe("where the login or the new password is sent"),
    password: z
      .string()
      .min(1)
      .max(LIMITS.name)
      .optional()
      .describe("accepted for the partner's identity system; never stored, never in an event"),
  })
  .superRefine(requiredUnless("loginKeyValue", "reset"));

export const AdminServiceCharacteristicOperationSchema = z.strictObject({
  action: z.enum(["add", "modify", "delete"]),
  characteristic: CharacteristicSchema.describe("delete: only the name matters"),
});

export const AdminLicenceChangeSchema = z
  .strictObject({
    id: PartnerIdSchema.describe("partner licence id"),
    endUserOperation: AdminEndUserOperationSchema.optional(),
    realizingResourceOperation: AdminRealizingResourceOperationSchema.optional(),
    rightOperation: AdminRightOperationSchema.optional(),
    serviceCharacteristicOperation: AdminServiceCharacteristicOperationSchema.optional(),
  })
  .superRefine((item, ctx) => {
    if (
      item.endUserOperation === undefined &&
      item.realizingResourceOperation === undefined &&
      item.rightOperation === undefined &&
      item.serviceCharacteristicOperation === undefined
    ) {
      ctx.addIssue({
        code: "custom",
        path: [],
        message:
          "must carry at least one operation: endUserOperation, realizingResourceOperation, rightOperation or serviceCharacteristicOperation",
      });
    }
  });

export const AdminLicenceChangesRequestSchema = z
  .strictObject({
    userService: z.array(AdminLicenceChangeSchema).min(1).max(MAX_LICENCES_PER_CHANGE),
  })
  .superRefine(eachLicenceOnce)
  .meta({ id: "AdminLicenceChangesRequest" });
export type AdminLicenceChangesRequest = z.infer<typeof AdminLicenceChangesRequestSchema>;

export const AdminLicenceChangesResponseSchema = z
  .object({
    userService: z.array(UserServiceSchema).describe("the licences after the change, in the order of the request"),
    events: z
      .array(z.object({ id: z.string(), fleetId: z.string() }))
      .describe("the updateNotification events written: one per fleet, in fleet id order"),
  })
  .meta({ id: "AdminLicenceChangesResponse" });

// ---------------------------------------------------------------------------------------------
// Outbox events

export const OutboxStateSchema = z.enum(["pending", "delivered", "dead", "discarded"]);

/**
 * An object whose unknown keys are refused with a 400 naming them (`what`: parameter, field): a
 * typo such as `?fleetID=` must not silently list, or re-send, every event.
 */
function strictNamed<T extends z.ZodRawShape>(what: string, shape: T) {
  const known = Object.keys(shape).join(", ") || "none";
  return z.strictObject(shape, {
    error: (iss) =>
      iss.code === "unrecognized_keys"
        ? `has unknown ${what}${iss.keys.length > 1 ? "s" : ""} ${iss.keys.map((k) => JSON.stringify(k)).join(", ")} (known: ${known})`
        : undefined,
  });
}

const SortSchema = z
  .string()
  .max(LIMITS.name)
  .default("-createdAt")
  .transform((value, ctx) => {
    const keys = value.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
    const out: { field: (typeof EVENT_SORT_FIELDS)[number]; descending: boolean }[] = [];
    for (const key of keys) {
      const descending = key.startsWith("-");
      const field = key.replace(/^[-+]/, "");
      if (!(EVENT_SORT_FIELDS as readonly string[]).includes(field)) {
        ctx.addIssue({
          code: "custom",
          message: `must list fields among ${EVENT_SORT_FIELDS.join(", ")}, each optionally prefixed with - for descending (got ${JSON.stringify(value)})`,
        });
        return z.NEVER;
      }
      out.push({ field: field as (typeof EVENT_SORT_FIELDS)[number], descending });
    }
    return out.length > 0 ? out : [{ field: "createdAt" as const, descending: true }];
  });

export const EventListQuerySchema = strictNamed("parameter", {
  state: OutboxStateSchema.optional(),
  type: z
    .string()
    .min(1)
    .max(LIMITS.name)
    .optional()
    .describe("completedStateNotification, failedStateNotification, updateNotification"),
  fleetId: PartnerIdSchema.optional(),
  orderId: PartnerIdSchema.optional(),
  offset: z.coerce.number().int().min(0).default(0),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  sort: SortSchema.describe(`comma-separated fields among ${EVENT_SORT_FIELDS.join(", ")}; - for descending (default -createdAt)`),
});

// The same fields as the listing's, whatever rules they get there.
const { type, fleetId, orderId, offset, limit } = EventListQuerySchema.shape;

export const HeldKeysQuerySchema = strictNamed("parameter", { offset, limit });

/** The listing's filters; only dead events can be re-sent, so state may only say so. */
export const BulkResendRequestSchema = strictNamed("field", {
  state: z
    .literal("dead", { error: 'must be "dead": only dead events can be re-sent' })
    .optional()
    .describe("dead (the default): only dead events can be re-sent"),
  type,
  fleetId,
  orderId,
}).meta({ id: "AdminBulkResendRequest" });

export const BulkResendResponseSchema = z
  .object({
    resent: z.number().int().describe(`events put back in the queue by this call (at most ${RESEND_MAX_PER_CALL})`),
    remaining: z.number().int().describe("dead events still matching the filter: call again to re-send them"),
    events: z
      .array(z.object({ id: z.string(), orderingKey: z.string() }))
      .optional()
      .describe("the events re-sent, oldest first"),
  })
  .meta({ id: "AdminBulkResendResponse" });

export const DiscardRequestSchema = strictNamed("field", {
  reason: z.string().min(1).max(1000).optional().describe("why the event is not to be delivered; kept with the event"),
}).meta({ id: "AdminDiscardRequest" });

export const EventParamsSchema = z.object({ id: PartnerIdSchema });

export const EventBodySchema = z.object({
  id: z.string(),
  type: z.string(),
  time: z.string(),
  resource: z.unknown(),
});

export const EventSchema = z
  .object({
    id: z.string().describe("the event id Orange receives"),
    api: z.enum(["productordering", "userservice"]),
    type: z.string(),
    state: OutboxStateSchema,
    orderingKey: z.string().describe("delivery order key: the fleet id, else the order id"),
    fleetId: z.string().optional(),
    orderId: z.string().optional(),
    updateId: z.string().optional(),
    attempts: z.number().int().describe("delivery attempts since the event was created or last re-sent"),
    nextAttemptAt: DateTimeSchema.optional().describe("while pending"),
    lastError: z.string().optional(),
    lastStatus: z.number().int().optional(),
    lastRequestId: z.string().optional().describe("Orange's X-OAPI-Request-Id of the last answer"),
    lastResponseBody: z.string().optional(),
    createdAt: DateTimeSchema,
    deliveredAt: DateTimeSchema.optional(),
    deadAt: DateTimeSchema.optional(),
    resentAt: DateTimeSchema.optional().describe("last re-send by an operator (the retry age bound counts from the latest of createdAt, resentAt and releasedAt)"),
    discardedAt: DateTimeSchema.optional().describe("when an operator discarded the dead event (state discarded)"),
    discardedBy: z.string().optional().describe("who discarded it: the admin credential in use"),
    discardReason: z.string().optional().describe("why, as the operator gave it"),
    releasedAt: DateTimeSchema.optional().describe(
      "when an operator released the fleet this event waited in behind a dead event (re-send or discard); the retry age bound counts from the latest of createdAt, resentAt and this",
    ),
    body: EventBodySchema.describe("the envelope as sent to Orange"),
  })
  .meta({ id: "OutboxEvent" });

export const EventListSchema = z.array(EventSchema);

export const DeliveryAttemptSchema = z
  .object({
    attempt: z.number().int(),
    workerId: z.string().optional(),
    startedAt: DateTimeSchema,
    finishedAt: DateTimeSchema.optional(),
    outcome: z.enum(["delivered", "retry", "park"]).optional().describe("absent while running or when its worker died"),
    status: z.number().int().optional(),
    requestId: z.string().optional(),
    responseBody: z.string().optional(),
    error: z.string().optional(),
  })
  .meta({ id: "EventDeliveryAttempt" });

export const EventDetailSchema = EventSchema.extend({
  heldBy: z
    .string()
    .optional()
    .describe("a pending event waiting behind a dead event of its ordering key: that event's id (re-send or discard it)"),
  deliveryAttempts: z.array(DeliveryAttemptSchema).min(1).optional().describe("oldest first; absent before the first attempt"),
}).meta({
  id: "OutboxEventDetail",
});

export const HeldKeySchema = z
  .object({
    orderingKey: z.string().describe("the fleet id, else the order or update id"),
    since: DateTimeSchema.describe("when the event holding the key was parked"),
    waiting: z.number().int().describe("pending events of the key waiting behind it"),
    event: EventSchema.describe("the key's first dead event: re-send it (it goes first) or discard it to release the key"),
  })
  .meta({ id: "HeldOrderingKey" });

export const HeldKeyListSchema = z.array(HeldKeySchema);

// ---------------------------------------------------------------------------------------------
// Commands to the partner's application (PROVISIONING_MODE=webhook)

export const CommandStateSchema = z.enum(["queued", "sending", "waiting", "retrying", "done", "refused", "parked"]);

export const CommandListQuerySchema = strictNamed("parameter", {
  state: CommandStateSchema.optional(),
  type: z.string().min(1).max(LIMITS.name).optional().describe("customer.upserted, licences.provision, licences.suspend…"),
  requestId: PartnerIdSchema.optional().describe("the order (po_…) or update (upd_…) the command carries out"),
  fleetId: PartnerIdSchema.optional().describe("commands of one fleet (its lane)"),
  offset,
  limit,
});

export const CommandParamsSchema = z.object({ id: PartnerIdSchema.describe("the command's id: the webhook-id the application received") });

const AppLicenceSchema = z
  .strictObject({
    id: PartnerIdSchema.describe("a licence of the command"),
    realizingResource: RealizingResourceSchema.optional(),
    login: LoginKeyValueSchema.optional(),
    serviceCharacteristic: z.array(CharacteristicSchema).max(100).optional(),
  })
  .meta({ id: "AdminAppLicence" });

export const CommandResultRequestSchema = strictNamed("field", {
  outcome: z.enum(["completed", "failed"]).describe("completed: the application carried it out; failed: it did not"),
  reason: z.string().min(1).max(LIMITS.text).optional().describe("failed: why, as Orange will read it"),
  licences: z.array(AppLicenceSchema).max(100_000).optional().describe("completed: what the application tells of the licences"),
})
  .refine((r) => r.outcome === "completed" || r.reason !== undefined, { message: "is required when outcome is failed", path: ["reason"] })
  .meta({ id: "AdminCommandResult" });

const CommandAttemptSchema = z.object({
  attempt: z.number().int(),
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  outcome: z.string().optional().describe("done | accepted | refused | retry | rejected | interrupted"),
  status: z.number().int().optional(),
  error: z.string().optional(),
  responseBody: z.string().optional(),
  durationMs: z.number().int().optional(),
});

export const CommandSchema = z
  .object({
    id: z.string(),
    requestKind: z.enum(["order", "update"]),
    requestId: z.string(),
    type: z.string().optional(),
    lanes: z.array(z.string()),
    state: CommandStateSchema,
    attempts: z.number().int(),
    nextAttemptAt: z.string().optional().describe("retrying: when the next attempt goes"),
    lastStatus: z.number().int().optional(),
    lastError: z.string().optional(),
    endedBy: z.string().optional().describe("who ended or re-sent it by hand (admin, application)"),
    createdAt: z.string(),
    preparedAt: z.string().optional(),
    finishedAt: z.string().optional(),
  })
  .meta({ id: "AdminCommand" });

export const CommandListSchema = z.array(CommandSchema);

export const CommandDetailSchema = CommandSchema.extend({
  body: z.unknown().optional().describe("the body sent to the application, on every attempt"),
  result: z.unknown().optional().describe("what the application told of the licences"),
  attemptList: z.array(CommandAttemptSchema),
}).meta({ id: "AdminCommandDetail" });

// ---------------------------------------------------------------------------------------------
// What operators look up: customers, fleets, licences, orders, updates, their timelines, search

/**
 * `sort`: one field of `fields`, `-` in front for descending; an unknown field is refused with a
 * 400 naming it and the known ones.
 */
function sortOf<const F extends string>(fields: readonly F[], byDefault: `${"" | "-"}${NoInfer<F>}`) {
  return z
    .string()
    .max(LIMITS.name)
    .default(byDefault)
    .transform((value, ctx) => {
      const descending = value.startsWith("-");
      const field = value.replace(/^[-+]/, "");
      if (!(fields as readonly string[]).includes(field)) {
        ctx.addIssue({
          code: "custom",
          message: `has unknown field ${JSON.stringify(field)}: sort by one of ${fields.join(", ")}, - in front for descending`,
        });
        return z.NEVER;
      }
      return { field: field as F, descending };
    })
    .describe(`one of ${fields.join(", ")}; - in front for descending (default ${byDefault})`);
}

const Ref = z.string().min(1).max(LIMITS.orangeRef);
const Code = z.string().min(1).max(LIMITS.offerCode);
const RequestStateSchema = z.enum(["acknowledged", "completed", "failed"]);

export const CustomerListQuerySchema = strictNamed("parameter", {
  orangeRef: Ref.optional().describe("Orange's customer reference, exactly"),
  name: z.string().min(1).max(LIMITS.name).optional().describe("a part of the trading name or of the name, whatever the case"),
  organizationCode: z.string().min(1).max(LIMITS.name).optional().describe("the registration code (SIREN/SIRET), exactly"),
  offset,
  limit,
  sort: sortOf(["createdAt", "orangeRef", "tradingName"], "-createdAt"),
});

export const FleetListQuerySchema = strictNamed("parameter", {
  customerId: PartnerIdSchema.optional(),
  offerCode: Code.optional().describe("the offer the fleet was first ordered with"),
  offset,
  limit,
  sort: sortOf(["createdAt"], "-createdAt"),
});

export const LicenceListQuerySchema = strictNamed("parameter", {
  state: z.enum(["active", "inactive", "terminated"]).optional(),
  offerCode: Code.optional(),
  fleetId: PartnerIdSchema.optional(),
  customerId: PartnerIdSchema.optional(),
  orderId: PartnerIdSchema.optional().describe("the order that created the licences"),
  endUserEmail: z.string().min(1).max(LIMITS.email).optional().describe("the end user's e-mail, whatever the case"),
  offset,
  limit,
  sort: sortOf(["id"], "-id").describe("id (ids are time-ordered: creation order); - in front for descending (default -id, newest first)"),
});

/** A date range of reception: from (included) to (excluded). */
const receivedBetween = (what: string) => ({
  from: DateTimeSchema.optional().describe(`${what} received at or after this instant`),
  to: DateTimeSchema.optional().describe(`${what} received before this instant`),
});
const rangeInOrder: [(q: { from?: string; to?: string }) => boolean, { message: string; path: string[] }] = [
  (q) => q.from === undefined || q.to === undefined || Date.parse(q.from) <= Date.parse(q.to),
  { message: "must not be earlier than from", path: ["to"] },
];

export const OrderListQuerySchema = strictNamed("parameter", {
  state: RequestStateSchema.optional(),
  useCase: z.enum(["UC1", "UC2", "UC3"]).optional(),
  orangeRef: Ref.optional().describe("Orange's order reference, exactly"),
  customerId: PartnerIdSchema.optional(),
  fleetId: PartnerIdSchema.optional(),
  ...receivedBetween("orders"),
  offset,
  limit,
  sort: sortOf(["createdAt"], "-createdAt"),
}).refine(...rangeInOrder);

export const UpdateListQuerySchema = strictNamed("parameter", {
  state: RequestStateSchema.optional(),
  orangeRef: Ref.optional().describe("Orange's update reference, exactly"),
  licenceId: PartnerIdSchema.optional().describe("the updates that named this licence"),
  ...receivedBetween("updates"),
  offset,
  limit,
  sort: sortOf(["createdAt"], "-createdAt"),
}).refine(...rangeInOrder);

export const TimelineQuerySchema = strictNamed("parameter", {
  offset,
  limit,
  sort: sortOf(["at"], "at").describe("at (oldest first, the default) or -at (newest first)"),
});

export const SearchQuerySchema = strictNamed("parameter", {
  q: z.string().trim().min(1).max(LIMITS.orangeRef).describe("a partner id (po_, upd_, cu_, ct_, fl_, us_, eu_, ev_, pc_) or an Orange reference"),
  offset,
  limit,
});

export const RecordParamsSchema = z.object({ id: PartnerIdSchema });

const TimelineEntrySchema = z
  .object({
    at: DateTimeSchema,
    kind: z
      .string()
      .describe(
        "request.received, request.replayed, request.answered, request.completed, request.failed, request.run-failed, " +
          "licence.created, licence.changed, licences.changed, command.prepared, command.attempt, command.parked, command.ended, " +
          "command.retried, event.written, event.attempt, event.dead, event.resent, event.discarded",
      ),
    summary: z.string().describe("the entry in words"),
    actor: z.string().optional().describe("who acted: orange, or the admin API's credential (admin, application)"),
    requestId: z.string().optional().describe("the order (po_…) or update (upd_…)"),
    customerId: z.string().optional(),
    fleetId: z.string().optional(),
    licenceId: z.string().optional(),
    eventId: z.string().optional(),
    commandId: z.string().optional(),
    data: z.record(z.string(), z.unknown()).optional().describe("what the entry recorded (a licence's before and after…)"),
  })
  .meta({ id: "AdminTimelineEntry" });

export const TimelineSchema = z.array(TimelineEntrySchema);

/** A detail's timeline: the latest entries, oldest first; the timeline route pages through all of them. */
const timelineFields = {
  timeline: TimelineSchema.optional().describe(`the latest entries (at most 100), oldest first`),
  timelineTotal: z.number().int().describe("entries in the whole timeline: GET …/timeline pages through them"),
};

const CustomerSchema = z
  .object({
    id: z.string(),
    orangeRef: z.string(),
    tradingName: z.string().optional(),
    name: z.string().optional(),
    organizationCode: z.string().optional(),
    fleets: z.number().int(),
    createdAt: DateTimeSchema,
    updatedAt: DateTimeSchema,
  })
  .meta({ id: "AdminCustomer" });

export const CustomerListSchema = z.array(CustomerSchema);

export const CustomerDetailSchema = CustomerSchema.extend({
  postalAddress: z.unknown().optional(),
  characteristic: z.unknown().optional(),
  contacts: z
    .array(
      z.object({
        id: z.string(),
        orangeRef: z.string().optional(),
        role: z.string().optional(),
        title: z.string().optional(),
        givenName: z.string().optional(),
        familyName: z.string().optional(),
        email: z.string().optional(),
      }),
    )
    .optional(),
  fleetList: z.array(z.object({ id: z.string(), offerCode: z.string(), createdAt: DateTimeSchema, licences: z.number().int() })).optional(),
  ...timelineFields,
}).meta({ id: "AdminCustomerDetail" });

const FleetSchema = z
  .object({
    id: z.string(),
    customerId: z.string(),
    customerOrangeRef: z.string(),
    customerTradingName: z.string().optional(),
    offerCode: z.string(),
    licences: z.number().int(),
    createdAt: DateTimeSchema,
    updatedAt: DateTimeSchema,
  })
  .meta({ id: "AdminFleet" });

export const FleetListSchema = z.array(FleetSchema);

export const FleetDetailSchema = FleetSchema.extend({
  characteristic: z.unknown().optional(),
  licencesByState: z
    .object({ active: z.number().int().optional(), inactive: z.number().int().optional(), terminated: z.number().int().optional() })
    .optional()
    .describe("how many licences the fleet has in each state (a state it has none in is left out)"),
  ...timelineFields,
}).meta({ id: "AdminFleetDetail" });

const LicenceSchema = z
  .object({
    id: z.string(),
    fleetId: z.string(),
    customerId: z.string(),
    orderId: z.string().describe("the order that created it"),
    state: z.enum(["active", "inactive", "terminated"]),
    externalState: z.string().optional().describe("the last state Orange asked for"),
    offerCode: z.string(),
    endUser: z.record(z.string(), z.unknown()).optional(),
    realizingResource: z.record(z.string(), z.unknown()).optional(),
    login: z.record(z.string(), z.unknown()).optional(),
    serviceCharacteristic: z.array(z.unknown()).optional(),
    createdAt: DateTimeSchema,
    updatedAt: DateTimeSchema,
    terminatedAt: DateTimeSchema.optional(),
  })
  .meta({ id: "AdminLicence" });

export const LicenceListSchema = z.array(LicenceSchema);

export const LicenceDetailSchema = LicenceSchema.extend({
  history: TimelineSchema.optional().describe(
    "the licence over time: licence.created (its order, what it held) then licence.changed (before and after: state, offer, end user, login, technical resource), oldest first",
  ),
  historyTotal: z.number().int().describe("entries in the whole history: GET …/timeline pages through them"),
}).meta({ id: "AdminLicenceDetail" });

const RequestSchemaFields = {
  id: z.string(),
  orangeRef: z.string().optional(),
  idempotencyKey: z.string().optional().describe("when it is not Orange's reference: the Idempotency-Key header"),
  state: RequestStateSchema,
  answerMode: z.string().optional().describe("sync, async or auto: how Orange hears the outcome"),
  failureReason: z.string().optional().describe("failed: why, as Orange was told"),
  attempts: z.number().int().describe("failed runs of the asynchronous job"),
  lastError: z.string().optional().describe("the last technical error of a run (operators only)"),
  createdAt: DateTimeSchema,
  completedAt: DateTimeSchema.optional(),
};

const OrderSchema = z
  .object({
    ...RequestSchemaFields,
    useCase: z.enum(["UC1", "UC2", "UC3"]),
    customerId: z.string().optional(),
    fleetId: z.string().optional(),
    quantity: z.number().int().optional(),
  })
  .meta({ id: "AdminOrder" });

const UpdateSchema = z
  .object({ ...RequestSchemaFields, licences: z.number().int().describe("licences named by the update") })
  .meta({ id: "AdminUpdate" });

export const OrderListSchema = z.array(OrderSchema);
export const UpdateListSchema = z.array(UpdateSchema);

const RequestEventSchema = z.object({
  id: z.string(),
  type: z.string(),
  state: OutboxStateSchema,
  fleetId: z.string().optional(),
  attempts: z.number().int(),
  lastStatus: z.number().int().optional(),
  lastError: z.string().optional(),
  createdAt: DateTimeSchema,
  deliveredAt: DateTimeSchema.optional(),
  deadAt: DateTimeSchema.optional(),
});

const requestDetailFields = {
  request: z.unknown().describe("the request as Orange sent it"),
  answer: z.unknown().optional().describe("what Orange was answered (the final state, or acknowledged)"),
  command: CommandSchema.optional().describe("PROVISIONING_MODE=webhook: the command to the partner's application"),
  events: z.array(RequestEventSchema).optional().describe("the events that told Orange, in the order written"),
  ...timelineFields,
};

export const OrderDetailSchema = OrderSchema.extend(requestDetailFields).meta({ id: "AdminOrderDetail" });
export const UpdateDetailSchema = UpdateSchema.extend({
  ...requestDetailFields,
  licenceIds: z.array(z.string()).optional(),
}).meta({ id: "AdminUpdateDetail" });

export const SearchResultSchema = z
  .array(
    z
      .object({
        kind: z.enum(["order", "update", "customer", "contact", "fleet", "licence", "event", "command"]),
        id: z.string(),
        label: z.string(),
        href: z.string().describe("where to read it in this API"),
      })
      .meta({ id: "AdminSearchResult" }),
  )
  .meta({ id: "AdminSearchResults" });

// ---------------------------------------------------------------------------------------------
// The overview: what an operator on call looks at first (the console's first page)

/** Counts by state, every state present (0 when none). */
const countsOf = <S extends string>(states: readonly S[], what: string) =>
  z.strictObject(Object.fromEntries(states.map((s) => [s, z.number().int().min(0)])) as Record<S, z.ZodNumber>).describe(`${what} by state`);

export const OverviewQuerySchema = strictNamed("parameter", {});

export const OverviewSchema = z
  .object({
    at: DateTimeSchema.describe("when these figures were read"),
    orders: countsOf(RequestStateSchema.options, "Orange's orders"),
    updates: countsOf(RequestStateSchema.options, "Orange's updates"),
    events: countsOf(OutboxStateSchema.options, "events to Orange"),
    commands: countsOf(CommandStateSchema.options, "commands to the partner's application (PROVISIONING_MODE=webhook)"),
    oldestPendingEvent: z
      .object({
        id: z.string(),
        type: z.string(),
        orderingKey: z.string(),
        fleetId: z.string().optional(),
        orderId: z.string().optional(),
        updateId: z.string().optional(),
        attempts: z.number().int(),
        createdAt: DateTimeSchema,
        nextAttemptAt: DateTimeSchema,
        ageSeconds: z.number().min(0).describe("since it was written"),
        lastStatus: z.number().int().optional(),
        lastError: z.string().optional(),
      })
      .optional()
      .describe("the oldest pending event not held behind a dead one (absent when none): what delivery is stuck on"),
    parkedEvents: z
      .object({ total: z.number().int().min(0), items: z.array(EventSchema).optional() })
      .describe("dead events (re-send or discard them), last parked first; items: the first 10 (absent when none)"),
    heldFleets: z
      .object({ total: z.number().int().min(0), items: z.array(HeldKeySchema).optional() })
      .describe("ordering keys a dead event holds, held longest first; items: the first 10 (absent when none)"),
    lastCalls: z
      .array(
        z.object({
          kind: z.enum(["order", "update"]),
          id: z.string(),
          orangeRef: z.string().optional(),
          useCase: z.string().optional(),
          state: RequestStateSchema,
          failureReason: z.string().optional(),
          answerMode: z.string().optional(),
          receivedAt: DateTimeSchema,
        }),
      )
      .optional()
      .describe("the last orders and updates Orange sent, newest first (at most 10; absent when none)"),
  })
  .meta({ id: "AdminOverview" });
