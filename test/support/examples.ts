/**
 * Orange's first order (UC2) in the shape of docs/orange-contract.md, section 2, kept here as
 * code for the tests and the bench. Each call returns a fresh copy.
 */

/** UC2: a first order, new fleet of 3 licences, one pre-configured end user. */
export function uc2Request() {
  return {
    externalReference: { type: "orange", id: "ORD-2026-000102" },
    category: "production",
    orderDate: "2026-05-02T09:20:00.000Z",
    customer: { externalReference: { type: "orange", id: "CUST-884201" }, tradingName: "Boulangerie Martin" },
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { name: "Caisse Pro", externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } },
        productRef: { userServiceQuantity: 3, characteristic: [{ name: "storageSize", value: "50GB" }] },
        endUserConfiguration: [
          { endUser: { givenName: "Paul", familyName: "Martin", email: "paul@boulangerie-martin.example" } },
        ],
      },
    ],
  };
}
