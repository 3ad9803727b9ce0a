/**
 * Loaded before every test file (vitest setupFiles): a test may open connections to this machine
 * only. Whatever tries to reach another host (Orange's real gateway, a partner's application, a
 * DNS name) fails at once with a clear error instead of leaving the machine, even when a test or
 * a default setting points at a real address by mistake.
 */
import net from "node:net";

const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|::1|::ffff:127(?:\.\d{1,3}){3}|0\.0\.0\.0)$/i;

export function isLoopback(host: string | undefined): boolean {
  return host === undefined || host === "" || LOOPBACK.test(host.replace(/^\[|\]$/g, ""));
}

function targetOf(args: unknown[]): { host?: string; path?: string } {
  const [first, second] = args;
  if (Array.isArray(first)) return targetOf(first);
  if (typeof first === "object" && first !== null) return first as { host?: string; path?: string };
  if (typeof first === "string" && typeof second !== "string") return { path: first }; // a unix socket
  return { host: typeof second === "string" ? second : undefined };
}

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(this: net.Socket, ...args: unknown[]) {
  const { host, path } = targetOf(args);
  if (path === undefined && !isLoopback(host)) {
    const error = new Error(`test network guard: no connection may leave this machine (to ${host})`);
    process.nextTick(() => this.destroy(error));
    return this;
  }
  return (connect as (...a: unknown[]) => net.Socket).apply(this, args);
} as typeof connect;
