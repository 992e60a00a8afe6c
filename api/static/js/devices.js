// Devices: the table (online state, last seen, last values with out-of-limit marked) and
// one device's history charts over a chosen range, downsampled, with CSV download.
import { get, getAll, href } from "./api.js";
import { severityBadge, stateBadge } from "./board.js";
import {
  DOMAINS, DOMAIN_METRICS, isBinaryMetric, metricLabel, metricUnit, sortMetrics,
} from "./catalogue.js";
import { chooseBucket, drawChart, fetchSeries, limitLines } from "./chart.js";
import { clear, h } from "./dom.js";
import { fmtAge, fmtNum, fmtTime, t, tOr } from "./i18n.js";

/** A latest-values response as {online, last_seen, values: [{metric, value, ts, ...}]}. */
export function normalizeLatest(data) {
  if (!data || typeof data !== "object") return { values: [] };
  let values = [];
  const src = data.metrics ?? data.values ?? data.latest ?? data.readings ?? data.items;
  if (Array.isArray(src)) values = src.map((v) => ({ ...v, metric: v.metric ?? v.name }));
  else if (src && typeof src === "object") {
    values = Object.entries(src).map(([metric, v]) => (
      v !== null && typeof v === "object" ? { ...v, metric } : { metric, value: v }));
  } else if (Array.isArray(data)) values = data;
  return {
    online: data.online ?? null,
    last_seen: data.last_seen ?? null,
    values: values.filter((v) => v.metric),
  };
}

/**
 * Whether a last value is beyond its limit: an explicit flag from the API if there is
 * one, else the limit of an open alert on the same device and metric.
 */
export function outOfLimit(v, openAlerts) {
  if (typeof v.out_of_limit === "boolean") return { out: v.out_of_limit, limit: v.limit ?? null };
  if (typeof v.in_limit === "boolean") return { out: !v.in_limit, limit: v.limit ?? null };
  const limits = v.limits ?? null;
  if (limits && v.value !== null && v.value !== undefined) {
    const lo = limits.low ?? limits.min;
    const hi = limits.high ?? limits.max;
    if ((hi !== undefined && hi !== null && v.value > hi) ||
        (lo !== undefined && lo !== null && v.value < lo)) {
      return { out: true, limit: hi !== undefined && hi !== null && v.value > hi ? hi : lo };
    }
  }
  const alert = openAlerts.find((a) => a.metric === v.metric && a.threshold !== null &&
    a.threshold !== undefined);
  if (!alert || v.value === null || v.value === undefined) return { out: false, limit: null };
  const high = Number(alert.value) >= Number(alert.threshold);
  const out = high ? Number(v.value) > alert.threshold : Number(v.value) < alert.threshold;
  return { out, limit: alert.threshold, alert };
}

function onlineBadge(online) {
  const key = online === true ? "true" : online === false ? "false" : "null";
  return h("span", { class: `badge online-${key}` }, t(`online.${key}`));
}

function valueChip(v, openAlerts) {
  const unit = metricUnit(v.metric);
  const { out, limit } = outOfLimit(v, openAlerts);
  let text = v.value === null || v.value === undefined ? "—" : fmtNum(v.value);
  if (isBinaryMetric(v.metric) && (v.value === 0 || v.value === 1)) {
    text = t(`binary.${v.metric}.${v.value}`);
  }
  return h(
    "span",
    {
      class: `chip${out ? " out" : ""}`,
      title: `${fmtTime(v.ts, { seconds: true })}${out ? ` · ${t("out_of_limit")} (${limit})` : ""}`,
      dataset: { metric: v.metric, out: out ? "1" : "0" },
    },
    h("span", { class: "chip-label" }, metricLabel(v.metric)),
    ` ${text}${unit && !isBinaryMetric(v.metric) ? ` ${unit}` : ""}`,
    out ? h("span", { class: "chip-flag" }, ` ▲ ${t("out_of_limit")}`) : null,
  );
}

async function mapLimited(list, limit, fn) {
  const out = new Array(list.length);
  let i = 0;
  const workers = Array.from({ length: Math.min(limit, list.length) }, async () => {
    while (i < list.length) {
      const k = i++;
      out[k] = await fn(list[k]).catch(() => null);
    }
  });
  await Promise.all(workers);
  return out;
}

