/**
 * Standard Webhooks secrets (`whsec_<base64>`), as the configuration gives them: checked when the
 * server starts (config.ts) and used to sign every call to the partner's application
 * (src/provisioning/webhook.ts).
 */

const SECRET_PREFIX = "whsec_";
const MIN_SECRET_BYTES = 24;
const MAX_SECRET_BYTES = 64;

/** The key bytes a secret stands for: the base64 after `whsec_` (or the whole secret, without it). */
export function webhookSecretBytes(secret: string): Buffer {
  return Buffer.from(secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret, "base64");
}

/**
 * Reads a space-separated list of `whsec_<base64>` secrets (several while the application moves
 * to a new one). Throws an Error naming `variable`, the faulty entry's position and the rule;
 * never the value.
 */
export function parseWebhookSecrets(value: string, variable = "PROVISIONING_WEBHOOK_SECRETS"): string[] {
  const hint =
    `set ${variable} to one or more space-separated secrets "whsec_<base64 of ${MIN_SECRET_BYTES} to ${MAX_SECRET_BYTES} random bytes>", ` +
    `e.g. the output of: node -e "console.log('whsec_' + require('crypto').randomBytes(32).toString('base64'))"`;
  const entries = value.split(/\s+/).filter((s) => s !== "");
  if (entries.length === 0) throw new Error(`${variable} is empty: ${hint}`);
  entries.forEach((entry, i) => {
    const where = entries.length > 1 ? `${variable}, secret ${i + 1} of ${entries.length},` : variable;
    if (!entry.startsWith(SECRET_PREFIX)) throw new Error(`${where} must start with "${SECRET_PREFIX}": ${hint}`);
    const b64 = entry.slice(SECRET_PREFIX.length);
    // Standard alphabet, padded: what the specification's libraries (and @stablelib/base64) decode.
    const bytes = webhookSecretBytes(entry);
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0 || bytes.toString("base64") !== b64) {
      throw new Error(`${where} must be "${SECRET_PREFIX}" followed by standard, padded base64: ${hint}`);
    }
    if (bytes.length < MIN_SECRET_BYTES || bytes.length > MAX_SECRET_BYTES) {
      throw new Error(`${where} must decode to ${MIN_SECRET_BYTES} to ${MAX_SECRET_BYTES} bytes (got ${bytes.length}): ${hint}`);
    }
  });
  return entries;
}
