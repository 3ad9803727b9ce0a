import { z } from "zod";

/**
 * Orange Business Applications 2.2 wire schemas, documented in docs/orange-contract.md (the
 * "contract section N" of comments across the code).
 *
 * The one place that knows the shape of Orange's payloads. Requests are parsed with loose
 * objects (lenient in: unknown fields are accepted and kept in the stored raw request);
 * responses are plain objects built by ./mapping.ts (exact out). The same schemas are meant to
 * be reused by the conformance simulator, so they import nothing from the server.
 */

// ---------------------------------------------------------------------------------------------
// Input limits
//
// Every request string fits what PostgreSQL can store and index: the longest identifier (an Orange
// reference, 255 characters, at most 1,020 bytes in UTF-8) stays well under the 2,704 bytes of a
// btree index row, and nothing but free text gets near a page. NUL and lone surrogates (which
// PostgreSQL's text cannot hold) and JSON nested deeper than MAX_JSON_DEPTH are refused for every
// string and every route, unknown fields included, by the validator (./validation.ts).

/** The documented maxima (README, "Input limits"), in characters. */
export const LIMITS = {
  /** Orange's identifiers (externalReference.id, order item id) and the Idempotency-Key header: indexed. */
  orangeRef: 255,
  /** Ids this server generates (fleet, licence, event…: 24 characters today); a longer one is none of ours. */
  partnerId: 64,
  /** Orange offer codes (productOffering.externalReference.id). */
  offerCode: 100,
  /** E-mail addresses (RFC 5321 path limit). */
  email: 254,
  /** Names, titles, roles, codes, address lines, characteristic names and other short strings. */
  name: 255,
  /** Free text: note text, characteristic values. */
  text: 4000,
} as const;

/** Nesting depth of a request body (objects and arrays); deeper bodies are refused before anything recurses. */
export const MAX_JSON_DEPTH = 64;

const Name = z.string().max(LIMITS.name);
const NonEmptyName = z.string().min(1).max(LIMITS.name);
const OrangeRef = z.string().min(1).max(LIMITS.orangeRef);
/** An id sent along with a record (contact, end user, order item): kept as sent, possibly empty. */
const SentId = z.string().max(LIMITS.orangeRef);
/** A partner id sent back by Orange (fleet, licence): never empty, never longer than ours. */
export const PartnerIdSchema = z.string().min(1).max(LIMITS.partnerId);
const Email = z.string().max(LIMITS.email);
const Text = z.string().max(LIMITS.text);

// ---------------------------------------------------------------------------------------------
// Shared building blocks

/** ISO 8601 date-time with an offset; Orange sends UTC with milliseconds. */
export const DateTimeSchema = z.iso
  .datetime({ offset: true })
  .describe("ISO 8601 date-time, e.g. 2026-05-02T09:15:02.345Z");

export const ExternalReferenceSchema = z
  .looseObject({
    type: NonEmptyName.describe('"orange" for Orange\'s identifiers'),
    id: OrangeRef,
  })
  .meta({ id: "ExternalReference" });
export type ExternalReference = z.infer<typeof ExternalReferenceSchema>;

/** Orange sends either one reference or an array of them. */
export const ExternalReferenceFieldSchema = z.union([ExternalReferenceSchema, z.array(ExternalReferenceSchema).min(1)], {
  // The wording of a rejection (./validation.ts): a union names its forms.
  error: 'must be an object {"type": "orange", "id": "…"} or a non-empty array of such objects',
});
export type ExternalReferenceField = z.infer<typeof ExternalReferenceFieldSchema>;

export const CharacteristicSchema = z
  .looseObject({ name: NonEmptyName, value: Text })
  .meta({ id: "Characteristic" });
export type Characteristic = z.infer<typeof CharacteristicSchema>;

export const NoteSchema = z
  .looseObject({
    text: Text,
    date: DateTimeSchema.optional(),
    author: Name.optional(),
  })
  .meta({ id: "Note" });
export type Note = z.infer<typeof NoteSchema>;

