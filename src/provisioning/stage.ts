/**
 * The provisioning stage of the request lifecycle, built from the configuration: the signed
 * webhook to the partner's application and its bounds (src/domain/lifecycle.ts runs it).
 */
import type { ProvisioningConfig } from "../config.js";
import type { ProvisioningStage } from "../domain/lifecycle.js";
import { parseWebhookSecrets } from "../lib/webhook-secrets.js";
import { createWebhookProvisioner, type WebhookProvisionerOptions } from "./webhook.js";

export function provisioningStageFrom(
  config: ProvisioningConfig,
  logger?: WebhookProvisionerOptions["logger"],
  onAttempt?: WebhookProvisionerOptions["onAttempt"],
): { stage: ProvisioningStage; close(): Promise<void> } | undefined {
  if (config.mode !== "webhook") return undefined;
  const provisioner = createWebhookProvisioner({
    url: config.url!,
    secrets: parseWebhookSecrets(config.secret!, "PROVISIONING_SECRET"),
    timeoutMs: config.timeoutMs,
    logger,
    onAttempt,
  });
  return {
    stage: { provisioner, timeoutMs: config.timeoutMs, retry: config.retry, syncDeadlineMs: config.syncDeadlineMs },
    close: () => provisioner.close(),
  };
}
