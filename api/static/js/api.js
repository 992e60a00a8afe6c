// The HTTP API as the console uses it: same-origin fetch with the session cookie,
// RFC 9457 problem responses turned into ApiError.

const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

let onUnauthorized = () => {};

/** Called on any 401 (session expired or signed out elsewhere). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export async function request(method, path, { query, body, auth401 = true } = {}) {
  const url = new URL(BASE + path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) {
    if (res.status === 401 && auth401) onUnauthorized();
    throw new ApiError(res.status, typeof data === "object" ? data : { detail: data });
  }
  return data;
}

export const get = (path, query) => request("GET", path, { query });
export const post = (path, body) => request("POST", path, { body });

/** The items of a list response, whether it is a bare array or an envelope. */
export function items(data) {
  if (Array.isArray(data)) return data;
  if (!data || typeof data !== "object") return [];
  for (const k of ["items", "data", "results", "alerts", "devices", "readings", "rows"]) {
    if (Array.isArray(data[k])) return data[k];
  }
  return [];
}

/** The cursor for the next page of a list response, if any. */
export function nextCursor(data) {
  if (!data || Array.isArray(data)) return null;
  return data.next_cursor ?? data.cursor ?? data.next ?? null;
}

/** Every page of a paginated list, up to `maxPages`. */
export async function getAll(path, query = {}, maxPages = 20) {
  const out = [];
  let cursor = null;
  for (let i = 0; i < maxPages; i++) {
    const data = await get(path, cursor ? { ...query, cursor } : query);
    out.push(...items(data));
    cursor = nextCursor(data);
    if (!cursor) break;
  }
  return out;
}

/** Absolute URL for a link (e.g. CSV download) that the browser fetches with the cookie. */
export function href(path, query) {
  const url = new URL(BASE + path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  return url.pathname + url.search;
}

export function login(username, password) {
  return request("POST", "/login", { body: { username, password }, auth401: false });
}

export function logout() {
  return request("POST", "/logout", { auth401: false });
}

export function me() {
  return request("GET", "/me", { auth401: false });
}
