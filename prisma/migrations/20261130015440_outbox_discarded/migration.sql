-- AlterEnum
ALTER TYPE "OutboxState" ADD VALUE 'discarded';

-- AlterTable (columns in the order of schema.prisma)
ALTER TABLE "outbox_event" ADD COLUMN     "discarded_at" TIMESTAMPTZ(3),
ADD COLUMN     "discarded_by" TEXT,
ADD COLUMN     "discard_reason" TEXT,
ADD COLUMN     "released_at" TIMESTAMPTZ(3);
