-- CreateEnum
CREATE TYPE "OutboxState" AS ENUM ('pending', 'delivered', 'dead');

-- CreateEnum
CREATE TYPE "DeliveryAttemptOutcome" AS ENUM ('delivered', 'retry', 'park');

-- CreateTable
CREATE TABLE "outbox_event" (
    "id" TEXT NOT NULL,
    "seq" BIGSERIAL NOT NULL,
    "api" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "ordering_key" TEXT NOT NULL,
    "fleet_id" TEXT,
    "order_id" TEXT,
    "update_id" TEXT,
    "body" JSONB NOT NULL,
    "state" "OutboxState" NOT NULL DEFAULT 'pending',
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "next_attempt_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "last_error" TEXT,
    "last_status" INTEGER,
    "last_request_id" TEXT,
    "last_response_body" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "delivered_at" TIMESTAMPTZ(3),
    "dead_at" TIMESTAMPTZ(3),

    CONSTRAINT "outbox_event_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "event_delivery_attempt" (
    "id" BIGSERIAL NOT NULL,
    "event_id" TEXT NOT NULL,
    "attempt" INTEGER NOT NULL,
    "worker_id" TEXT,
    "started_at" TIMESTAMPTZ(3) NOT NULL,
    "finished_at" TIMESTAMPTZ(3),
    "outcome" "DeliveryAttemptOutcome",
    "status" INTEGER,
    "request_id" TEXT,
    "response_body" TEXT,
    "error" TEXT,

    CONSTRAINT "event_delivery_attempt_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "outbox_event_ordering_key_state_seq_idx" ON "outbox_event"("ordering_key", "state", "seq");

-- CreateIndex
CREATE INDEX "outbox_event_state_seq_idx" ON "outbox_event"("state", "seq");

-- CreateIndex
CREATE INDEX "outbox_event_fleet_id_idx" ON "outbox_event"("fleet_id");

-- CreateIndex
CREATE INDEX "outbox_event_order_id_idx" ON "outbox_event"("order_id");

-- CreateIndex
CREATE UNIQUE INDEX "event_delivery_attempt_event_id_attempt_key" ON "event_delivery_attempt"("event_id", "attempt");

-- AddForeignKey
ALTER TABLE "event_delivery_attempt" ADD CONSTRAINT "event_delivery_attempt_event_id_fkey" FOREIGN KEY ("event_id") REFERENCES "outbox_event"("id") ON DELETE CASCADE ON UPDATE CASCADE;