/** A note in an answer: Orange's note echoed, or the reason of a failure, which may list many ids. */
export const ResultNoteSchema = z
  .object({
    text: z.string(),
    date: DateTimeSchema.optional(),
    author: z.string().optional(),
  })
  .meta({ id: "ResultNote" });

export const PhoneNumberSchema = z.looseObject({ cc: Name, sn: Name });

export const PostalAddressSchema = z.looseObject({
  streetAddress: Name.optional(),
  postcode: Name.optional(),
  locality: Name.optional(),
  country: Name.optional(),
});

export const IndividualSchema = z
  .looseObject({
    id: SentId.optional(),
    externalReference: ExternalReferenceFieldSchema.optional(),
    role: Name.optional(),
    title: Name.optional(),
    givenName: Name.optional(),
    familyName: Name.optional(),
    email: Email.optional(),
    fixedTelephoneNumber: PhoneNumberSchema.optional(),
    mobileNumber: PhoneNumberSchema.optional(),
    characteristic: z.array(CharacteristicSchema).optional(),
  })
  .meta({ id: "Individual" });
export type Individual = z.infer<typeof IndividualSchema>;

export const OrganizationSchema = z
  .looseObject({
    id: SentId.optional(),
    externalReference: ExternalReferenceFieldSchema.describe("Orange's customer id"),
    tradingName: Name.optional(),
    name: Name.optional(),
    organizationCode: Name.optional().describe("company registration number (SIREN/SIRET)"),
    postalAddress: PostalAddressSchema.optional(),
    characteristic: z.array(CharacteristicSchema).optional(),
  })
  .meta({ id: "Organization" });
export type Organization = z.infer<typeof OrganizationSchema>;

/** [decision] A relatedParty entry with role `customer` is accepted as the customer. */
export const RelatedPartySchema = z.looseObject({
  role: Name.optional(),
  externalReference: ExternalReferenceFieldSchema.optional(),
});

/** Orange's offer code in an externalReference. */
export const OfferReferenceSchema = z
  .looseObject({
    type: NonEmptyName.describe('"orange"'),
    id: z.string().min(1).max(LIMITS.offerCode).describe("the offer code"),
  })
  .meta({ id: "OfferReference" });

export const ProductOfferingRefSchema = z
  .looseObject({
    name: Name.optional(),
    externalReference: OfferReferenceSchema.describe("Orange's offer code"),
  })
  .meta({ id: "ProductOfferingRef" });
export type ProductOfferingRef = z.infer<typeof ProductOfferingRefSchema>;

export const RealizingResourceSchema = z
  .looseObject({
    type: NonEmptyName.describe("url, email, mobile, imei…"),
    characteristic: z.array(CharacteristicSchema).optional(),
  })
  .meta({ id: "RealizingResource" });
export type RealizingResource = z.infer<typeof RealizingResourceSchema>;

export const LoginKeyValueSchema = z
  .looseObject({ key: z.enum(["login", "organizationCode"]), value: NonEmptyName })
  .meta({ id: "LoginKeyValue" });
export type LoginKeyValue = z.infer<typeof LoginKeyValueSchema>;

// ---------------------------------------------------------------------------------------------
// ProductOrder (contract section 2)

export const ProductRefSchema = z.looseObject({
  id: PartnerIdSchema.optional().describe("the fleet id (productRefId): absent in UC2, present in UC3"),
  userServiceQuantity: z
    .number()
    .int()
    .min(1, "must be an integer >= 1")
    .describe("number of new licences to add"),
  characteristic: z.array(CharacteristicSchema).optional(),
});

export const EndUserConfigurationSchema = z.looseObject({
  endUser: IndividualSchema.optional(),
  realizingResource: RealizingResourceSchema.optional(),
});

export const OrderItemSchema = z
  .looseObject({
    id: SentId.optional(),
    action: NonEmptyName.describe('"add"; any other value fails the order'),
    state: Name.optional(),
    productOffering: ProductOfferingRefSchema,
    productRef: ProductRefSchema,
    endUserConfiguration: z.array(EndUserConfigurationSchema).optional(),
  })
  .superRefine((item, ctx) => {
    const n = item.endUserConfiguration?.length ?? 0;
    const quantity = item.productRef.userServiceQuantity;
    // Only meaningful once the quantity itself is valid (its own issue is reported otherwise).
    if (Number.isInteger(quantity) && quantity >= 1 && n > quantity) {
      ctx.addIssue({
        code: "custom",
        path: ["endUserConfiguration"],
        message: `must have at most productRef.userServiceQuantity (${item.productRef.userServiceQuantity}) entries (got ${n})`,
      });
    }
  });