export class DeviceList {
  constructor(store) {
    this.store = store;
    this.el = null;
    this.devices = null;
    this.latest = new Map();
    this.query = "";
    this.domain = "";
    this.onChange = () => this.renderTable();
    this.refreshTimer = null;
  }

  mount(root) {
    this.el = root;
    this.store.addEventListener("change", this.onChange);
    clear(root).append(h("p", { class: "muted" }, t("loading")));
    this.load();
    this.refreshTimer = setInterval(() => this.load(), 60000);
  }

  unmount() {
    this.store.removeEventListener("change", this.onChange);
    clearInterval(this.refreshTimer);
    this.el = null;
  }

  rerender() {
    this.render();
  }

  async load() {
    try {
      const devices = await getAll("/devices", {});
      // Last values come with the list if the API includes them, else one call each.
      const inline = (d) => Array.isArray(d.metrics) || Array.isArray(d.latest);
      const latest = await mapLimited(devices, 6, (d) => (inline(d)
        ? Promise.resolve({ ...d, metrics: d.metrics ?? d.latest })
        : get(`/devices/${encodeURIComponent(d.device_id)}/latest`)));
      devices.forEach((d, i) => this.latest.set(d.device_id, normalizeLatest(latest[i])));
      const first = this.devices === null;
      this.devices = devices;
      // A refresh redraws only the table, so typing in the search box is not disturbed.
      if (first || !this.tableBox || !this.tableBox.isConnected) this.render();
      else this.renderTable();
    } catch (err) {
      if (this.el) clear(this.el).append(h("p", { class: "error" }, err.message));
    }
  }

  render() {
    if (!this.el || !this.devices) return;
    this.tableBox = h("div", { id: "device-table-box" });
    clear(this.el).append(
      h(
        "div",
        { class: "toolbar" },
        h("h2", {}, t("devices.title")),
        h("div", { class: "filters" },
          h("input", {
            type: "search", id: "device-search", value: this.query,
            placeholder: t("devices.search"),
            oninput: (e) => { this.query = e.target.value; this.renderTable(); },
          }),
          h("label", { class: "filter" }, h("span", {}, t("filter.domain")),
            h("select", { onchange: (e) => { this.domain = e.target.value; this.renderTable(); } },
              h("option", { value: "" }, t("filter.all")),
              DOMAINS.map((d) => h("option", { value: d, selected: this.domain === d },
                tOr(`domain.${d}`, d)))))),
      ),
      this.tableBox,
    );
    this.renderTable();
  }

  renderTable() {
    if (!this.tableBox || !this.devices) return;
    const q = this.query.trim().toLowerCase();
    const rows = this.devices
      .filter((d) => !this.domain || d.domain === this.domain)
      .filter((d) => !q || [d.device_id, d.name, d.site_id, d.site_name, d.region]
        .some((s) => s && String(s).toLowerCase().includes(q)))
      .sort((a, b) => String(a.device_id).localeCompare(String(b.device_id)));
    clear(this.tableBox).append(rows.length
      ? h("table", { class: "grid devices", id: "device-table" },
        h("thead", {}, h("tr", {}, ["device", "name", "domain", "site", "region", "online",
          "last_seen", "last_values"].map((c) => h("th", {}, t(`col.${c}`))))),
        h("tbody", {}, rows.map((d) => this.row(d))))
      : h("p", { class: "empty" }, t("devices.empty")));
  }

