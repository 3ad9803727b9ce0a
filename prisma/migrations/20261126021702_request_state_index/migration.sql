-- CreateIndex
CREATE INDEX "product_order_state_idx" ON "product_order"("state");

-- CreateIndex
CREATE INDEX "licence_update_state_idx" ON "licence_update"("state");

