// Sign in with a bearer token. The role is found out from the server: every read works
// for admin and viewer tokens; a write-only call with an empty request (ValidateBackend
// without a target) is refused for a viewer (PERMISSION_DENIED) before anything happens,
// and is INVALID_ARGUMENT for an admin. Nothing is changed either way.

import { admin, callError, Code, type Role, type Session, withToken } from "../api";
import { h } from "../dom";

export class SignInError extends Error {
  constructor(
    message: string,
    /** The control plane could not be asked (as opposed to: it refused the token). */
    readonly unreachable = false,
  ) {
    super(message);
  }
}

export async function signIn(token: string): Promise<Session> {
  token = token.trim();
  if (!token) throw new SignInError("Enter a token.");
  try {
    await admin.getConfigVersion({}, withToken(token));
  } catch (e) {
    const c = callError(e);
    if (c.code === Code.Unauthenticated) {
      throw new SignInError("Wrong token: the control plane does not know this token (mistyped, or revoked). Use an admin or viewer token.");
    }
    if (c.code === Code.PermissionDenied) {
      throw new SignInError("This is a node token; proxies use it. The console needs an admin or viewer token.");
    }
    throw new SignInError(`Cannot reach the control plane: ${c.message}`, true);
  }
  let role: Role;
  try {
    await admin.validateBackend({}, withToken(token));
    role = "admin";
  } catch (e) {
    const c = callError(e);
    if (c.code === Code.PermissionDenied) role = "viewer";
    else if (c.code === Code.InvalidArgument) role = "admin";
    else throw new SignInError(`Cannot reach the control plane: ${c.message}`, true);
  }
  return { token, role };
}

export function loginView(onSignedIn: (s: Session) => void, notice?: string): HTMLElement {
  const input = h("input", {
    attrs: { type: "password", name: "token", id: "token", autocomplete: "current-password", placeholder: "sct_…", required: true, spellcheck: "false" },
  });
  const error = h("div", { class: "login-error", attrs: { role: "alert", "data-testid": "login-error", hidden: !notice } }, notice ?? "");
  const button = h("button", { class: "btn primary", attrs: { type: "submit" } }, "Sign in");
  const form = h(
    "form",
    { class: "login-card", attrs: { novalidate: true, "aria-label": "Sign in" } },
    h("h1", null, "Sidecar"),
    h("p", "muted", "Console of the rate-limiting gateway. Sign in with an admin token (read and write) or a viewer token (read only)."),
    h("label", { attrs: { for: "token" } }, "API token"),
    input,
    error,
    button,
    h("p", "hint", "The token is kept in this browser tab only (session storage) and sent to this control plane only."),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    button.disabled = true;
    error.hidden = true;
    signIn(input.value)
      .then((s) => onSignedIn(s))
      .catch((e: unknown) => {
        error.textContent = e instanceof SignInError ? e.message : String(e);
        error.hidden = false;
        input.select();
      })
      .finally(() => {
        button.disabled = false;
      });
  });
  queueMicrotask(() => input.focus());
  return h("div", "login-page", form);
}
