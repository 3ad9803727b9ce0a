-- The run of an acknowledged update first looks for the updates of the same licences that Orange
-- sent before it and that are still acknowledged (unfinished): the changes of a licence are
-- carried out in Orange's order. Only acknowledged updates are in this index, so it stays small
-- whatever the history; without GIN's fast update, whose pending list every search reads whole.
CREATE INDEX "licence_update_acknowledged_licences_idx" ON "licence_update" USING GIN ("licence_ids")
  WITH (fastupdate = off) WHERE "state" = 'acknowledged';
