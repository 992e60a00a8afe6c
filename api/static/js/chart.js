// Time-series charts (uPlot, vendored): readings, with the alert limit as a red dashed
// line and the alert episode shaded; gaps in the data stay gaps.
import uPlot from "../vendor/uPlot.esm.js";
import { get, items, nextCursor } from "./api.js";
import { getLang, t } from "./i18n.js";

const BUCKET_S = { "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400 };
const MAX_POINTS = 1000;
// Up to this many raw points a range is drawn from raw readings, not buckets.
const RAW_MAX_S = 2 * 3600;

/** The finest bucket that keeps a range under MAX_POINTS points, or null for raw data. */
export function chooseBucket(rangeS) {
  if (rangeS <= RAW_MAX_S) return null;
  for (const [name, s] of Object.entries(BUCKET_S)) {
    if (rangeS / s <= MAX_POINTS) return name;
  }
  return "1d";
}

function pointTime(r) {
  const v = r.ts ?? r.bucket ?? r.time ?? r.t ?? r.start;
  const ms = typeof v === "number" ? v : Date.parse(v);
  return Number.isFinite(ms) ? ms / 1000 : null;
}

function pointValue(r, agg) {
  for (const k of ["value", agg, "v", "avg"]) {
    if (k && k in r) return r[k] === null ? null : Number(r[k]);
  }
  return null;
}

/**
 * A metric's history: {data: [xs (epoch s), ys], limits}, all pages, with nulls where the
 * data has gaps; `limits` ({low, high}) are the device's rule limits if the API gives them.
 * `bucket` null means raw readings.
 */
export async function fetchSeries({ deviceId, metric, startMs, endMs, bucket, agg = "avg" }) {
  const query = {
    device_id: deviceId,
    metric,
    start: new Date(startMs).toISOString(),
    end: new Date(endMs).toISOString(),
  };
  if (bucket) Object.assign(query, { bucket, agg });
  const rows = [];
  let cursor = null;
  let limits = null;
  for (let page = 0; page < 10; page++) {
    const data = await get("/readings", cursor ? { ...query, cursor } : query);
    if (page === 0 && data && data.limits) limits = data.limits;
    rows.push(...items(data));
    cursor = nextCursor(data);
    if (!cursor || rows.length >= 20000) break;
  }
  const pts = rows
    .map((r) => [pointTime(r), pointValue(r, agg)])
    .filter(([x]) => x !== null)
    .sort((a, b) => a[0] - b[0]);
  return { data: withGaps(pts, bucket ? BUCKET_S[bucket] : null), limits };
}

/** Limit lines for drawChart from an alert threshold and/or the API's {low, high}. */
export function limitLines(threshold, limits) {
  const lines = [];
  const add = (v) => {
    if (v !== null && v !== undefined && !lines.some((x) => x === Number(v))) lines.push(Number(v));
  };
  add(threshold);
  if (limits) {
    add(limits.high);
    add(limits.low);
  }
  return lines;
}

/** Insert a null between two points further apart than a gap, so the line breaks there. */
export function withGaps(pts, stepS) {
  let gapS = stepS ? stepS * 1.5 : null;
  if (!gapS && pts.length > 2) {
    const d = pts.slice(1).map((p, i) => p[0] - pts[i][0]).sort((a, b) => a - b);
    gapS = Math.max(d[Math.floor(d.length / 2)] * 3, 1);
  }
  const xs = [];
  const ys = [];
  pts.forEach(([x, y], i) => {
    if (i > 0 && gapS && x - pts[i - 1][0] > gapS) {
      xs.push((x + pts[i - 1][0]) / 2);
      ys.push(null);
    }
    xs.push(x);
    ys.push(y);
  });
  return [xs, ys];
}

function fmtAxisTime(locale) {
  return (self, splits, axisIdx, foundSpace) => {
    const spanS = self.scales.x.max - self.scales.x.min;
    const opts = spanS > 2 * 86400
      ? { month: "2-digit", day: "2-digit", hour: spanS > 10 * 86400 ? undefined : "2-digit" }
      : { hour: "2-digit", minute: "2-digit" };
    const f = new Intl.DateTimeFormat(locale, { ...opts, hour12: false });
    return splits.map((s) => f.format(new Date(s * 1000)));
  };
}

/**
 * Draw a chart into `el`. Returns the uPlot instance (or null when there is no data).
 * opts: {label, unit, limits: [number], band: [startS, endS], xRange: [minS, maxS], height}
 */
export function drawChart(el, series0, opts = {}) {
  let [xs, ys] = series0;
  el.replaceChildren();
  if (!xs.length) {
    const empty = document.createElement("div");
    empty.className = "chart-empty";
    empty.textContent = t("device.no_data");
    el.append(empty);
    return null;
  }
  const locale = getLang() === "zh" ? "zh-CN" : "en-GB";
  const unit = opts.unit ? ` ${opts.unit}` : "";
  const series = [
    {},
    {
      label: `${opts.label ?? ""}${unit ? ` (${opts.unit})` : ""}`,
      stroke: "#1f6feb",
      width: 1.5,
      spanGaps: false,
      points: { show: xs.length < 60 },
      // On/off metrics (door, power) hold their value until the next reading.
      ...(opts.stepped ? { paths: uPlot.paths.stepped({ align: 1 }) } : {}),
      value: (u, v) => (v === null || v === undefined ? "—" : `${v.toFixed(2)}${unit}`),
    },
  ];
  // The chosen range is kept by padding the data with empty ends (a fixed scale range
  // would disable drag-to-zoom).
  if (opts.xRange) {
    xs = [...xs];
    ys = [...ys];
    if (opts.xRange[0] < xs[0]) { xs.unshift(opts.xRange[0]); ys.unshift(null); }
    if (opts.xRange[1] > xs[xs.length - 1]) { xs.push(opts.xRange[1]); ys.push(null); }
  }
  const data = [xs, ys];
  for (const limit of opts.limits ?? []) {
    series.push({
      label: `${t("detail.limit")} ${limit}${unit}`,
      stroke: "#d1242f",
      width: 1.5,
      dash: [6, 4],
      points: { show: false },
    });
    data.push(xs.map(() => limit));
  }
  const band = opts.band;
  const plugins = band ? [episodeBand(band)] : [];
  const width = Math.max(el.clientWidth || 0, 320);
  const u = new uPlot(
    {
      width,
      height: opts.height ?? 260,
      series,
      plugins,
      scales: {
        x: { time: true },
      },
      axes: [
        { values: fmtAxisTime(locale), space: 80, stroke: "#57606a", grid: { stroke: "#eaeef2" } },
        { stroke: "#57606a", grid: { stroke: "#eaeef2" }, size: 56 },
      ],
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
    },
    data,
    el,
  );
  const ro = new ResizeObserver(() => {
    if (!el.isConnected) return ro.disconnect();
    const w = Math.max(el.clientWidth, 320);
    if (Math.abs(w - u.width) > 4) u.setSize({ width: w, height: u.height });
  });
  ro.observe(el);
  return u;
}

/** Shade the alert episode (from its start until resolved, or now) behind the lines. */
function episodeBand([startS, endS]) {
  return {
    hooks: {
      drawClear: [
        (u) => {
          const x0 = u.valToPos(startS, "x", true);
          const x1 = u.valToPos(endS, "x", true);
          const { top, height, left, width } = u.bbox;
          const a = Math.max(left, Math.min(x0, x1));
          const b = Math.min(left + width, Math.max(x0, x1));
          if (b <= a) return;
          u.ctx.save();
          u.ctx.fillStyle = "rgba(209, 36, 47, 0.08)";
          u.ctx.fillRect(a, top, b - a, height);
          u.ctx.restore();
        },
      ],
    },
  };
}
