// Chinese (default) and English strings, and locale-aware formatting of times and numbers.

const STRINGS = {
  zh: {
    "app.title": "公共卫生在线监测 · 值班台",
    "nav.alerts": "告警",
    "nav.devices": "设备",
    "login.title": "值班人员登录",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.failed": "用户名或密码错误",
    "login.error": "登录失败：{msg}",
    "logout": "退出",
    "role.admin": "管理员",
    "role.operator": "值班员",
    "role.viewer": "只读",
    "regions.all": "全部地区",
    "sound.on": "提示音：开",
    "sound.off": "提示音：关",
    "notify.enable": "开启桌面通知",
    "notify.on": "桌面通知：已开启",
    "notify.denied": "桌面通知：被浏览器拒绝",
    "notify.unsupported": "桌面通知：浏览器不支持",
    "stream.live": "实时",
    "stream.connecting": "连接中…",
    "stream.down": "实时连接中断，正在重连",
    "board.title": "当前告警",
    "board.empty": "没有正在告警或已确认的告警",
    "board.stale": "实时连接已中断，正在重连；下面的列表可能不是最新的。恢复连接后会自动补齐。",
    "board.count": "共 {n} 条（告警中 {firing}，已确认 {acked}）",
    "filter.domain": "领域",
    "filter.region": "地区",
    "filter.severity": "级别",
    "filter.all": "全部",
    "col.severity": "级别",
    "col.state": "状态",
    "col.started": "开始时间",
    "col.device": "设备",
    "col.region": "地区",
    "col.domain": "领域",
    "col.metric": "指标",
    "col.value": "数值",
    "col.threshold": "限值",
    "col.message": "说明",
    "col.actions": "操作",
    "col.name": "名称",
    "col.site": "场所",
    "col.online": "在线状态",
    "col.last_seen": "最后上报",
    "col.last_values": "最新数值",
    "col.at": "时间",
    "col.event": "事件",
    "col.actor": "操作人",
    "col.note": "备注",
    "ack.button": "确认",
    "ack.title": "确认告警",
    "ack.note": "处置说明（必填）",
    "ack.note_placeholder": "例如：已电话通知接种门诊，冰箱门已关好，持续观察",
    "ack.submit": "确认告警",
    "ack.cancel": "取消",
    "ack.note_required": "请填写处置说明",
    "ack.failed": "确认失败：{msg}",
    "ack.done": "已确认",
    "ack.by": "{who} 于 {at} 确认",
    "detail.back": "← 返回告警列表",
    "detail.title": "告警详情",
    "detail.timeline": "处理时间线",
    "detail.chart": "告警前后的 {metric} 曲线",
    "detail.limit": "限值",
    "detail.rule": "规则",
    "detail.standard": "依据",
    "detail.resolved": "恢复时间",
    "detail.not_found": "找不到该告警",
    "devices.title": "设备",
    "devices.empty": "没有设备",
    "devices.search": "搜索设备编号、名称或场所",
    "device.back": "← 返回设备列表",
    "device.history": "历史曲线",
    "device.range": "时间范围",
    "device.agg": "汇总方式",
    "device.from": "从",
    "device.to": "到",
    "device.apply": "查询",
    "device.csv": "下载 CSV",
    "device.no_data": "该时段没有数据",
    "device.bucket": "每 {bucket} 一个点（{agg}）",
    "device.raw": "原始数据",
    "device.open_alerts": "当前告警",
    "range.1h": "1 小时",
    "range.6h": "6 小时",
    "range.24h": "24 小时",
    "range.7d": "7 天",
    "range.30d": "30 天",
    "range.custom": "自定义",
    "agg.avg": "平均值",
    "agg.min": "最小值",
    "agg.max": "最大值",
    "agg.last": "末值",
    "online.true": "在线",
    "online.false": "离线",
    "online.null": "未知",
    "out_of_limit": "超限",
    "binary.door_open.1": "开",
    "binary.door_open.0": "关",
    "binary.power_ok.1": "正常",
    "binary.power_ok.0": "断电",
    "severity.critical": "严重",
    "severity.warning": "警告",
    "severity.info": "提示",
    "state.firing": "告警中",
    "state.acknowledged": "已确认",
    "state.resolved": "已恢复",
    "event.fired": "触发",
    "event.escalated": "升级",
    "event.acknowledged": "确认",
    "event.resolved": "恢复",
    "event.reminded": "提醒",
    "event.notified": "已通知",
    "event.notify_failed": "通知失败",
    "event.silenced": "已静默",
    "event.updated": "更新",
    "domain.coldchain": "疫苗冷链",
    "domain.air": "公共场所空气",
    "domain.water": "生活饮用水",
    "domain.pool": "游泳池水",
    "domain.wastewater": "医疗污水",
    "domain.waste": "医疗废物",
    "error.generic": "出错了：{msg}",
    "error.forbidden": "没有权限",
    "loading": "加载中…",
    "new_critical": "新的严重告警",
    "lang.switch": "English",
  },
  en: {
    "app.title": "Public-health monitoring · Duty console",
    "nav.alerts": "Alerts",
    "nav.devices": "Devices",
    "login.title": "Duty staff sign-in",
    "login.username": "User name",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.failed": "Wrong user name or password",
    "login.error": "Sign-in failed: {msg}",
    "logout": "Sign out",
    "role.admin": "admin",
    "role.operator": "operator",
    "role.viewer": "viewer",
    "regions.all": "all regions",
    "sound.on": "Sound: on",
    "sound.off": "Sound: off",
    "notify.enable": "Enable desktop notifications",
    "notify.on": "Notifications: on",
    "notify.denied": "Notifications: blocked by the browser",
    "notify.unsupported": "Notifications: not supported",
    "stream.live": "Live",
    "stream.connecting": "Connecting…",
    "stream.down": "Live connection lost, reconnecting",
    "board.title": "Current alerts",
    "board.empty": "No firing or acknowledged alerts",
    "board.stale": "The live connection is down and reconnecting; the list below may be out of date. It catches up by itself once reconnected.",
    "board.count": "{n} alerts ({firing} firing, {acked} acknowledged)",
    "filter.domain": "Domain",
    "filter.region": "Region",
    "filter.severity": "Severity",
    "filter.all": "All",
    "col.severity": "Severity",
    "col.state": "State",
    "col.started": "Started",
    "col.device": "Device",
    "col.region": "Region",
    "col.domain": "Domain",
    "col.metric": "Metric",
    "col.value": "Value",
    "col.threshold": "Limit",
    "col.message": "Message",
    "col.actions": "Actions",
    "col.name": "Name",
    "col.site": "Site",
    "col.online": "Online",
    "col.last_seen": "Last seen",
    "col.last_values": "Last values",
    "col.at": "Time",
    "col.event": "Event",
    "col.actor": "By",
    "col.note": "Note",
    "ack.button": "Acknowledge",
    "ack.title": "Acknowledge alert",
    "ack.note": "What was done (required)",
    "ack.note_placeholder": "e.g. phoned the clinic, fridge door closed, watching",
    "ack.submit": "Acknowledge",
    "ack.cancel": "Cancel",
    "ack.note_required": "A note is required",
    "ack.failed": "Acknowledge failed: {msg}",
    "ack.done": "Acknowledged",
    "ack.by": "acknowledged by {who} at {at}",
    "detail.back": "← Back to alerts",
    "detail.title": "Alert",
    "detail.timeline": "Timeline",
    "detail.chart": "{metric} around the episode",
    "detail.limit": "limit",
    "detail.rule": "Rule",
    "detail.standard": "Standard",
    "detail.resolved": "Resolved",
    "detail.not_found": "Alert not found",
    "devices.title": "Devices",
    "devices.empty": "No devices",
    "devices.search": "Search device id, name or site",
    "device.back": "← Back to devices",
    "device.history": "History",
    "device.range": "Range",
    "device.agg": "Aggregate",
    "device.from": "From",
    "device.to": "To",
    "device.apply": "Show",
    "device.csv": "Download CSV",
    "device.no_data": "No data in this range",
    "device.bucket": "one point per {bucket} ({agg})",
    "device.raw": "raw readings",
    "device.open_alerts": "Open alerts",
    "range.1h": "1 hour",
    "range.6h": "6 hours",
    "range.24h": "24 hours",
    "range.7d": "7 days",
    "range.30d": "30 days",
    "range.custom": "Custom",
    "agg.avg": "average",
    "agg.min": "minimum",
    "agg.max": "maximum",
    "agg.last": "last",
    "online.true": "online",
    "online.false": "offline",
    "online.null": "unknown",
    "out_of_limit": "out of limit",
    "binary.door_open.1": "open",
    "binary.door_open.0": "closed",
    "binary.power_ok.1": "on",
    "binary.power_ok.0": "off",
    "severity.critical": "critical",
    "severity.warning": "warning",
    "severity.info": "info",
    "state.firing": "firing",
    "state.acknowledged": "acknowledged",
    "state.resolved": "resolved",
    "event.fired": "fired",
    "event.escalated": "escalated",
    "event.acknowledged": "acknowledged",
    "event.resolved": "resolved",
    "event.reminded": "reminded",
    "event.notified": "notified",
    "event.notify_failed": "notification failed",
    "event.silenced": "silenced",
    "event.updated": "updated",
    "domain.coldchain": "Cold chain",
    "domain.air": "Indoor air",
    "domain.water": "Drinking water",
    "domain.pool": "Pool water",
    "domain.wastewater": "Hospital wastewater",
    "domain.waste": "Medical waste",
    "error.generic": "Error: {msg}",
    "error.forbidden": "Not allowed",
    "loading": "Loading…",
    "new_critical": "New critical alert",
    "lang.switch": "中文",
  },
};

