-- Every new command asks whether an earlier command of its lanes is unfinished. Two indexes
-- answered it, ANDed: the lanes' GIN index (a handful of rows) and the (state, seq) index, whose
-- unfinished states also hold every row version a command left behind on its way to `done` until
-- VACUUM (1,600 entries read per question under a stream of orders: 0.4–0.8 ms). The unfinished
-- commands' lanes now have an index of their own, which holds only them.
CREATE INDEX "provisioning_command_unfinished_lanes_idx" ON "provisioning_command" USING GIN ("lanes")
  WITH (fastupdate = off) WHERE "state" IN ('queued', 'sending', 'waiting', 'retrying');

-- The lanes' index of every command (an operator's retry of a parked command asks whether a later
-- one went on) without GIN's fast update: new entries waited in a pending list that every search
-- read whole until VACUUM merged it.
ALTER INDEX "provisioning_command_lanes_idx" SET (fastupdate = off);
SELECT gin_clean_pending_list('provisioning_command_lanes_idx'::regclass);
