/**
 * The delay before a retry, for every retry of this server (event deliveries to Orange, commands
 * to the partner's application): full jitter, uniform in [0, min(max, base·2^(attempt-1))], never
 * below the Retry-After the other side asked for.
 */
export function retryDelayMs(bounds: { baseMs: number; maxMs: number }, attempt: number, retryAfterMs: number | undefined, random: () => number): number {
  const ceiling = Math.min(bounds.maxMs, bounds.baseMs * 2 ** Math.min(attempt - 1, 40));
  return Math.max(Math.floor(random() * ceiling), retryAfterMs ?? 0);
}
