// Number and time formatting for display.

const int = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const dec1 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

export function n(v: number | bigint): number {
  return typeof v === "bigint" ? Number(v) : v;
}

export function fmtInt(v: number | bigint): string {
  return int.format(n(v));
}

/** A rate such as 12.5 (one decimal at most). */
export function fmtRate(v: number): string {
  return dec1.format(v);
}

/** Large counts compactly: 1234 → "1,234", 1234567 → "1.23 M". */
export function fmtCount(v: number | bigint): string {
  const x = n(v);
  if (Math.abs(x) >= 1e9) return `${(x / 1e9).toFixed(2)} B`;
  if (Math.abs(x) >= 1e6) return `${(x / 1e6).toFixed(2)} M`;
  return int.format(x);
}

export function fmtUsd(v: number): string {
  if (v === 0) return "$0.00";
  if (Math.abs(v) < 0.01) return `$${v.toFixed(6)}`;
  if (Math.abs(v) < 100) return `$${v.toFixed(4)}`;
  return `$${v.toFixed(2)}`;
}

export function fmtPct(part: number, whole: number): string {
  if (!whole) return "0%";
  const p = (100 * part) / whole;
  return `${p < 10 ? p.toFixed(2) : p.toFixed(1)}%`;
}

/** A duration in seconds as "3d 4h", "5m 10s", "42s". */
export function fmtDuration(totalSeconds: number): string {
  let s = Math.max(0, Math.floor(totalSeconds));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hh = Math.floor(s / 3600);
  s -= hh * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** A duration in milliseconds, with a decimal under 10 s: "2.5 s", "1m 30s". */
export function fmtMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  return fmtDuration(ms / 1000);
}

function pad(x: number): string {
  return String(x).padStart(2, "0");
}

/** Local date and time, "2024-10-04 13:05:09". */
export function fmtTime(ms: number | bigint): string {
  const v = n(ms);
  if (!v) return "—";
  const d = new Date(v);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A bucket start at the granularity: "2024-10-04 13:00" or "2024-10-04". */
export function fmtBucket(ms: number | bigint, granularity: string): string {
  const d = new Date(n(ms));
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  if (granularity === "day") {
    // Days are UTC days.
    return d.toISOString().slice(0, 10);
  }
  return `${day} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** "12 s ago", "5m 3s ago", "never". */
export function fmtAgo(ms: number | bigint, now = Date.now()): string {
  const v = n(ms);
  if (!v) return "never";
  const diff = (now - v) / 1000;
  if (diff < 1) return "just now";
  return `${fmtDuration(diff)} ago`;
}

/** Costs are stored per token; the console shows USD per million tokens. */
export function perMillion(perToken: number): string {
  if (!perToken) return "";
  return String(Number((perToken * 1e6).toPrecision(12)));
}
