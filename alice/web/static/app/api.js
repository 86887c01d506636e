// The API client: the access token in memory, the refresh token in the `alice_refresh`
// cookie (SPEC 13's cookie transport), one refresh at a time for every tab of this origin
// (a Web Lock), and the token it gets shared with the other tabs (a BroadcastChannel), so
// two tabs never rotate one refresh token at once and log each other out.

const AUTH = "/api/v1/auth";
const COOKIE = { "X-Token-Transport": "cookie" };
// Until the server has the cookie transport (it answers with the refresh token in the body),
// the token is kept where every tab of this origin can reach it.
const FALLBACK_KEY = "alice.refresh";
// Refresh this long before the access token expires rather than after a 401 (at most a
// quarter of its life).
const EARLY_MS = 10_000;

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || "";
    this.errors = body?.errors || [];
    this.retryAfter = retryAfter;
  }
}

let access = null; // {token, expiresAt}
let refreshing = null;
const listeners = { login: [], logout: [] };
const channel = "BroadcastChannel" in window ? new BroadcastChannel("alice-auth") : null;

if (channel) {
  channel.onmessage = (event) => {
    const msg = event.data || {};
    if (msg.type === "token" && msg.access) {
      const wasOut = !access;
      access = msg.access;
      if (wasOut) emit("login");
    } else if (msg.type === "logout") {
      access = null;
      emit("logout");
    }
  };
}

function emit(kind) {
  for (const fn of listeners[kind]) fn();
}

export function on(kind, fn) {
  listeners[kind].push(fn);
}

export function loggedIn() {
  return access !== null;
}

function expiring() {
  return access.expiresAt - Date.now() < access.early;
}

function adopt(body) {
  const life = body.expires_in * 1000;
  access = {
    token: body.access_token,
    expiresAt: Date.now() + life,
    early: Math.min(EARLY_MS, life / 4),
  };
  if (body.refresh_token) localStorage.setItem(FALLBACK_KEY, body.refresh_token);
  else localStorage.removeItem(FALLBACK_KEY);
  channel?.postMessage({ type: "token", access });
}

async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  const wait = res.headers.get("Retry-After");
  return new ApiError(res.status, body, wait === null ? null : Number(wait));
}

// POST to a token route; `body` null sends none (a refresh from the cookie).
async function tokenRequest(path, body) {
  const init = { method: "POST", headers: { ...COOKIE }, credentials: "same-origin" };
  if (body !== null) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(AUTH + path, init);
  if (!res.ok) throw await errorOf(res);
  adopt(await res.json());
}

export function register(email, password) {
  return tokenRequest("/register", { email, password }).then(() => emit("login"));
}

export function login(email, password) {
  return tokenRequest("/login", { email, password }).then(() => emit("login"));
}

// A fresh access token, refreshing once for all tabs. `stale` is the token a request was
// refused with: if another tab has replaced it meanwhile, that one is used.
export function refresh(stale = null) {
  if (refreshing) return refreshing;
  const run = async () => {
    if (access && access.token !== stale && !expiring()) return;
    const fallback = localStorage.getItem(FALLBACK_KEY);
    try {
      await tokenRequest("/refresh", fallback ? { refresh_token: fallback } : null);
    } catch (err) {
      if (err.status === 401 || err.status === 403 || err.status === 422) {
        // Another tab may have rotated the token between our lock and our request.
        if (access && access.token !== stale && access.expiresAt > Date.now()) return;
        access = null;
        localStorage.removeItem(FALLBACK_KEY);
      }
      throw err;
    }
  };
  refreshing = (navigator.locks ? navigator.locks.request("alice-refresh", run) : run()).finally(
    () => {
      refreshing = null;
    },
  );
  return refreshing;
}

// Resume a login kept by the cookie, if any: true when logged in.
export async function resume() {
  try {
    await refresh();
  } catch {
    return false;
  }
  emit("login");
  return true;
}

