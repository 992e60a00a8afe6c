// One alert: what, where, its timeline, and the metric around the episode with the limit.
import {
  canAck, openAckDialog, severityBadge, stateBadge, thresholdText, valueText,
} from "./board.js";
import { metricLabel, metricUnit } from "./catalogue.js";
import { chooseBucket, drawChart, fetchSeries, limitLines } from "./chart.js";
import { clear, h } from "./dom.js";
import { fmtTime, t, tOr } from "./i18n.js";

const HOUR_MS = 3600 * 1000;

/** The chart's window: some time before the episode, until a while after it ended. */
export function episodeWindow(alert, nowMs = Date.now()) {
  const start = Date.parse(alert.started_at);
  const end = alert.resolved_at ? Date.parse(alert.resolved_at) : nowMs;
  const span = Math.max(end - start, 0);
  const before = Math.max(HOUR_MS, span * 0.5);
  const after = Math.max(HOUR_MS / 2, span * 0.25);
  return [start - before, Math.min(end + after, nowMs)];
}

export class AlertDetail {
  constructor(store, session, id) {
    this.store = store;
    this.session = session;
    this.id = id;
    this.el = null;
    this.timer = null;
    this.onChange = (ev) => {
      if (ev.detail && ev.detail.id === this.id) {
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.load(), 300);
      }
    };
  }

  mount(root) {
    this.el = root;
    this.store.addEventListener("change", this.onChange);
    clear(root).append(h("p", { class: "muted" }, t("loading")));
    this.load();
  }

  unmount() {
    this.store.removeEventListener("change", this.onChange);
    clearTimeout(this.timer);
    this.el = null;
  }

  rerender() {
    if (this.data) this.render(this.data);
  }

  async load() {
    try {
      const data = await this.store.fetchDetail(this.id);
      this.data = data;
      if (this.el) this.render(data);
    } catch (err) {
      if (!this.el) return;
      clear(this.el).append(
        h("a", { href: "#/alerts", class: "back" }, t("detail.back")),
        h("p", { class: "error" }, err.status === 404 ? t("detail.not_found") : err.message),
      );
    }
  }

  render(data) {
    const a = data.alert ?? data;
    const timeline = data.timeline ?? data.events ?? a.timeline ?? [];
    const chartBox = h("div", { class: "chart", id: "alert-chart" });
    const facts = [
      ["col.device", a.device_id
        ? h("a", { href: `#/devices/${encodeURIComponent(a.device_id)}` }, a.device_id) : "—"],
      ["col.domain", tOr(`domain.${a.domain}`, a.domain ?? "—")],
      ["col.region", a.region ?? "—"],
      ["col.site", a.site_id ?? "—"],
      ["col.metric", a.metric ? metricLabel(a.metric) : "—"],
      ["col.value", valueText(a)],
      ["col.threshold", thresholdText(a)],
      ["col.started", fmtTime(a.started_at, { seconds: true })],
      ["detail.resolved", fmtTime(a.resolved_at, { seconds: true })],
      ["detail.rule", a.rule_id ?? "—"],
    ];
    if (a.standard) facts.push(["detail.standard", a.standard]);
    clear(this.el).append(
      h("a", { href: "#/alerts", class: "back" }, t("detail.back")),
      h(
        "div",
        { class: "detail-head" },
        severityBadge(a.severity), " ", h("span", { id: "detail-state" }, stateBadge(a.state)),
        h("h2", {}, a.message || `${a.device_id ?? ""} ${a.metric ?? ""}`),
        a.state === "firing" && canAck(this.session)
          ? h("button", { class: "btn btn-ack", id: "detail-ack", onclick: () => openAckDialog(a) },
            t("ack.button"))
          : null,
        a.acknowledged_at
          ? h("p", { class: "muted" },
            t("ack.by", { who: a.acknowledged_by ?? "", at: fmtTime(a.acknowledged_at) }),
            a.ack_note ? ` — ${a.ack_note}` : "")
          : null,
      ),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v)])),
      a.metric && a.device_id
        ? h("section", {},
          h("h3", {}, t("detail.chart", { metric: metricLabel(a.metric) })), chartBox)
        : null,
      h("section", {}, h("h3", {}, t("detail.timeline")), this.timelineTable(timeline)),
    );
    if (a.metric && a.device_id) this.drawChart(a, chartBox);
  }

  timelineTable(events) {
    const rows = [...events].sort((x, y) => (x.id ?? 0) - (y.id ?? 0) ||
      Date.parse(x.at) - Date.parse(y.at));
    return h(
      "table",
      { class: "grid timeline", id: "alert-timeline" },
      h("thead", {}, h("tr", {}, ["at", "event", "state", "actor", "note"].map(
        (c) => h("th", {}, t(`col.${c}`))))),
      h("tbody", {}, rows.map((e) => h(
        "tr",
        { dataset: { kind: e.kind ?? "" } },
        h("td", {}, fmtTime(e.at, { seconds: true })),
        h("td", {}, tOr(`event.${e.kind}`, e.kind ?? "")),
        h("td", {}, e.state ? stateBadge(e.state) : ""),
        h("td", {}, e.actor ?? ""),
        h("td", { class: "note" }, e.note ?? ""),
      ))),
    );
  }

  async drawChart(a, box) {
    const [startMs, endMs] = episodeWindow(a);
    const bucket = chooseBucket((endMs - startMs) / 1000);
    box.replaceChildren(h("p", { class: "muted" }, t("loading")));
    try {
      const { data, limits } = await fetchSeries({
        deviceId: a.device_id, metric: a.metric, startMs, endMs, bucket,
        agg: a.threshold !== null && isLowLimit(a) ? "min" : "max",
      });
      if (!box.isConnected) return;
      const bandEnd = a.resolved_at ? Date.parse(a.resolved_at) : endMs;
      // The alert's own threshold is the limit drawn; the rule band is added when the
      // alert has none (e.g. a rate-of-change rule).
      drawChart(box, data, {
        label: metricLabel(a.metric),
        unit: metricUnit(a.metric),
        limits: limitLines(a.threshold, a.threshold === null ? limits : null),
        band: [Date.parse(a.started_at) / 1000, bandEnd / 1000],
        xRange: [startMs / 1000, endMs / 1000],
      });
    } catch (err) {
      box.replaceChildren(h("p", { class: "error" }, err.message));
    }
  }
}

/** True when the limit is a minimum (the value fell below it), e.g. free chlorine. */
function isLowLimit(a) {
  return a.value !== null && a.value !== undefined && a.threshold !== null &&
    Number(a.value) < Number(a.threshold);
}
