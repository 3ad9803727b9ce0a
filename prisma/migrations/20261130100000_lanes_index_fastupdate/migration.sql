-- The lanes' GIN index is asked for every new command (is an earlier one of its lanes
-- unfinished?). With GIN's fast update, new entries wait in a pending list that every search
-- reads whole until VACUUM merges it: under a stream of orders that search cost 0.8 ms instead of
-- 0.03 ms. Entries now go straight into the index. (A storage setting prisma/schema.prisma cannot
-- express: test/migrations.test.ts applies it to the schema's own SQL too.)
ALTER INDEX "provisioning_command_lanes_idx" SET (fastupdate = off);
SELECT gin_clean_pending_list('provisioning_command_lanes_idx'::regclass);