export async function logout() {
  try {
    await request("POST", AUTH + "/logout", { headers: COOKIE });
  } finally {
    access = null;
    localStorage.removeItem(FALLBACK_KEY);
    channel?.postMessage({ type: "logout" });
    emit("logout");
  }
}

// Tokens a route other than the four of the cookie transport answered with (a password
// change): keep the access token, and trade the refresh token for the cookie at once.
export async function adoptTokens(body) {
  adopt(body);
  if (body.refresh_token) {
    const run = () => tokenRequest("/refresh", { refresh_token: body.refresh_token });
    await (navigator.locks ? navigator.locks.request("alice-refresh", run) : run());
  }
}

export function forget() {
  access = null;
  localStorage.removeItem(FALLBACK_KEY);
  channel?.postMessage({ type: "logout" });
  emit("logout");
}

// An authenticated fetch: refreshes first when the token is about to expire, and once more
// on a 401. Answers the Response when ok (for streams), else throws ApiError.
export async function fetchAuthed(method, path, { json, headers = {}, signal } = {}) {
  if (!access || expiring()) await refresh(access?.token);
  for (let attempt = 0; ; attempt++) {
    const used = access.token;
    const init = {
      method,
      headers: { Authorization: `Bearer ${used}`, ...headers },
      credentials: "same-origin",
      signal,
    };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    const res = await fetch(path, init);
    if (res.status === 401 && attempt === 0) {
      await refresh(used);
      continue;
    }
    if (res.status === 401) {
      forget();
    }
    if (!res.ok) throw await errorOf(res);
    return res;
  }
}

// JSON in, JSON out (null for 204).
export async function request(method, path, options = {}) {
  const res = await fetchAuthed(method, path, options);
  if (res.status === 204) return null;
  const type = res.headers.get("Content-Type") || "";
  return type.includes("json") ? res.json() : res;
}

// An error as a person reads it.
export function describe(err) {
  if (!(err instanceof ApiError)) {
    return navigator.onLine
      ? "Something went wrong talking to ALICE. Try again."
      : "You are offline. ALICE will carry on when the network is back.";
  }
  const wait = err.retryAfter;
  switch (err.code) {
    case "RATE_LIMIT_EXCEEDED":
      return `Too many requests. Try again in ${wait ?? "a few"} second${wait === 1 ? "" : "s"}.`;
    case "QUOTA_EXCEEDED":
      return `Today's token budget is spent. It renews in ${formatWait(wait)}.`;
    case "TOO_MANY_GENERATIONS":
      return "Other replies of yours are still being written. Try again in a moment.";
    case "GENERATION_IN_PROGRESS":
      return "A reply is still being written in this conversation: wait for it, or stop it.";
    case "AI_SERVICE_UNAVAILABLE":
      return "The AI service is not available right now. Try again in a moment.";
    case "DATABASE_UNAVAILABLE":
    case "STREAM_UNAVAILABLE":
      return "ALICE is not available right now. Try again in a moment.";
    case "AUTHENTICATION_FAILED":
      return "That email and password do not match an account.";
    case "EMAIL_ALREADY_EXISTS":
      return "An account with this email exists already. Log in instead.";
    case "INVALID_PASSWORD":
      return "That password is not right.";
    case "VALIDATION_ERROR":
      return err.errors.length
        ? err.errors.map((e) => `${fieldName(e.field)}: ${e.message}`).join(" ")
        : err.message;
    default:
      if (err.status === 503) return "ALICE is not available right now. Try again in a moment.";
      return err.message;
  }
}

function fieldName(field) {
  const last = String(field || "").split(".").pop();
  return (last || "input").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function formatWait(seconds) {
  if (seconds == null) return "a while";
  const h = Math.floor(seconds / 3600);
  const m = Math.ceil((seconds % 3600) / 60);
  return h ? `${h} h ${m} min` : `${m} min`;
}