  row(d) {
    const latest = this.latest.get(d.device_id) ?? { values: [] };
    const online = d.online ?? latest.online;
    const lastSeen = d.last_seen ?? latest.last_seen;
    const alerts = this.store.forDevice(d.device_id);
    const values = sortMetrics(d.domain, latest.values.map((v) => v.metric))
      .map((m) => latest.values.find((v) => v.metric === m));
    return h(
      "tr",
      { class: "device-row", dataset: { deviceId: d.device_id },
        onclick: (e) => {
          if (!e.target.closest("a")) location.hash = `#/devices/${encodeURIComponent(d.device_id)}`;
        } },
      h("td", {}, h("a", { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id),
        alerts.length ? [" ", severityBadge(worst(alerts))] : null),
      h("td", {}, d.name || ""),
      h("td", {}, tOr(`domain.${d.domain}`, d.domain ?? "")),
      h("td", {}, d.site_name || d.site_id || ""),
      h("td", {}, d.region ?? d.site?.region ?? ""),
      h("td", {}, onlineBadge(online)),
      h("td", { title: fmtTime(lastSeen, { seconds: true }) }, lastSeen ? fmtAge(lastSeen) : "—"),
      h("td", {}, h("div", { class: "chips" }, values.map((v) => valueChip(v, alerts)))),
    );
  }
}

function worst(alerts) {
  const order = ["critical", "warning", "info"];
  return order.find((s) => alerts.some((a) => a.severity === s)) ?? "info";
}

const RANGES = { "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };

function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

export class DevicePage {
  constructor(store, id) {
    this.store = store;
    this.id = id;
    this.el = null;
    this.range = sessionStorage.getItem("healthmon.range") || "24h";
    this.agg = sessionStorage.getItem("healthmon.agg") || "avg";
    this.custom = null; // [startMs, endMs]
    this.device = null;
    this.latest = null;
  }

  mount(root) {
    this.el = root;
    clear(root).append(h("p", { class: "muted" }, t("loading")));
    this.load();
    // A rolling range follows the clock: new readings appear without a reload.
    this.timer = setInterval(() => {
      if (this.range !== "custom" && !document.hidden) this.load();
    }, 60000);
  }

  unmount() {
    clearInterval(this.timer);
    this.el = null;
  }

  rerender() {
    this.render();
  }

  async load() {
    try {
      const [device, latest] = await Promise.all([
        get(`/devices/${encodeURIComponent(this.id)}`),
        get(`/devices/${encodeURIComponent(this.id)}/latest`).catch(() => null),
      ]);
      this.device = device.device ?? device;
      this.latest = normalizeLatest(latest);
      this.render();
    } catch (err) {
      if (this.el) {
        clear(this.el).append(h("a", { href: "#/devices", class: "back" }, t("device.back")),
          h("p", { class: "error" }, err.message));
      }
    }
  }

  window() {
    if (this.range === "custom" && this.custom) return this.custom;
    const end = Date.now();
    return [end - RANGES[this.range] * 1000, end];
  }

  metrics() {
    const have = this.latest.values.map((v) => v.metric);
    const names = have.length ? have : DOMAIN_METRICS[this.device.domain] ?? [];
    return sortMetrics(this.device.domain, names);
  }

  /** Mark the last value of `metric` against the rule limits the readings API returned. */
  markByLimits(metric, limits) {
    if (!limits || !this.el) return;
    const v = this.latest.values.find((x) => x.metric === metric);
    const chip = this.el.querySelector(`#device-values .chip[data-metric="${metric}"]`);
    if (!v || !chip || chip.dataset.out === "1" || v.value === null || v.value === undefined) return;
    const { out, limit } = outOfLimit({ ...v, limits }, []);
    if (!out) return;
    chip.classList.add("out");
    chip.dataset.out = "1";
    chip.title += ` · ${t("out_of_limit")} (${limit})`;
    chip.append(h("span", { class: "chip-flag" }, ` ▲ ${t("out_of_limit")}`));
  }

  render() {
    if (!this.el || !this.device) return;
    const d = this.device;
    const alerts = this.store.forDevice(d.device_id);
    const [startMs, endMs] = this.window();
    const rangeButtons = [...Object.keys(RANGES), "custom"].map((r) => h(
      "button",
      { class: `btn btn-range${this.range === r ? " active" : ""}`, dataset: { range: r },
        onclick: () => {
          this.range = r;
          sessionStorage.setItem("healthmon.range", r);
          if (r === "custom") this.custom = this.custom ?? [startMs, endMs];
          this.render();
        } },
      t(`range.${r}`),
    ));
    const from = h("input", { type: "datetime-local", id: "range-from", value: toLocalInput(startMs) });
    const to = h("input", { type: "datetime-local", id: "range-to", value: toLocalInput(endMs) });
    const custom = this.range === "custom"
      ? h("span", { class: "custom-range" },
        h("label", {}, t("device.from"), " ", from), h("label", {}, t("device.to"), " ", to),
        h("button", { class: "btn", onclick: () => {
          const s = new Date(from.value).getTime();
          const e = new Date(to.value).getTime();
          if (Number.isFinite(s) && Number.isFinite(e) && e > s) {
            this.custom = [s, e];
            this.render();
          }
        } }, t("device.apply")))
      : null;
    const aggSelect = h("select", { id: "agg-select", onchange: (e) => {
      this.agg = e.target.value;
      sessionStorage.setItem("healthmon.agg", this.agg);
      this.render();
    } }, ["avg", "min", "max", "last"].map((a) =>
      h("option", { value: a, selected: this.agg === a }, t(`agg.${a}`))));
    const bucket = chooseBucket((endMs - startMs) / 1000);
    const charts = this.metrics().map((m) => {
      const box = h("div", { class: "chart", dataset: { metric: m } });
      const csv = href("/readings", {
        device_id: d.device_id, metric: m, start: new Date(startMs).toISOString(),
        end: new Date(endMs).toISOString(), format: "csv",
      });
      return { m, box, section: h("section", { class: "metric-chart" },
        h("div", { class: "chart-head" },
          h("h3", {}, metricLabel(m), metricUnit(m) ? ` (${metricUnit(m)})` : ""),
          h("a", { class: "btn btn-link csv-link", href: csv, download: `${d.device_id}_${m}.csv` },
            t("device.csv"))),
        box) };
    });
    clear(this.el).append(
      h("a", { href: "#/devices", class: "back" }, t("device.back")),
      h("div", { class: "detail-head" },
        h("h2", {}, d.device_id, d.name ? ` · ${d.name}` : ""),
        onlineBadge(d.online ?? this.latest.online)),
      h("dl", { class: "facts" },
        h("dt", {}, t("col.domain")), h("dd", {}, tOr(`domain.${d.domain}`, d.domain ?? "")),
        h("dt", {}, t("col.site")), h("dd", {}, d.site_name || d.site_id || "—"),
        h("dt", {}, t("col.region")), h("dd", {}, d.region ?? "—"),
        h("dt", {}, t("col.last_seen")),
        h("dd", {}, fmtTime(d.last_seen ?? this.latest.last_seen, { seconds: true })),
        h("dt", {}, t("col.last_values")),
        h("dd", { class: "chips", id: "device-values" }, sortMetrics(d.domain,
          this.latest.values.map((v) => v.metric))
          .map((m) => valueChip(this.latest.values.find((v) => v.metric === m), alerts)))),
      alerts.length
        ? h("section", {}, h("h3", {}, t("device.open_alerts")),
          h("ul", { class: "alert-links" }, alerts.map((a) => h("li", {},
            severityBadge(a.severity), " ", stateBadge(a.state), " ",
            h("a", { href: `#/alerts/${encodeURIComponent(a.id)}` }, a.message || a.rule_id)))))
        : null,
      h("section", {},
        h("h3", {}, t("device.history")),
        h("div", { class: "toolbar range-bar" },
          h("span", {}, t("device.range")), rangeButtons, custom,
          h("label", { class: "filter" }, h("span", {}, t("device.agg")), aggSelect),
          h("span", { class: "muted small", id: "bucket-info" }, bucket
            ? t("device.bucket", { bucket, agg: t(`agg.${this.agg}`) }) : t("device.raw"))),
        charts.map((c) => c.section)),
    );
    for (const { m, box } of charts) {
      const alert = alerts.find((a) => a.metric === m && a.threshold !== null);
      box.append(h("p", { class: "muted" }, t("loading")));
      fetchSeries({ deviceId: d.device_id, metric: m, startMs, endMs, bucket, agg: this.agg })
        .then(({ data, limits }) => {
          if (!box.isConnected) return;
          this.markByLimits(m, limits);
          drawChart(box, data, {
            label: metricLabel(m), unit: metricUnit(m), stepped: isBinaryMetric(m),
            limits: limitLines(alert ? alert.threshold : null, limits),
            band: alert ? [Date.parse(alert.started_at) / 1000, endMs / 1000] : null,
            xRange: [startMs / 1000, endMs / 1000], height: 220,
          });
        })
        .catch((err) => box.replaceChildren(h("p", { class: "error" }, err.message)));
    }
  }
}