export const ProductOrderRequestSchema = z
  .looseObject({
    externalReference: ExternalReferenceFieldSchema.optional().describe("Orange's order reference"),
    category: Name.optional().describe("production, trial, …"),
    state: z.unknown().optional().describe("ignored in requests"),
    orderDate: DateTimeSchema.optional(),
    requestedStartDate: DateTimeSchema.optional(),
    note: NoteSchema.optional(),
    customer: OrganizationSchema.optional(),
    relatedParty: z.array(RelatedPartySchema).optional(),
    relatedContact: z.array(IndividualSchema).optional(),
    orderItem: z.array(OrderItemSchema).max(1).optional(),
  })
  .meta({ id: "ProductOrderRequest" });
export type ProductOrderRequest = z.infer<typeof ProductOrderRequestSchema>;

export const OrderStateSchema = z.enum(["acknowledged", "completed", "failed"]);

const ResponseIndividualSchema = IndividualSchema.extend({ id: z.string() });

export const ProductOrderResponseSchema = z
  .object({
    id: z.string().describe("partner order id"),
    externalReference: ExternalReferenceFieldSchema.optional(),
    category: z.string().optional(),
    state: OrderStateSchema,
    orderDate: DateTimeSchema.optional(),
    requestedStartDate: DateTimeSchema.optional(),
    completionDate: DateTimeSchema.optional(),
    note: ResultNoteSchema.optional(),
    // Partner ids are absent when the order failed (nothing was created).
    customer: OrganizationSchema.optional(),
    relatedContact: z.array(IndividualSchema).min(1).optional(),
    orderItem: z
      .array(
        z.object({
          id: z.string(),
          action: z.string(),
          state: OrderStateSchema.optional(),
          productOffering: ProductOfferingRefSchema,
          productRef: z.object({
            id: z.string().optional(),
            userServiceQuantity: z.number().int(),
            characteristic: z.array(CharacteristicSchema).min(1).optional(),
          }),
          endUserConfiguration: z
            .array(
              z.object({
                endUser: IndividualSchema.optional(),
                realizingResource: RealizingResourceSchema.optional(),
              }),
            )
            .min(1)
            .optional(),
        }),
      )
      .min(1)
      .optional(),
  })
  .meta({ id: "ProductOrder" });
export type ProductOrderResponse = z.infer<typeof ProductOrderResponseSchema>;

// ---------------------------------------------------------------------------------------------
// UserService (contract section 3)

export const LicenceStateSchema = z.enum(["active", "inactive", "terminated"]);
export const ExternalStateSchema = z.enum(["active", "inactive", "suspended", "deleted"]);

export const UserServiceSchema = z
  .object({
    id: z.string(),
    relatedProductRefId: z.string().describe("the fleet id"),
    state: LicenceStateSchema,
    externalState: ExternalStateSchema.optional().describe("last state Orange asked for"),
    productOffering: ProductOfferingRefSchema,
    endUser: ResponseIndividualSchema.optional(),
    realizingResource: RealizingResourceSchema.optional(),
    login: LoginKeyValueSchema.optional(),
    serviceCharacteristic: z.array(CharacteristicSchema).min(1).optional(),
    creationDate: DateTimeSchema,
    lastUpdate: DateTimeSchema,
  })
  .meta({ id: "UserService" });
export type UserService = z.infer<typeof UserServiceSchema>;

export const UserServiceListSchema = z.array(UserServiceSchema);

/** Licence ids a consultation by ids may list. */
export const MAX_IDS_PER_QUERY = 1000;

/** The largest page of a fleet listing (`limit`); without offset/limit the whole fleet is answered. */
export const FLEET_PAGE_MAX_LIMIT = 10_000;

