-- CreateEnum
CREATE TYPE "CommandState" AS ENUM ('queued', 'sending', 'waiting', 'retrying', 'done', 'refused', 'parked');

-- AlterTable
ALTER TABLE "product_order" ADD COLUMN     "answer_mode" TEXT;

-- AlterTable
ALTER TABLE "licence_update" ADD COLUMN     "answer_mode" TEXT;

-- CreateTable
CREATE TABLE "provisioning_command" (
    "id" TEXT NOT NULL,
    "seq" BIGSERIAL NOT NULL,
    "request_kind" TEXT NOT NULL,
    "request_id" TEXT NOT NULL,
    "type" TEXT,
    "lanes" TEXT[],
    "state" "CommandState" NOT NULL DEFAULT 'queued',
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "next_attempt_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lease_until" TIMESTAMPTZ(3),
    "plan" JSON,
    "body" TEXT,
    "result" JSON,
    "last_status" INTEGER,
    "last_error" TEXT,
    "last_response_body" TEXT,
    "ended_by" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "prepared_at" TIMESTAMPTZ(3),
    "finished_at" TIMESTAMPTZ(3),

    CONSTRAINT "provisioning_command_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "provisioning_attempt" (
    "id" BIGSERIAL NOT NULL,
    "command_id" TEXT NOT NULL,
    "attempt" INTEGER NOT NULL,
    "started_at" TIMESTAMPTZ(3) NOT NULL,
    "finished_at" TIMESTAMPTZ(3),
    "outcome" TEXT,
    "status" INTEGER,
    "error" TEXT,
    "response_body" TEXT,
    "duration_ms" INTEGER,

    CONSTRAINT "provisioning_attempt_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "provisioning_command_state_seq_idx" ON "provisioning_command"("state", "seq");

-- CreateIndex
CREATE INDEX "provisioning_command_lanes_idx" ON "provisioning_command" USING GIN ("lanes");

-- CreateIndex
CREATE UNIQUE INDEX "provisioning_command_request_kind_request_id_key" ON "provisioning_command"("request_kind", "request_id");

-- CreateIndex
CREATE UNIQUE INDEX "provisioning_attempt_command_id_attempt_key" ON "provisioning_attempt"("command_id", "attempt");

-- AddForeignKey
ALTER TABLE "provisioning_attempt" ADD CONSTRAINT "provisioning_attempt_command_id_fkey" FOREIGN KEY ("command_id") REFERENCES "provisioning_command"("id") ON DELETE CASCADE ON UPDATE CASCADE;

