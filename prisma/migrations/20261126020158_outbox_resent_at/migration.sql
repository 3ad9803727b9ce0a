-- AlterTable
ALTER TABLE "outbox_event" ADD COLUMN     "resent_at" TIMESTAMPTZ(3);

