// Time-series charts with uPlot (small, canvas-based, no dependencies). Labels are static
// strings of the console; values are numbers.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom";
import { fmtCount, fmtUsd } from "./format";

export interface SeriesDef {
  label: string;
  color: string;
  /** Draw as bars instead of a line. */
  bars?: boolean;
  /** Formats values in the legend. */
  fmt?: (v: number) => string;
  /** Formats values on the axis (short); defaults to `fmt`. */
  axis?: (v: number) => string;
}

/** Short USD for an axis: $0, $0.0003, $1.5, $120. */
export function usdAxis(v: number): string {
  return v === 0 ? "$0" : `$${Number(v.toPrecision(2))}`;
}

/** Short counts for an axis: 950, 1.2k, 3.4M. */
export function countAxis(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e3) return `${Number((v / 1e3).toPrecision(3))}k`;
  return String(Number(v.toPrecision(3)));
}

const HOUR = 3_600_000;

/** The usage charts' series, the same on every page that draws them. */
export function requestSeries(bars: boolean): SeriesDef[] {
  return [
    { label: "Requests", color: "#2563eb", bars },
    { label: "429s", color: "#d97706" },
    { label: "Errors", color: "#dc2626" },
  ];
}
export const TOKEN_SERIES: SeriesDef[] = [
  { label: "Prompt", color: "#7c3aed", fmt: (v) => fmtCount(v), axis: countAxis },
  { label: "Completion", color: "#059669", fmt: (v) => fmtCount(v) },
];
export const COST_SERIES: SeriesDef[] = [{ label: "Cost", color: "#0891b2", bars: true, fmt: (v) => fmtUsd(v), axis: usdAxis }];

/** Bucket starts from `since` to `until` (exclusive) at `stepMs`, aligned to the step (UTC). */
export function buckets(sinceMs: number, untilMs: number, stepMs: number): number[] {
  const out: number[] = [];
  for (let t = Math.floor(sinceMs / stepMs) * stepMs; t < untilMs; t += stepMs) out.push(t);
  return out;
}

export function stepOf(granularity: string): number {
  return granularity === "minute" ? 60_000 : granularity === "day" ? 24 * HOUR : HOUR;
}

/** A chart over time; create it, put `el` in the page, then call setData. */
export class TimeChart {
  readonly el: HTMLElement;
  private readonly plotEl: HTMLElement;
  private plot: uPlot | null = null;
  private data: uPlot.AlignedData | null = null;
  private readonly observer: ResizeObserver;

  constructor(
    title: string,
    private readonly series: SeriesDef[],
    private readonly height = 200,
  ) {
    this.plotEl = h("div", "chart-plot");
    this.el = h("figure", "chart", h("figcaption", null, title), this.plotEl);
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.plotEl);
  }

  private width(): number {
    return Math.max(200, Math.floor(this.plotEl.clientWidth));
  }

  private resize(): void {
    if (!this.plotEl.clientWidth) return;
    if (!this.plot && this.data) this.create();
    else this.plot?.setSize({ width: this.width(), height: this.height });
  }

  private create(): void {
    if (!this.data) return;
    const fmt = this.series[0]?.axis ?? this.series[0]?.fmt ?? countAxis;
    const opts: uPlot.Options = {
      width: this.width(),
      height: this.height,
      scales: { x: { time: true } },
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      axes: [
        { stroke: "#5b6472", grid: { stroke: "#eef0f3" }, space: 70 },
        {
          stroke: "#5b6472",
          grid: { stroke: "#eef0f3" },
          size: 64,
          values: (_u, vals) => vals.map((v) => fmt(v)),
        },
      ],
      series: [
        {},
        ...this.series.map(
          (s): uPlot.Series => ({
            label: s.label,
            stroke: s.color,
            width: 2,
            fill: s.bars ? s.color + "99" : s.color + "1a",
            points: { show: true, size: 4 },
            paths: s.bars ? uPlot.paths.bars?.({ size: [0.7, 40] }) : undefined,
            value: s.fmt ? (_u, v) => (v === null || v === undefined ? "—" : s.fmt!(v)) : undefined,
          }),
        ),
      ],
    };
    this.plot = new uPlot(opts, this.data, this.plotEl);
  }

  /** Sets the points: x as unix ms, one array of values per series. */
  setData(xMs: number[], ys: number[][]): void {
    this.data = [xMs.map((x) => x / 1000), ...ys];
    if (this.plot) this.plot.setData(this.data);
    else if (this.plotEl.clientWidth) this.create();
  }

  destroy(): void {
    this.observer.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}
