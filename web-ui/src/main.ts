// The console shell: sign-in, the navigation, the disconnected banner, and a small router
// over the History API (the control plane answers every unknown path with index.html).

import "./style.css";
import { clearSession, currentSession, loadSession, saveSession, setAuthLostHandler, type Session } from "./api";
import { h, mount, setText } from "./dom";
import { live } from "./live";
import { loginView, signIn, SignInError } from "./pages/login";
import { dashboardPage } from "./pages/dashboard";
import { providersPage } from "./pages/providers";
import { keysPage } from "./pages/keys";
import { usagePage } from "./pages/usage";
import { cooldownsPage } from "./pages/cooldowns";
import { nodesPage } from "./pages/nodes";
import { settingsPage } from "./pages/settings";
import { setToastBox, type Page, type PageView } from "./ui";
import { fmtDuration } from "./format";

const pages: Page[] = [dashboardPage, providersPage, keysPage, usagePage, cooldownsPage, nodesPage, settingsPage];

const app = document.getElementById("app")!;
let current: PageView | null = null;
let shellMain: HTMLElement | null = null;
let navLinks: HTMLAnchorElement[] = [];
let unsubscribers: (() => void)[] = [];

function pageFor(path: string): Page {
  return pages.find((p) => p.path === path) ?? pages[0];
}

function navigate(path: string, replace = false): void {
  if (location.pathname !== path) {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
  }
  route();
}

function route(): void {
  const session = currentSession();
  if (!session) {
    showLogin();
    return;
  }
  if (!shellMain) buildShell(session);
  const page = pageFor(location.pathname);
  if (page.path !== location.pathname) history.replaceState(null, "", page.path);
  current?.dispose?.();
  current = page.render({ role: session.role, canWrite: session.role === "admin", live });
  mount(shellMain!, current.el);
  document.title = `${page.title} · Sidecar`;
  for (const a of navLinks) {
    const active = a.getAttribute("href") === page.path;
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  window.scrollTo(0, 0);
}

function buildShell(session: Session): void {
  navLinks = pages.map((p) =>
    h(
      "a",
      {
        attrs: { href: p.path },
        on: {
          click: (ev) => {
            if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
            ev.preventDefault();
            navigate(p.path);
          },
        },
      },
      p.title,
    ),
  );
  const liveText = h("span", { class: "live-text", attrs: { "data-testid": "live-status" } }, "connecting…");
  const liveDot = h("span", "live-dot");
  const banner = h(
    "div",
    { class: "banner", attrs: { role: "alert", "data-testid": "disconnected-banner", hidden: true } },
    h("strong", null, "Disconnected — reconnecting…"),
    " ",
    h("span", "banner-detail", ""),
  );
  const bannerDetail = banner.querySelector(".banner-detail")!;
  const logout = h("button", { class: "btn small", attrs: { type: "button", "data-testid": "logout" }, on: { click: () => signOut() } }, "Log out");
  const roleBadge = h(
    "span",
    { class: `role role-${session.role}`, attrs: { "data-testid": "role", title: session.role === "viewer" ? "Read only: every change is disabled" : "Read and write" } },
    session.role === "viewer" ? "viewer · read-only" : "admin",
  );
  const header = h(
    "header",
    "topbar",
    h("a", { class: "brand", attrs: { href: "/" }, on: { click: (ev) => { ev.preventDefault(); navigate("/"); } } }, "Sidecar"),
    h("nav", { attrs: { "aria-label": "Pages" } }, navLinks),
    h("div", "topbar-right", h("span", "live", liveDot, liveText), roleBadge, logout),
  );
  shellMain = h("main", { attrs: { id: "main" } });
  const toasts = h("div", { class: "toasts", attrs: { "aria-live": "polite" } });
  setToastBox(toasts);
  mount(app, h("div", "shell", header, banner, shellMain, toasts));

  const showOffline = () => {
    liveDot.classList.remove("on");
    setText(liveText, "offline");
    setText(bannerDetail, live.receivedAt ? `Last update ${fmtDuration((Date.now() - live.receivedAt) / 1000)} ago.` : "No data from the control plane yet.");
  };
  unsubscribers.push(
    live.onStale((stale) => {
      banner.hidden = !stale;
      document.body.classList.toggle("stale", stale);
      if (stale) showOffline();
    }),
    live.subscribe((d) => {
      setText(liveText, `live · config v${d.configVersion}`);
      liveDot.classList.add("on");
    }),
  );
  // Keep the banner's "last update" fresh while disconnected.
  const tick = window.setInterval(() => {
    if (live.stale) showOffline();
  }, 500);
  unsubscribers.push(() => window.clearInterval(tick));
  live.start();
}

function teardownShell(): void {
  current?.dispose?.();
  current = null;
  for (const u of unsubscribers) u();
  unsubscribers = [];
  live.stop();
  shellMain = null;
  navLinks = [];
}

let afterLogin = "/";

function showLogin(notice?: string): void {
  teardownShell();
  document.title = "Sign in · Sidecar";
  if (location.pathname !== "/login") {
    // Remember where to go after signing in (the address bar shows /login meanwhile).
    afterLogin = location.pathname;
    history.replaceState(null, "", "/login");
  }
  mount(
    app,
    loginView((s) => {
      saveSession(s);
      const to = afterLogin;
      afterLogin = "/";
      navigate(to, true);
    }, notice),
  );
}

function signOut(notice?: string): void {
  clearSession();
  teardownShell();
  history.pushState(null, "", "/login");
  showLogin(notice);
}

setAuthLostHandler((message) => signOut(message));
window.addEventListener("popstate", () => route());

// A stored session is checked again (the token may have been revoked meanwhile).
const stored = loadSession();
if (stored) {
  signIn(stored.token)
    .then((s) => {
      saveSession(s);
      route();
    })
    .catch((e: unknown) => {
      if (e instanceof SignInError && e.unreachable) {
        // Keep the session: the live banner says the control plane is away meanwhile.
        route();
        return;
      }
      clearSession();
      showLogin(e instanceof Error ? e.message : String(e));
    });
} else {
  showLogin();
}
