-- CreateSchema
CREATE SCHEMA IF NOT EXISTS "public";

-- CreateEnum
CREATE TYPE "LicenceState" AS ENUM ('active', 'inactive', 'terminated');

-- CreateEnum
CREATE TYPE "ExternalState" AS ENUM ('active', 'inactive', 'suspended', 'deleted');

-- CreateEnum
CREATE TYPE "RequestState" AS ENUM ('acknowledged', 'completed', 'failed');

-- CreateTable
CREATE TABLE "customer" (
    "id" TEXT NOT NULL,
    "orange_ref" TEXT NOT NULL,
    "trading_name" TEXT,
    "name" TEXT,
    "organization_code" TEXT,
    "postal_address" JSONB,
    "characteristics" JSONB,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "customer_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "contact" (
    "id" TEXT NOT NULL,
    "customer_id" TEXT NOT NULL,
    "orange_ref" TEXT,
    "role" TEXT,
    "title" TEXT,
    "given_name" TEXT,
    "family_name" TEXT,
    "email" TEXT,
    "fixed_telephone_number" JSONB,
    "mobile_number" JSONB,
    "characteristics" JSONB,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "contact_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "fleet" (
    "id" TEXT NOT NULL,
    "customer_id" TEXT NOT NULL,
    "offer_code" TEXT NOT NULL,
    "characteristics" JSONB,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "fleet_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "licence" (
    "id" TEXT NOT NULL,
    "fleet_id" TEXT NOT NULL,
    "order_id" TEXT NOT NULL,
    "state" "LicenceState" NOT NULL DEFAULT 'active',
    "external_state" "ExternalState",
    "offer_code" TEXT NOT NULL,
    "end_user" JSONB,
    "realizing_resource" JSONB,
    "login" JSONB,
    "service_characteristics" JSONB,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "terminated_at" TIMESTAMPTZ(3),

    CONSTRAINT "licence_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "product_order" (
    "id" TEXT NOT NULL,
    "idempotency_key" TEXT,
    "orange_ref" TEXT,
    "request_hash" TEXT NOT NULL,
    "request" JSONB NOT NULL,
    "response" JSONB,
    "state" "RequestState" NOT NULL,
    "use_case" TEXT NOT NULL,
    "failure_reason" TEXT,
    "customer_id" TEXT,
    "fleet_id" TEXT,
    "quantity" INTEGER,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "completed_at" TIMESTAMPTZ(3),

    CONSTRAINT "product_order_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "licence_update" (
    "id" TEXT NOT NULL,
    "idempotency_key" TEXT,
    "orange_ref" TEXT,
    "request_hash" TEXT NOT NULL,
    "request" JSONB NOT NULL,
    "response" JSONB,
    "state" "RequestState" NOT NULL,
    "failure_reason" TEXT,
    "licence_ids" TEXT[],
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "completed_at" TIMESTAMPTZ(3),

    CONSTRAINT "licence_update_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "customer_orange_ref_key" ON "customer"("orange_ref");

-- CreateIndex
CREATE INDEX "contact_customer_id_idx" ON "contact"("customer_id");

-- CreateIndex
CREATE UNIQUE INDEX "contact_customer_id_orange_ref_key" ON "contact"("customer_id", "orange_ref");

-- CreateIndex
CREATE INDEX "fleet_customer_id_idx" ON "fleet"("customer_id");

-- CreateIndex
CREATE INDEX "licence_fleet_id_id_idx" ON "licence"("fleet_id", "id");

-- CreateIndex
CREATE INDEX "licence_order_id_idx" ON "licence"("order_id");

-- CreateIndex
CREATE UNIQUE INDEX "product_order_idempotency_key_key" ON "product_order"("idempotency_key");

-- CreateIndex
CREATE INDEX "product_order_orange_ref_idx" ON "product_order"("orange_ref");

-- CreateIndex
CREATE INDEX "product_order_fleet_id_idx" ON "product_order"("fleet_id");

-- CreateIndex
CREATE UNIQUE INDEX "licence_update_idempotency_key_key" ON "licence_update"("idempotency_key");

-- CreateIndex
CREATE INDEX "licence_update_orange_ref_idx" ON "licence_update"("orange_ref");

-- AddForeignKey
ALTER TABLE "contact" ADD CONSTRAINT "contact_customer_id_fkey" FOREIGN KEY ("customer_id") REFERENCES "customer"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "fleet" ADD CONSTRAINT "fleet_customer_id_fkey" FOREIGN KEY ("customer_id") REFERENCES "customer"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "licence" ADD CONSTRAINT "licence_fleet_id_fkey" FOREIGN KEY ("fleet_id") REFERENCES "fleet"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "licence" ADD CONSTRAINT "licence_order_id_fkey" FOREIGN KEY ("order_id") REFERENCES "product_order"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "product_order" ADD CONSTRAINT "product_order_customer_id_fkey" FOREIGN KEY ("customer_id") REFERENCES "customer"("id") ON DELETE SET NULL ON UPDATE CASCADE;

