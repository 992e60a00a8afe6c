// The live alert board: open alerts, filtered and sorted, acknowledged with a note.
import { getAll, post } from "./api.js";
import { DOMAINS, SEVERITIES, isBinaryMetric, metricLabel, metricUnit } from "./catalogue.js";
import { clear, h, toast } from "./dom.js";
import { fmtAge, fmtNum, fmtTime, t, tOr } from "./i18n.js";
import { compareAlerts } from "./store.js";

const FILTER_KEY = "healthmon.filters";

export function loadFilters() {
  try {
    return { domain: "", region: "", severity: "", ...JSON.parse(localStorage.getItem(FILTER_KEY)) };
  } catch {
    return { domain: "", region: "", severity: "" };
  }
}

export function severityBadge(sev) {
  return h("span", { class: `badge sev-${sev}` }, tOr(`severity.${sev}`, sev));
}

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}` }, tOr(`state.${state}`, state));
}

export function valueText(alert) {
  const unit = metricUnit(alert.metric);
  if (alert.value === null || alert.value === undefined) return "—";
  if (isBinaryMetric(alert.metric) && (alert.value === 0 || alert.value === 1)) {
    return t(`binary.${alert.metric}.${alert.value}`);
  }
  return `${fmtNum(alert.value)}${unit ? ` ${unit}` : ""}`;
}

export function thresholdText(alert) {
  const unit = metricUnit(alert.metric);
  if (alert.threshold === null || alert.threshold === undefined) return "—";
  return `${fmtNum(alert.threshold)}${unit ? ` ${unit}` : ""}`;
}

export function canAck(session) {
  return session && (session.role === "operator" || session.role === "admin");
}

export class Board {
  constructor(store, session) {
    this.store = store;
    this.session = session;
    this.filters = loadFilters();
    this.el = null;
    this.fresh = new Set(); // ids that arrived live, highlighted once
    this.siteRegions = [];
    getAll("/sites", {}).then(
      (sites) => {
        this.siteRegions = sites.map((x) => x.region).filter(Boolean);
        this.render();
      },
      () => {},
    );
  }

  mount(root) {
    this.el = root;
    this.render();
  }

  unmount() {
    this.el = null;
  }

  markFresh(id) {
    this.fresh.add(id);
  }

  regions() {
    const set = new Set([...(this.session.regions || []), ...this.siteRegions]);
    for (const a of this.store.open.values()) if (a.region) set.add(a.region);
    return [...set].sort();
  }

  filtered() {
    const f = this.filters;
    return [...this.store.open.values()]
      .filter((a) => !f.domain || a.domain === f.domain)
      .filter((a) => !f.region || a.region === f.region)
      .filter((a) => !f.severity || a.severity === f.severity)
      .sort(compareAlerts);
  }

  setFilter(key, value) {
    this.filters[key] = value;
    localStorage.setItem(FILTER_KEY, JSON.stringify(this.filters));
    this.render();
  }

  filterSelect(key, values, labelOf) {
    return h(
      "label",
      { class: "filter" },
      h("span", {}, t(`filter.${key}`)),
      h(
        "select",
        { id: `filter-${key}`, onchange: (e) => this.setFilter(key, e.target.value) },
        h("option", { value: "" }, t("filter.all")),
        values.map((v) => h("option", { value: v, selected: this.filters[key] === v }, labelOf(v))),
      ),
    );
  }

  render() {
    if (!this.el) return;
    const rows = this.filtered();
    const all = [...this.store.open.values()];
    const firing = all.filter((a) => a.state === "firing").length;
    clear(this.el).append(
      h(
        "div",
        { class: "toolbar" },
        h("h2", {}, t("board.title")),
        h(
          "span",
          { class: "muted", id: "board-count" },
          t("board.count", { n: all.length, firing, acked: all.length - firing }),
        ),
        h(
          "div",
          { class: "filters" },
          this.filterSelect("domain", DOMAINS, (d) => tOr(`domain.${d}`, d)),
          // A remembered region with no alerts or sites now still shows as selected.
          this.filterSelect("region", [...new Set([...this.regions(), this.filters.region]
            .filter(Boolean))].sort(), (r) => r),
          this.filterSelect("severity", SEVERITIES, (s) => tOr(`severity.${s}`, s)),
        ),
      ),
      this.store.streamState === "down"
        ? h("div", { class: "stale-banner", id: "board-stale" }, t("board.stale"))
        : null,
      rows.length
        ? h(
            "table",
            { class: "grid alerts", id: "alert-board" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["severity", "state", "started", "device", "region", "metric", "value",
                  "threshold", "message", "actions"].map((c) => h("th", {}, t(`col.${c}`))),
              ),
            ),
            h("tbody", {}, rows.map((a) => this.row(a))),
          )
        : h("p", { class: "empty", id: "board-empty" }, t("board.empty")),
    );
    this.fresh.clear();
  }

  row(a) {
    const open = () => {
      location.hash = `#/alerts/${encodeURIComponent(a.id)}`;
    };
    return h(
      "tr",
      {
        class: `alert-row sev-row-${a.severity} state-row-${a.state}${this.fresh.has(a.id) ? " fresh" : ""}`,
        dataset: { alertId: a.id, state: a.state, severity: a.severity },
        onclick: (e) => {
          if (!e.target.closest("button, a")) open();
        },
      },
      h("td", {}, severityBadge(a.severity)),
      h("td", {}, stateBadge(a.state)),
      h("td", { title: fmtTime(a.started_at, { seconds: true }) },
        fmtTime(a.started_at), h("div", { class: "muted small" }, fmtAge(a.started_at))),
      h(
        "td",
        {},
        a.device_id
          ? h("a", { href: `#/devices/${encodeURIComponent(a.device_id)}` }, a.device_id)
          : "—",
        h("div", { class: "muted small" }, tOr(`domain.${a.domain}`, a.domain ?? "")),
      ),
      h("td", {}, a.region ?? "—"),
      h("td", {}, a.metric ? metricLabel(a.metric) : "—"),
      h("td", { class: "num value-cell" }, valueText(a)),
      h("td", { class: "num" }, thresholdText(a)),
      h("td", { class: "message" }, a.message || ""),
      h(
        "td",
        { class: "actions" },
        a.state === "firing" && canAck(this.session)
          ? h("button", { class: "btn btn-ack", onclick: () => openAckDialog(a) }, t("ack.button"))
          : a.state === "acknowledged"
            ? h("span", { class: "muted small" }, a.acknowledged_by || "")
            : null,
      ),
    );
  }
}

