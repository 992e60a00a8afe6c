// The console's entry point: sign-in, the header, the hash router and the live alarm.
import { desktopNotify, beep, isSoundOn, notificationState, requestNotifications, setSound } from "./alarm.js";
import { AlertDetail } from "./alert.js";
import { login, logout, me, setUnauthorizedHandler } from "./api.js";
import { Board } from "./board.js";
import { metricLabel } from "./catalogue.js";
import { DeviceList, DevicePage } from "./devices.js";
import { clear, h, toast } from "./dom.js";
import { getLang, onLangChange, setLang, t, tOr, translateDom } from "./i18n.js";
import { AlertStore } from "./store.js";

const app = {
  session: null, // {username, role, regions}
  store: null,
  board: null,
  view: null,
};

const $ = (sel) => document.querySelector(sel);

function showLogin(message = "") {
  stopSession();
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#login-username").focus();
}

function stopSession() {
  if (app.view) app.view.unmount();
  app.view = null;
  if (app.store) app.store.stop();
  app.store = null;
  app.board = null;
  app.session = null;
}

function startSession(session) {
  app.session = { ...session, regions: session.regions ?? [] };
  $("#login").hidden = true;
  $("#app").hidden = false;
  renderHeader();
  const store = new AlertStore();
  app.store = store;
  app.board = new Board(store, app.session);
  store.addEventListener("change", () => {
    if (app.view === app.board) app.board.render();
    renderAlertCount();
  });
  store.addEventListener("alert", (ev) => {
    const { alert, prev, isNewCritical } = ev.detail;
    if (alert.state === "resolved" && prev) {
      toast(`${tOr("state.resolved", "resolved")}: ${alert.device_id ?? ""} ${alert.message || ""}`, "ok");
    }
    if (!app.store.open.has(alert.id)) return;
    app.board.markFresh(alert.id);
    if (isNewCritical) raiseAlarm(alert);
  });
  store.addEventListener("stream", () => {
    renderStreamState();
    if (app.view === app.board) app.board.render();
  });
  store.addEventListener("unauthorized", () => showLogin());
  store.start().catch((err) => toast(t("error.generic", { msg: err.message }), "error"));
  route();
}

function raiseAlarm(alert) {
  beep();
  const body = [
    alert.device_id,
    alert.metric ? `${metricLabel(alert.metric)} ${alert.value ?? ""}` : "",
    alert.message || "",
  ].filter(Boolean).join(" · ");
  desktopNotify(`${t("new_critical")} · ${tOr(`domain.${alert.domain}`, alert.domain ?? "")}`,
    body, `#/alerts/${encodeURIComponent(alert.id)}`, alert.id);
  toast(`${t("new_critical")}: ${body}`, "error");
}

function renderHeader() {
  const s = app.session;
  $("#user-name").textContent = s.username;
  $("#user-role").textContent = tOr(`role.${s.role}`, s.role);
  $("#user-regions").textContent = s.regions.length ? s.regions.join("、") : t("regions.all");
  document.body.dataset.role = s.role;
  renderSound();
  renderNotify();
  renderStreamState();
  renderAlertCount();
  $("#lang-switch").textContent = t("lang.switch");
}

function renderSound() {
  $("#sound-toggle").textContent = isSoundOn() ? t("sound.on") : t("sound.off");
}

function renderNotify() {
  const st = notificationState();
  const btn = $("#notify-toggle");
  btn.disabled = st !== "default";
  btn.textContent = {
    default: t("notify.enable"), granted: t("notify.on"), denied: t("notify.denied"),
    unsupported: t("notify.unsupported"),
  }[st];
}

function renderStreamState() {
  const st = app.store ? app.store.streamState : "connecting";
  const el = $("#stream-state");
  el.className = `stream stream-${st}`;
  el.dataset.state = st;
  el.textContent = t(st === "live" ? "stream.live" : st === "down" ? "stream.down" : "stream.connecting");
}

function renderAlertCount() {
  const n = app.store ? [...app.store.open.values()].filter((a) => a.state === "firing").length : 0;
  const el = $("#nav-alert-count");
  el.textContent = n ? String(n) : "";
  el.hidden = !n;
  // The count in the tab title too, for a console left in a background tab.
  document.title = n ? `(${n}) ${t("app.title")}` : t("app.title");
}

/** #/alerts, #/alerts/<id>, #/devices, #/devices/<id> */
function route() {
  if (!app.session) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const [section, id] = parts;
  if (app.view) app.view.unmount();
  const main = $("#view");
  clear(main);
  let view;
  if (section === "devices" && id) view = new DevicePage(app.store, id);
  else if (section === "devices") view = new DeviceList(app.store);
  else if (section === "alerts" && id) view = new AlertDetail(app.store, app.session, id);
  else view = app.board;
  app.view = view;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.section === (section === "devices" ? "devices" : "alerts"));
  }
  view.mount(main);
  window.scrollTo(0, 0);
}

function wire() {
  translateDom();
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const btn = $("#login-submit");
    btn.disabled = true;
    $("#login-error").textContent = "";
    try {
      const session = await login($("#login-username").value.trim(), $("#login-password").value);
      $("#login-password").value = "";
      if (!location.hash || location.hash === "#/") location.hash = "#/alerts";
      startSession(session);
    } catch (err) {
      $("#login-error").textContent =
        err.status === 401 || err.status === 403 ? t("login.failed") : t("login.error", { msg: err.message });
    } finally {
      btn.disabled = false;
    }
  });
  $("#logout").addEventListener("click", async () => {
    await logout().catch(() => {});
    showLogin();
  });
  $("#sound-toggle").addEventListener("click", () => {
    setSound(!isSoundOn());
    renderSound();
    if (isSoundOn()) beep();
  });
  $("#notify-toggle").addEventListener("click", async () => {
    await requestNotifications();
    renderNotify();
  });
  for (const id of ["#lang-switch", "#lang-switch-login"]) {
    $(id).addEventListener("click", () => setLang(getLang() === "zh" ? "en" : "zh"));
  }
  onLangChange(() => {
    translateDom();
    if (app.session) {
      renderHeader();
      if (app.view && app.view.rerender) app.view.rerender();
      else if (app.view) app.view.render();
    }
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("healthmon:acked", (ev) => {
    if (app.store && ev.detail && ev.detail.id) {
      if (app.store.apply(ev.detail, { fromStream: false })) {
        app.store.emit("change", ev.detail);
      }
    }
  });
  setUnauthorizedHandler(() => {
    if (app.session) showLogin();
  });
}

async function boot() {
  wire();
  try {
    startSession(await me());
  } catch {
    showLogin();
  }
}

boot();
