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
// Shared building blocks

/** ISO 8601 date-time with an offset; Orange sends UTC with milliseconds. */
export const DateTimeSchema = z.iso
  .datetime({ offset: true })
  .describe("ISO 8601 date-time, e.g. 2026-05-02T09:15:02.345Z");

const NonEmpty = z.string().min(1);

export const ExternalReferenceSchema = z
  .looseObject({
    type: NonEmpty.describe('"orange" for Orange\'s identifiers'),
    id: NonEmpty,
  })
  .meta({ id: "ExternalReference" });
export type ExternalReference = z.infer<typeof ExternalReferenceSchema>;

/** Orange sends either one reference or an array of them. */
export const ExternalReferenceFieldSchema = z.union([
  ExternalReferenceSchema,
  z.array(ExternalReferenceSchema).min(1),
]);
export type ExternalReferenceField = z.infer<typeof ExternalReferenceFieldSchema>;

export const CharacteristicSchema = z
  .looseObject({ name: NonEmpty, value: z.string() })
  .meta({ id: "Characteristic" });
export type Characteristic = z.infer<typeof CharacteristicSchema>;

export const NoteSchema = z
  .looseObject({
    text: z.string(),
    date: DateTimeSchema.optional(),
    author: z.string().optional(),
  })
  .meta({ id: "Note" });
export type Note = z.infer<typeof NoteSchema>;

export const PhoneNumberSchema = z.looseObject({ cc: z.string(), sn: z.string() });

export const PostalAddressSchema = z.looseObject({
  streetAddress: z.string().optional(),
  postcode: z.string().optional(),
  locality: z.string().optional(),
  country: z.string().optional(),
});

export const IndividualSchema = z
  .looseObject({
    id: z.string().optional(),
    externalReference: ExternalReferenceFieldSchema.optional(),
    role: z.string().optional(),
    title: z.string().optional(),
    givenName: z.string().optional(),
    familyName: z.string().optional(),
    email: z.string().optional(),
    fixedTelephoneNumber: PhoneNumberSchema.optional(),
    mobileNumber: PhoneNumberSchema.optional(),
    characteristic: z.array(CharacteristicSchema).optional(),
  })
  .meta({ id: "Individual" });
export type Individual = z.infer<typeof IndividualSchema>;

export const OrganizationSchema = z
  .looseObject({
    id: z.string().optional(),
    externalReference: ExternalReferenceFieldSchema.describe("Orange's customer id"),
    tradingName: z.string().optional(),
    name: z.string().optional(),
    organizationCode: z.string().optional().describe("company registration number (SIREN/SIRET)"),
    postalAddress: PostalAddressSchema.optional(),
    characteristic: z.array(CharacteristicSchema).optional(),
  })
  .meta({ id: "Organization" });
export type Organization = z.infer<typeof OrganizationSchema>;

/** [decision] A relatedParty entry with role `customer` is accepted as the customer. */
export const RelatedPartySchema = z.looseObject({
  role: z.string().optional(),
  externalReference: ExternalReferenceFieldSchema.optional(),
});

export const ProductOfferingRefSchema = z
  .looseObject({
    name: z.string().optional(),
    externalReference: ExternalReferenceSchema.describe("Orange's offer code"),
  })
  .meta({ id: "ProductOfferingRef" });
export type ProductOfferingRef = z.infer<typeof ProductOfferingRefSchema>;

export const RealizingResourceSchema = z
  .looseObject({
    type: NonEmpty.describe("url, email, mobile, imei…"),
    characteristic: z.array(CharacteristicSchema).optional(),
  })
  .meta({ id: "RealizingResource" });
export type RealizingResource = z.infer<typeof RealizingResourceSchema>;

export const LoginKeyValueSchema = z
  .looseObject({ key: z.enum(["login", "organizationCode"]), value: NonEmpty })
  .meta({ id: "LoginKeyValue" });
export type LoginKeyValue = z.infer<typeof LoginKeyValueSchema>;

// ---------------------------------------------------------------------------------------------
// ProductOrder (contract section 2)

export const ProductRefSchema = z.looseObject({
  id: NonEmpty.optional().describe("the fleet id (productRefId): absent in UC2, present in UC3"),
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
    id: z.string().optional(),
    action: NonEmpty.describe('"add"; any other value fails the order'),
    state: z.string().optional(),
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
    category: z.string().optional().describe("production, trial, …"),
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
    note: NoteSchema.optional(),
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

export const UserServiceQuerySchema = z.object({
  productRefId: z.string().min(1).optional().describe("fleet id: all licences of the fleet"),
  id: z.string().min(1).optional().describe("comma-separated licence ids"),
});

export const UserServiceParamsSchema = z.object({ id: z.string().min(1) });

// ---------------------------------------------------------------------------------------------
// UserServiceUpdate (contract section 4)

export const ProductOfferingOperationSchema = z.looseObject({
  action: z.literal("swap"),
  productOffering: ProductOfferingRefSchema,
});

export const UserServiceUpdateItemSchema = z
  .looseObject({
    id: NonEmpty,
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
    note: NoteSchema.optional(),
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