/** A query-string count: digits only (no sign, fraction, exponent or blank), as a number. */
const QueryCount = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, `must be an integer >= ${min}`)
    .transform(Number)
    .pipe(z.number().min(min).max(max));

export const UserServiceQuerySchema = z.object({
  productRefId: PartnerIdSchema.optional().describe("fleet id: all licences of the fleet, or the page offset/limit ask for"),
  offset: QueryCount(0, 2_147_483_647)
    .optional()
    .describe("with productRefId: licences to skip, in creation order; an integer >= 0 (default 0)"),
  limit: QueryCount(1, FLEET_PAGE_MAX_LIMIT)
    .optional()
    .describe(`with productRefId: most licences to answer; an integer from 1 to ${FLEET_PAGE_MAX_LIMIT} (default: the whole fleet)`),
  id: z
    .string()
    .min(1)
    .max(MAX_IDS_PER_QUERY * (LIMITS.partnerId + 1))
    .superRefine((list, ctx) => {
      const long = list.split(",").find((id) => id.trim().length > LIMITS.partnerId);
      if (long !== undefined) {
        ctx.addIssue({
          code: "custom",
          message: `must list licence ids of at most ${LIMITS.partnerId} characters each (got one of ${long.trim().length})`,
        });
      }
    })
    .optional()
    .describe(`comma-separated licence ids (at most ${MAX_IDS_PER_QUERY}, each at most ${LIMITS.partnerId} characters)`),
});

export const UserServiceParamsSchema = z.object({ id: PartnerIdSchema });

/** Headers of the calls that create something: the idempotency key is stored and indexed. */
export const IdempotencyHeadersSchema = z.looseObject({
  "idempotency-key": z
    .string()
    .max(LIMITS.orangeRef)
    .optional()
    .describe("Orange's reference of the request, when it does not travel in externalReference"),
});

// ---------------------------------------------------------------------------------------------
// UserServiceUpdate (contract section 4)

export const ProductOfferingOperationSchema = z.looseObject({
  action: z.literal("swap"),
  productOffering: ProductOfferingRefSchema,
});

export const UserServiceUpdateItemSchema = z
  .looseObject({
    id: PartnerIdSchema,
    externalState: ExternalStateSchema.optional(),
    productOfferingOperation: ProductOfferingOperationSchema.optional(),
  })
  .superRefine((item, ctx) => {
    if (item.externalState === undefined && item.productOfferingOperation === undefined) {
      ctx.addIssue({
        code: "custom",
        path: [],
        message: "must carry at least one change: externalState or productOfferingOperation",
      });
    }
  });

/** Refinement of a request listing licences: each licence id appears once. */
export function eachLicenceOnce(req: { userService: { id: string }[] }, ctx: z.RefinementCtx): void {
  const seen = new Map<string, number>();
  req.userService.forEach((item, i) => {
    const first = seen.get(item.id);
    if (first !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["userService", i, "id"],
        message: `duplicates userService[${first}].id (${JSON.stringify(item.id)}): each licence appears once`,
      });
    } else seen.set(item.id, i);
  });
}

export const UserServiceUpdateRequestSchema = z
  .looseObject({
    externalReference: ExternalReferenceFieldSchema.optional(),
    userService: z.array(UserServiceUpdateItemSchema).min(1),
  })
  .superRefine(eachLicenceOnce)
  .meta({ id: "UserServiceUpdateRequest" });
export type UserServiceUpdateRequest = z.infer<typeof UserServiceUpdateRequestSchema>;

export const UserServiceUpdateResponseSchema = z
  .object({
    externalReference: ExternalReferenceFieldSchema.optional(),
    state: OrderStateSchema,
    /** [decision] On `failed`, the reason travels in a note, as for orders. */
    note: ResultNoteSchema.optional(),
    userService: z.array(UserServiceSchema).min(1).optional(),
  })
  .meta({ id: "UserServiceUpdate" });
export type UserServiceUpdateResponse = z.infer<typeof UserServiceUpdateResponseSchema>;

// ---------------------------------------------------------------------------------------------
// UC5: partner-initiated changes (contract section 6), carried by an updateNotification event