const LANG_KEY = "healthmon.lang";
let lang = localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh";
const listeners = new Set();

export function getLang() {
  return lang;
}

export function setLang(next) {
  lang = next === "en" ? "en" : "zh";
  localStorage.setItem(LANG_KEY, lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const fn of listeners) fn(lang);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

/** The string for `key` in the current language, with {name} placeholders filled in. */
export function t(key, params = {}) {
  const s = STRINGS[lang][key] ?? STRINGS.zh[key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, k) => (k in params ? String(params[k]) : `{${k}}`));
}

/** Like t(), but falls back to `fallback` (e.g. the raw code) for an unknown key. */
export function tOr(key, fallback) {
  return STRINGS[lang][key] ?? STRINGS.zh[key] ?? fallback;
}

/** Fill every element carrying data-i18n (text) or data-i18n-placeholder under `root`. */
export function translateDom(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  document.title = t("app.title");
}

function locale() {
  return lang === "zh" ? "zh-CN" : "en-GB";
}

/** A time from the API (RFC 3339) in the browser's time zone, or "—". */
export function fmtTime(value, { seconds = false } = {}) {
  if (!value) return "—";
  const d = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return new Intl.DateTimeFormat(locale(), {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined,
    hour12: false,
  }).format(d);
}

/** "3 min ago" style age of a time, in the current language. */
export function fmtAge(value, now = Date.now()) {
  if (!value) return "";
  const s = Math.round((new Date(value).getTime() - now) / 1000);
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: "auto" });
  const a = Math.abs(s);
  if (a < 60) return rtf.format(s, "second");
  if (a < 3600) return rtf.format(Math.round(s / 60), "minute");
  if (a < 86400) return rtf.format(Math.round(s / 3600), "hour");
  return rtf.format(Math.round(s / 86400), "day");
}

export function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  const n = Number(v);
  if (!Number.isFinite(n)) return String(v);
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: Math.abs(n) >= 100 ? 1 : 2 })
    .format(n);
}

document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
