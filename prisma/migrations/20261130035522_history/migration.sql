-- CreateExtension
CREATE EXTENSION IF NOT EXISTS "pg_trgm";

-- AlterTable (columns in the order of schema.prisma)
ALTER TABLE "licence" ADD COLUMN     "end_user_id" TEXT,
ADD COLUMN     "end_user_email" TEXT;

-- CreateTable
CREATE TABLE "history_entry" (
    "id" BIGSERIAL NOT NULL,
    "at" TIMESTAMPTZ(3) NOT NULL,
    "kind" TEXT NOT NULL,
    "request_id" TEXT,
    "customer_id" TEXT,
    "fleet_id" TEXT,
    "licence_id" TEXT,
    "event_id" TEXT,
    "command_id" TEXT,
    "actor" TEXT,
    "data" JSONB,

    CONSTRAINT "history_entry_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "history_entry_request_id_at_idx" ON "history_entry"("request_id", "at");

-- CreateIndex
CREATE INDEX "history_entry_customer_id_at_idx" ON "history_entry"("customer_id", "at");

-- CreateIndex
CREATE INDEX "history_entry_fleet_id_at_idx" ON "history_entry"("fleet_id", "at");

-- CreateIndex
CREATE INDEX "history_entry_licence_id_at_idx" ON "history_entry"("licence_id", "at");

-- CreateIndex
CREATE INDEX "customer_trading_name_idx" ON "customer" USING GIN ("trading_name" gin_trgm_ops);

-- CreateIndex
CREATE INDEX "customer_name_idx" ON "customer" USING GIN ("name" gin_trgm_ops);

-- CreateIndex
CREATE INDEX "customer_organization_code_idx" ON "customer"("organization_code");

-- CreateIndex
CREATE INDEX "customer_created_at_idx" ON "customer"("created_at");

-- CreateIndex
CREATE INDEX "contact_orange_ref_idx" ON "contact"("orange_ref");

-- CreateIndex
CREATE INDEX "fleet_offer_code_idx" ON "fleet"("offer_code");

-- CreateIndex
CREATE INDEX "fleet_created_at_idx" ON "fleet"("created_at");

-- CreateIndex
CREATE INDEX "licence_state_id_idx" ON "licence"("state", "id");

-- CreateIndex
CREATE INDEX "licence_offer_code_id_idx" ON "licence"("offer_code", "id");

-- CreateIndex
CREATE INDEX "licence_end_user_id_idx" ON "licence"("end_user_id");

-- CreateIndex
CREATE INDEX "licence_end_user_email_idx" ON "licence"("end_user_email");

-- CreateIndex
CREATE INDEX "product_order_created_at_idx" ON "product_order"("created_at");

-- CreateIndex
CREATE INDEX "product_order_state_created_at_idx" ON "product_order"("state", "created_at");

-- CreateIndex
CREATE INDEX "product_order_use_case_created_at_idx" ON "product_order"("use_case", "created_at");

-- CreateIndex
CREATE INDEX "product_order_customer_id_created_at_idx" ON "product_order"("customer_id", "created_at");

-- CreateIndex
CREATE INDEX "licence_update_created_at_idx" ON "licence_update"("created_at");

-- CreateIndex
CREATE INDEX "licence_update_state_created_at_idx" ON "licence_update"("state", "created_at");

-- CreateIndex
CREATE INDEX "licence_update_licence_ids_idx" ON "licence_update" USING GIN ("licence_ids");

-- CreateIndex
CREATE INDEX "outbox_event_update_id_idx" ON "outbox_event"("update_id");


-- Backfill: the end user's id and e-mail of the licences written before these columns.
UPDATE "licence" SET "end_user_id" = "end_user" ->> 'id', "end_user_email" = lower("end_user" ->> 'email')
 WHERE "end_user" IS NOT NULL;