export const EndUserOperationSchema = z
  .object({
    action: z.enum(["add", "modify", "swap", "delete"]),
    endUser: ResponseIndividualSchema.describe("the end user after the change (delete: the one removed)"),
  })
  .meta({ id: "EndUserOperation" });

export const RealizingResourceOperationSchema = z
  .object({
    action: z.enum(["add", "modify", "swap", "delete"]),
    realizingResource: RealizingResourceSchema.describe("the resource after the change (delete: the one removed)"),
  })
  .meta({ id: "RealizingResourceOperation" });

/** Never a password: a reset carries only the action and the e-mail the new password goes to. */
export const RightOperationSchema = z
  .strictObject({
    action: z.enum(["add", "modify", "reset"]),
    loginKeyValue: LoginKeyValueSchema.optional().describe("absent on reset"),
    email: z.string().min(1).describe("where the login or the new password is sent"),
  })
  .meta({ id: "RightOperation" });

export const ServiceCharacteristicOperationSchema = z
  .object({
    action: z.enum(["add", "modify", "delete"]),
    characteristic: CharacteristicSchema,
  })
  .meta({ id: "ServiceCharacteristicOperation" });

export const UserServiceChangeSchema = z
  .object({
    id: z.string(),
    relatedProductRefId: z.string().describe("the fleet id"),
    endUserOperation: EndUserOperationSchema.optional(),
    realizingResourceOperation: RealizingResourceOperationSchema.optional(),
    rightOperation: RightOperationSchema.optional(),
    serviceCharacteristicOperation: ServiceCharacteristicOperationSchema.optional(),
  })
  .meta({ id: "UserServiceChange" });
export type UserServiceChange = z.infer<typeof UserServiceChangeSchema>;

/** `resource` of a UC5 updateNotification: the licences of one fleet the partner changed. */
export const UserServiceChangeNotificationSchema = z
  .object({ userService: z.array(UserServiceChangeSchema).min(1) })
  .meta({ id: "UserServiceChangeNotification" });
export type UserServiceChangeNotification = z.infer<typeof UserServiceChangeNotificationSchema>;

// ---------------------------------------------------------------------------------------------
// Events to Orange (contract section 6): the envelope `{id, type, time, resource}` the outbox
// POSTs to Orange's gateway, described here for the OpenAPI document's webhooks.

const EventIdSchema = z
  .string()
  .min(1)
  .max(LIMITS.partnerId)
  .describe("the partner's event id (ev_…), the same on every delivery of this event: Orange recognises a duplicate by it");
const EventTimeSchema = DateTimeSchema.describe("when the event was written, in the transaction of the change it reports");

export const CompletedStateNotificationSchema = z
  .object({
    id: EventIdSchema,
    type: z.literal("completedStateNotification"),
    time: EventTimeSchema,
    resource: ProductOrderResponseSchema.describe("the order, completed, exactly as the synchronous answer would have been"),
  })
  .meta({ id: "CompletedStateNotification" });

export const FailedStateNotificationSchema = z
  .object({
    id: EventIdSchema,
    type: z.literal("failedStateNotification"),
    time: EventTimeSchema,
    resource: ProductOrderResponseSchema.describe("the order, failed, with its reason in note.text"),
  })
  .meta({ id: "FailedStateNotification" });

export const UpdateNotificationSchema = z
  .object({
    id: EventIdSchema,
    type: z.literal("updateNotification"),
    time: EventTimeSchema,
    resource: z
      .union([UserServiceUpdateResponseSchema, UserServiceChangeNotificationSchema])
      .describe(
        "UC6: the update Orange asked for, exactly as the synchronous answer would have been; " +
          "UC5: the licences the partner changed on its side, with the operations it made",
      ),
  })
  .meta({ id: "UpdateNotification" });

// ---------------------------------------------------------------------------------------------
// Ping and errors

export const PingResponseSchema = z.object({ status: z.literal("ok") });

export const ErrorBodySchema = z
  .object({
    code: z.number().int(),
    message: z.string(),
    description: z.string(),
  })
  .meta({ id: "Error" });
export type ErrorBody = z.infer<typeof ErrorBodySchema>;
