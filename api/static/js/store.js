// Open alerts (firing and acknowledged), kept current from the server-sent event stream.
//
// The stream carries alert objects (contract section 5) at each state change. An
// alert's state only moves forward (firing -> acknowledged -> resolved), so a stale
// copy (a list response that raced a stream event, or a replay after a reconnect)
// never moves an alert back.
import { get, getAll, me } from "./api.js";

const RANK = { firing: 0, acknowledged: 1, resolved: 2 };
const STREAM_URL = "/api/v1/alerts/stream";
// Named SSE event types the server may use besides the default "message".
const EVENT_TYPES = ["alert", "fired", "escalated", "acknowledged", "resolved", "updated", "state"];

export class AlertStore extends EventTarget {
  constructor() {
    super();
    this.open = new Map(); // id -> alert, state firing or acknowledged
    this.rank = new Map(); // id -> highest state rank seen, resolved included
    this.streamState = "connecting";
    this.es = null;
    this.retryMs = 1000;
    this.retryTimer = null;
    this.loading = null;
    this.touched = null;
    this.loaded = false;
  }

  start() {
    this.connect();
    return this.reload();
  }

  stop() {
    clearTimeout(this.retryTimer);
    if (this.es) this.es.close();
    this.es = null;
  }

  /** Replace the open set with the server's, keeping what the stream changed meanwhile. */
  async reload() {
    if (this.loading) return this.loading;
    this.touched = new Set();
    this.loading = (async () => {
      try {
        const [firing, acked] = await Promise.all([
          getAll("/alerts", { state: "firing" }),
          getAll("/alerts", { state: "acknowledged" }),
        ]);
        const listed = new Set();
        for (const a of [...firing, ...acked]) {
          listed.add(a.id);
          this.apply(a, { fromStream: false });
        }
        for (const id of [...this.open.keys()]) {
          if (!listed.has(id) && !this.touched.has(id)) this.open.delete(id);
        }
        this.loaded = true;
        this.emit("change", null);
      } finally {
        this.touched = null;
        this.loading = null;
      }
    })();
    return this.loading;
  }

  /** Merge one alert object; returns true if it changed what is shown. */
  apply(alert, { fromStream }) {
    if (!alert || !alert.id) return false;
    const r = RANK[alert.state] ?? 0;
    const known = this.rank.get(alert.id);
    if (known !== undefined && r < known) return false;
    const prev = this.open.get(alert.id);
    this.rank.set(alert.id, r);
    if (this.touched && fromStream) this.touched.add(alert.id);
    if (alert.state === "resolved") this.open.delete(alert.id);
    else this.open.set(alert.id, { ...prev, ...alert });
    if (fromStream) {
      // New, or escalated to critical: either deserves the alarm.
      const isNewCritical =
        alert.state === "firing" && alert.severity === "critical" &&
        !(prev && prev.severity === "critical");
      this.emit("alert", { alert, prev, isNewCritical: this.loaded && isNewCritical });
    }
    return true;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setStreamState(s) {
    if (this.streamState === s) return;
    this.streamState = s;
    this.emit("stream", s);
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.setStreamState("connecting");
    const es = new EventSource(STREAM_URL, { withCredentials: true });
    this.es = es;
    let opened = false;
    es.onopen = () => {
      const reconnect = this.loaded;
      opened = true;
      this.retryMs = 1000;
      this.setStreamState("live");
      // After a reconnect the list is re-read, in case the server could not replay
      // everything from Last-Event-ID.
      if (reconnect) this.reload().catch(() => {});
    };
    const onEvent = (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      const alert = data && typeof data === "object" && data.alert ? data.alert : data;
      if (this.apply(alert, { fromStream: true })) this.emit("change", alert);
    };
    es.onmessage = onEvent;
    for (const type of EVENT_TYPES) es.addEventListener(type, onEvent);
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error such as 401): check the session, then retry.
        this.setStreamState("down");
        es.close();
        me().then(
          () => this.scheduleRetry(),
          (err) => {
            if (err.status === 401) this.emit("unauthorized", null);
            else this.scheduleRetry();
          },
        );
      } else if (opened) {
        this.setStreamState("down"); // the browser reconnects by itself with Last-Event-ID
      }
    };
  }

  scheduleRetry() {
    if (this.es === null) return;
    const jitter = Math.random() * 0.3 * this.retryMs;
    this.retryTimer = setTimeout(() => this.connect(), this.retryMs + jitter);
    this.retryMs = Math.min(this.retryMs * 2, 30000);
  }

  /** One alert with its timeline (fetched, not cached). */
  async fetchDetail(id) {
    const data = await get(`/alerts/${encodeURIComponent(id)}`);
    const alert = data.alert ?? data;
    if (alert.id) this.apply(alert, { fromStream: false });
    return data;
  }

  /** Open alerts of one device, for marking out-of-limit values. */
  forDevice(deviceId) {
    return [...this.open.values()].filter((a) => a.device_id === deviceId);
  }
}

const SEV = { critical: 0, warning: 1, info: 2 };

/** Most severe first, firing before acknowledged, then newest first. */
export function compareAlerts(a, b) {
  return (
    (SEV[a.severity] ?? 9) - (SEV[b.severity] ?? 9) ||
    (RANK[a.state] ?? 9) - (RANK[b.state] ?? 9) ||
    (Date.parse(b.started_at) || 0) - (Date.parse(a.started_at) || 0) ||
    String(a.id).localeCompare(String(b.id))
  );
}
