// The live feed: one WatchDashboard stream for the whole console. After 5 s without a
// message the feed is "stale" (the layout shows the disconnected banner) and the stream
// is reopened; reconnects back off exponentially (with jitter) up to 5 s and reset as soon
// as a message arrives.

import { admin, authLost, Code, ConnectError } from "./api";
import type { Dashboard } from "./gen/sidecar/v1/admin_pb";

/** Silence after which the console shows "disconnected — reconnecting". */
export const STALE_AFTER_MS = 5000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 5000;

export type Listener = (d: Dashboard) => void;

export class LiveFeed {
  latest: Dashboard | null = null;
  /** When the latest message arrived (browser clock). */
  receivedAt = 0;
  stale = false;
  private listeners = new Set<Listener>();
  private staleListeners = new Set<(stale: boolean) => void>();
  private stopped = true;
  /** Bumped by every start/stop, so a loop from an earlier start ends on its own. */
  private generation = 0;
  private ctrl: AbortController | null = null;
  private attemptStarted = 0;
  private startedAt = 0;
  private timer: number | undefined;
  private wake: (() => void) | null = null;

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.startedAt = Date.now();
    this.timer = window.setInterval(() => this.watchdog(), 250);
    void this.run(++this.generation);
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    window.clearInterval(this.timer);
    this.ctrl?.abort();
    this.wake?.();
    this.latest = null;
    this.receivedAt = 0;
    this.setStale(false);
  }

  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    if (this.latest) fn(this.latest);
    return () => this.listeners.delete(fn);
  }

  onStale(fn: (stale: boolean) => void): () => void {
    this.staleListeners.add(fn);
    fn(this.stale);
    return () => this.staleListeners.delete(fn);
  }

  private setStale(stale: boolean): void {
    if (stale === this.stale) return;
    this.stale = stale;
    for (const fn of this.staleListeners) fn(stale);
  }

  private watchdog(): void {
    const now = Date.now();
    const silentSince = this.receivedAt || this.startedAt;
    if (now - silentSince >= STALE_AFTER_MS) {
      this.setStale(true);
      // A stream that has been open this long without a message is presumed dead.
      if (this.ctrl && now - this.attemptStarted >= STALE_AFTER_MS) this.ctrl.abort();
    }
  }

  private async run(gen: number): Promise<void> {
    const current = () => gen === this.generation && !this.stopped;
    let attempt = 0;
    while (current()) {
      const ctrl = new AbortController();
      this.ctrl = ctrl;
      this.attemptStarted = Date.now();
      try {
        for await (const d of admin.watchDashboard({}, { signal: ctrl.signal })) {
          if (!current()) break;
          attempt = 0;
          this.latest = d;
          this.receivedAt = Date.now();
          this.attemptStarted = this.receivedAt;
          this.setStale(false);
          for (const fn of this.listeners) fn(d);
        }
      } catch (e) {
        const err = ConnectError.from(e);
        if (err.code === Code.Unauthenticated && current()) {
          authLost("The control plane no longer accepts this token (revoked?). Sign in again.");
          return;
        }
      } finally {
        if (this.ctrl === ctrl) this.ctrl = null;
      }
      if (!current()) return;
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
      attempt = Math.min(attempt + 1, 10);
      await new Promise<void>((resolve) => {
        const t = window.setTimeout(resolve, base * (0.75 + Math.random() * 0.5));
        this.wake = () => {
          window.clearTimeout(t);
          resolve();
        };
      });
      if (current()) this.wake = null;
    }
  }
}

export const live = new LiveFeed();