/** The acknowledge dialog; a note is required (the API refuses an empty one too). */
export function openAckDialog(alert, onDone) {
  const dlg = document.getElementById("ack-dialog");
  const form = dlg.querySelector("form");
  const note = dlg.querySelector("textarea");
  const err = dlg.querySelector(".form-error");
  const summary = dlg.querySelector(".ack-summary");
  note.value = "";
  err.textContent = "";
  note.oninput = () => {
    err.textContent = "";
  };
  summary.replaceChildren(
    severityBadge(alert.severity), " ",
    h("strong", {}, alert.device_id ?? ""), " · ",
    alert.metric ? metricLabel(alert.metric) : "", " ",
    valueText(alert), " / ", thresholdText(alert),
    h("div", { class: "muted" }, alert.message || ""),
  );
  form.onsubmit = async (e) => {
    e.preventDefault();
    if (e.submitter && e.submitter.value === "cancel") return dlg.close();
    const text = note.value.trim();
    if (!text) {
      err.textContent = t("ack.note_required");
      note.focus();
      return;
    }
    const submit = form.querySelector("button[value=ack]");
    submit.disabled = true;
    try {
      const res = await post(`/alerts/${encodeURIComponent(alert.id)}/ack`, { note: text });
      dlg.close();
      toast(t("ack.done"), "ok");
      const acked = res && typeof res === "object" ? (res.alert ?? res) : null;
      window.dispatchEvent(new CustomEvent("healthmon:acked", { detail: acked }));
      if (onDone) onDone(acked);
    } catch (ex) {
      err.textContent = t("ack.failed", { msg: ex.message });
    } finally {
      submit.disabled = false;
    }
  };
  dlg.showModal();
  note.focus();
}
