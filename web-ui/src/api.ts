// The AdminService client (generated from proto/sidecar/v1/*.proto at build time) over
// gRPC-web, same-origin with the console, with the session's bearer token.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AdminService } from "./gen/sidecar/v1/admin_pb";

export { Code, ConnectError };

export type Role = "admin" | "viewer";

export interface Session {
  token: string;
  role: Role;
}

const SESSION_KEY = "sidecar.console.session";

let session: Session | null = null;
let onAuthLost: ((message: string) => void) | null = null;

export function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(SESSION_KEY);
    if (!raw) return null;
    const s = JSON.parse(raw) as Partial<Session>;
    if (typeof s.token === "string" && (s.role === "admin" || s.role === "viewer")) {
      session = { token: s.token, role: s.role };
      return session;
    }
  } catch {
    /* a broken entry is treated as no session */
  }
  return null;
}

export function saveSession(s: Session): void {
  session = s;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
}

export function clearSession(): void {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
}

export function currentSession(): Session | null {
  return session;
}

/** Called when the server says the session's token is not (or no longer) valid. */
export function setAuthLostHandler(fn: (message: string) => void): void {
  onAuthLost = fn;
}

export function authLost(message: string): void {
  if (session && onAuthLost) onAuthLost(message);
}

const bearer: Interceptor = (next) => async (req) => {
  // A call that brings its own token (signing in) does not use the session.
  const usesSession = session !== null && !req.header.has("authorization");
  if (usesSession && session) req.header.set("authorization", `Bearer ${session.token}`);
  try {
    return await next(req);
  } catch (e) {
    const err = ConnectError.from(e);
    if (err.code === Code.Unauthenticated && usesSession) {
      authLost("The control plane no longer accepts this token (revoked?). Sign in again.");
    }
    throw e;
  }
};

const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  interceptors: [bearer],
});

/** The AdminService client. */
export const admin = createClient(AdminService, transport);

/** Call options that use `token` instead of the session's (for signing in). */
export function withToken(token: string): { headers: Record<string, string> } {
  return { headers: { authorization: `Bearer ${token}` } };
}

/** What went wrong in a call, in the terms the console shows. */
export interface CallError {
  code: Code;
  /** The server's message (without the code prefix). */
  message: string;
  /** The field the server named (`sidecar-field` metadata), e.g. `backend.rpm_limit`. */
  field: string | null;
  /** The reason part of a field error (after `field: `). */
  reason: string;
}

export function callError(e: unknown): CallError {
  const err = ConnectError.from(e);
  const message = err.rawMessage || err.message;
  let field = err.metadata.get("sidecar-field");
  if (!field && err.code === Code.InvalidArgument) {
    // Non-ASCII paths cannot travel in a header; every field error's message starts
    // with its path.
    const m = /^([a-z_]+(?:\.[a-z_]+|\[[^\]]*\])*): /.exec(message);
    if (m) field = m[1];
  }
  let reason = message;
  if (field && message.startsWith(`${field}: `)) reason = message.slice(field.length + 2);
  return { code: err.code, message, field: field || null, reason };
}

/** A one-line description for a toast. */
export function describe(e: unknown): string {
  const c = callError(e);
  switch (c.code) {
    case Code.PermissionDenied:
      return `Not allowed: ${c.message}`;
    case Code.Unauthenticated:
      return `Not signed in: ${c.message}`;
    case Code.Unavailable:
    case Code.Unknown:
      return `Cannot reach the control plane (${c.message})`;
    case Code.FailedPrecondition:
      return c.message;
    default:
      return c.message;
  }
}
