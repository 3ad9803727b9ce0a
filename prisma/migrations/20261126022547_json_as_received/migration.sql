-- AlterTable
ALTER TABLE "product_order" ALTER COLUMN "request" SET DATA TYPE JSON,
ALTER COLUMN "response" SET DATA TYPE JSON;

-- AlterTable
ALTER TABLE "licence_update" ALTER COLUMN "request" SET DATA TYPE JSON,
ALTER COLUMN "response" SET DATA TYPE JSON;

-- AlterTable
ALTER TABLE "outbox_event" ALTER COLUMN "body" SET DATA TYPE JSON;

