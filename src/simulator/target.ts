/** How the simulator authenticates to the partner server, as Orange would (contract section 9). */

export type TargetAuth =
  | { kind: "basic"; user: string; password: string }
  | { kind: "bearer"; token: string }
  | { kind: "header"; name: string; value: string }
  | { kind: "none" };

/** `orange`: the target's credentials; `none`: no credential; `invalid`: the same scheme with a wrong secret. */
export type AuthMode = "orange" | "none" | "invalid";

export const WRONG_SECRET = "simulator-wrong-secret";

export function authHeaders(target: TargetAuth, mode: AuthMode = "orange"): Record<string, string> {
  if (mode === "none") return {};
  const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
  if (mode === "invalid") {
    switch (target.kind) {
      case "basic":
        return { authorization: basic(target.user, WRONG_SECRET) };
      case "header":
        return { [target.name.toLowerCase()]: WRONG_SECRET };
      default:
        return { authorization: `Bearer ${WRONG_SECRET}` };
    }
  }
  switch (target.kind) {
    case "basic":
      return { authorization: basic(target.user, target.password) };
    case "bearer":
      return { authorization: `Bearer ${target.token}` };
    case "header":
      return { [target.name.toLowerCase()]: target.value };
    case "none":
      return {};
  }
}
