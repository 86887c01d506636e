// The chat page (SPEC 16): start, the login screen, the conversation list and search, the
// account dialog. thread.js holds the open conversation; api.js the tokens.
import * as api from "./api.js";
import { $, confirmDialog, h, notify, whenVisible } from "./dom.js";
import * as thread from "./thread.js";

const CHAT = "/api/v1/chat";
const AUTH = "/api/v1/auth";
const narrow = window.matchMedia("(max-width: 760px)");

// --- the login screen ------------------------------------------------------------------------

function showAuth() {
  $("chat-view").hidden = true;
  if ($("account-dialog").open) $("account-dialog").close();
  $("auth-view").hidden = false;
  $("password").value = "";
  const reset = location.hash.startsWith("#reset=");
  $("auth-form").hidden = reset;
  $("reset-form")?.remove();
  if (reset) {
    $("auth-form").after($("reset-template").content.cloneNode(true));
    $("reset-form").addEventListener("submit", resetPassword);
  }
  (reset ? $("reset-password") : $("email")).focus();
}

async function authSubmit(action) {
  const email = $("email").value.trim();
  const password = $("password").value;
  $("auth-error").textContent = "";
  if (!email || !password) {
    $("auth-error").textContent = "Enter your email and a password.";
    return;
  }
  try {
    await (action === "register" ? api.register(email, password) : api.login(email, password));
  } catch (err) {
    $("auth-error").textContent = api.describe(err);
  }
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  authSubmit("login");
});
$("register").addEventListener("click", () => authSubmit("register"));

async function resetPassword(event) {
  event.preventDefault();
  const token = decodeURIComponent(location.hash.slice("#reset=".length));
  try {
    const res = await fetch(`${AUTH}/password/reset`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Token-Transport": "cookie" },
      body: JSON.stringify({ token, new_password: $("reset-password").value }),
    });
    if (!res.ok) throw new api.ApiError(res.status, await res.json().catch(() => null), null);
    await api.adoptTokens(await res.json());
    history.replaceState(null, "", "/");
    $("reset-form").remove();
    $("auth-form").hidden = false;
    showChat();
  } catch (err) {
    $("auth-error").textContent = api.describe(err);
  }
}

// --- logged in -------------------------------------------------------------------------------

let started = false;

async function showChat() {
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  $("email").value = "";
  $("password").value = "";
  $("message").focus();
  if (!started) {
    started = true;
    thread.setHooks({
      conversationCreated: (id) => {
        history.replaceState(null, "", `#c=${id}`);
        reloadConversations();
      },
      conversationChanged: (id) => go(id),
    });
    thread.startPaging();
    whenVisible($("conversations-more"), $("sidebar"), () => loadConversations());
    await learnFeatures();
  }
  request("GET", `${AUTH}/me`).then((me) => {
    $("who").textContent = me.display_name;
  });
  reloadConversations();
  loadModels();
  // A person quick enough may have sent a message already: never drop its reply.
  const wanted = hashConversation();
  if (!thread.busy() && wanted !== thread.currentId()) await thread.open(wanted);
  markCurrent();
  if (document.activeElement === document.body) $("message").focus();
}

function request(method, path, options) {
  return api.request(method, path, options);
}

// Which optional parts of the API this server has (SPEC 13-15), from its OpenAPI document.
async function learnFeatures() {
  let paths = {};
  try {
    paths = (await (await fetch("/openapi.json")).json()).paths || {};
  } catch {
    paths = {};
  }
  const has = (p) => Object.hasOwn(paths, p);
  thread.features.branches = has(`${CHAT}/conversations/{conversation_id}/branch`) ||
    Object.keys(paths).some((p) => p.endsWith("/branch"));
  thread.features.exportConversation = Object.keys(paths).some(
    (p) => p.startsWith(`${CHAT}/conversations/`) && p.endsWith("/export"),
  );
  thread.features.search = has(`${CHAT}/search`);
  thread.features.idempotency = JSON.stringify(paths[`${CHAT}/message`] || {}).includes(
    "Idempotency-Key",
  );
  features.models = has(`${CHAT}/models`);
  features.sessions = has(`${AUTH}/sessions`);
  features.password = has(`${AUTH}/password`);
  features.deleteMe = Boolean(paths[`${AUTH}/me`]?.delete);
  $("search-form").hidden = !thread.features.search;
  $("export-md").hidden = !thread.features.exportConversation;
  $("export-json").hidden = !thread.features.exportConversation;
}

const features = { models: false, sessions: false, password: false, deleteMe: false };

function hashConversation() {
  const match = /^#c=([0-9a-f-]{36})$/.exec(location.hash);
  return match ? match[1] : null;
}

async function go(id) {
  if (id === thread.currentId()) {
    if (narrow.matches) toggleMenu(false);
    return;
  }
  history.pushState(null, "", id ? `#c=${id}` : "/");
  await openFromHash();
}

async function openFromHash() {
  if (!api.loggedIn()) return;
  const id = hashConversation();
  if (id !== thread.currentId()) await thread.open(id);
  markCurrent();
  setTitle();
  updateModel();
  if (narrow.matches) toggleMenu(false);
}

window.addEventListener("popstate", openFromHash);
window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#reset=") && !api.loggedIn()) showAuth();
  else openFromHash();
});

// --- the conversation list -------------------------------------------------------------------

const conversations = { cursor: null, more: true, loading: null, items: new Map(), epoch: 0 };

function reloadConversations() {
  conversations.epoch += 1;
  conversations.cursor = null;
  conversations.more = true;
  conversations.loading = null;
  conversations.items.clear();
  $("conversations").replaceChildren();
  return loadConversations();
}

function loadConversations() {
  if (!conversations.more || conversations.loading || !api.loggedIn()) {
    return conversations.loading;
  }
  const epoch = conversations.epoch;
  const query = new URLSearchParams({ limit: "20" });
  if (conversations.cursor) query.set("cursor", conversations.cursor);
  conversations.loading = request("GET", `${CHAT}/conversations?${query}`)
    .then((page) => {
      if (epoch !== conversations.epoch) return;
      conversations.cursor = page.next_cursor;
      conversations.more = Boolean(page.next_cursor);
      for (const c of page.items) {
        if (conversations.items.has(c.id)) continue;
        conversations.items.set(c.id, c);
        $("conversations").append(conversationItem(c));
      }
      markCurrent();
      setTitle();
      updateModel();
    })
    .catch((err) => notify(api.describe(err)))
    .finally(() => {
      if (epoch === conversations.epoch) conversations.loading = null;
    });
  return conversations.loading;
}

function conversationItem(c) {
  return h(
    "li",
    { dataset: { id: c.id } },
    h("a", {
      href: `#c=${c.id}`,
      text: c.title || "Untitled",
      onclick: (event) => {
        event.preventDefault();
        go(c.id);
      },
    }),
  );
}

function markCurrent() {
  const id = thread.currentId();
  for (const link of $("conversations").querySelectorAll("a")) {
    if (link.closest("li").dataset.id === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function setTitle() {
  const id = thread.currentId();
  const c = id && conversations.items.get(id);
  $("title").textContent = id ? (c ? c.title : "Conversation") : "New conversation";
  document.title = c ? `${c.title} - ALICE` : "ALICE";
}

$("new-conversation").addEventListener("click", async () => {
  await go(null);
  $("message").focus();
});

// --- the composer ----------------------------------------------------------------------------

async function sendFromComposer() {
  const field = $("message");
  const content = field.value;
  if (!content.trim() || thread.busy()) return;
  field.value = "";
  const ok = await thread.send(content, $("model-box").hidden ? null : $("model").value);
  if (!ok) field.value = content;
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  sendFromComposer();
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendFromComposer();
  } else if (event.key === "Escape" && thread.busy()) {
    thread.stop();
  }
});
$("stop").addEventListener("click", () => thread.stop().then(() => $("message").focus()));

async function loadModels() {
  if (!features.models) return;
  try {
    const page = await request("GET", `${CHAT}/models`);
    const select = $("model");
    select.replaceChildren(
      ...page.items.map((m) => h("option", { value: m.id, text: m.id, selected: m.default })),
    );
    $("model-box").hidden = page.items.length < 2;
    updateModel();
  } catch {
    $("model-box").hidden = true;
  }
}

// A conversation keeps the model it began with; a new one takes the choice.
function updateModel() {
  const c = conversations.items.get(thread.currentId());
  const select = $("model");
  select.disabled = Boolean(c);
  if (c && c.model) select.value = c.model;
}

// --- rename, delete, export ------------------------------------------------------------------

$("rename").addEventListener("click", () => {
  const c = conversations.items.get(thread.currentId());
  $("rename-input").value = c ? c.title : $("title").textContent;
  $("rename-form").hidden = false;
  $("title").hidden = true;
  $("conversation-actions").hidden = true;
  $("rename-input").focus();
  $("rename-input").select();
});

function closeRename() {
  $("rename-form").hidden = true;
  $("title").hidden = false;
  $("conversation-actions").hidden = !thread.currentId();
}

$("rename-cancel").addEventListener("click", () => {
  closeRename();
  $("rename").focus();
});
$("rename-input").addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeRename();
});
$("rename-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = thread.currentId();
  const title = $("rename-input").value.trim();
  if (!title) return;
  try {
    const c = await request("PATCH", `${CHAT}/conversations/${id}`, { json: { title } });
    conversations.items.set(c.id, c);
    const link = $("conversations").querySelector(`li[data-id="${c.id}"] a`);
    if (link) link.textContent = c.title;
    closeRename();
    setTitle();
    $("rename").focus();
  } catch (err) {
    notify(api.describe(err));
  }
});

$("delete").addEventListener("click", async () => {
  const id = thread.currentId();
  if (!id) return;
  const title = $("title").textContent;
  if (!(await confirmDialog(`Delete "${title}" and all its messages?`))) return;
  try {
    await request("DELETE", `${CHAT}/conversations/${id}`);
    conversations.items.delete(id);
    $("conversations").querySelector(`li[data-id="${id}"]`)?.remove();
    notify(`Deleted "${title}".`);
    await go(null);
    $("message").focus();
  } catch (err) {
    notify(api.describe(err));
  }
});

async function exportConversation(format) {
  const id = thread.currentId();
  try {
    const res = await api.fetchAuthed("GET", `${CHAT}/conversations/${id}/export?format=${format}`);
    const blob = await res.blob();
    const disposition = res.headers.get("Content-Disposition") || "";
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] ||
      `conversation.${format === "json" ? "json" : "md"}`;
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    notify(api.describe(err));
  }
}

$("export-md").addEventListener("click", () => exportConversation("markdown"));
$("export-json").addEventListener("click", () => exportConversation("json"));

// --- search ----------------------------------------------------------------------------------

const search = { timer: 0, query: "", cursor: null, epoch: 0 };

$("search").addEventListener("input", () => {
  clearTimeout(search.timer);
  search.timer = setTimeout(runSearch, 250);
});
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(search.timer);
  runSearch();
});
$("search").addEventListener("keydown", (event) => {
  if (event.key === "Escape") clearSearch();
});
$("search-clear").addEventListener("click", () => {
  clearSearch();
  $("search").focus();
});

function clearSearch() {
  $("search").value = "";
  runSearch();
}

async function runSearch(more = false) {
  const q = $("search").value.trim();
  const results = $("search-results");
  const active = q.length > 0;
  results.hidden = !active;
  $("conversations").hidden = active;
  $("search-clear").hidden = !active;
  if (!active) {
    search.epoch += 1;
    results.replaceChildren();
    return;
  }
  if (!more) {
    search.epoch += 1;
    search.cursor = null;
  }
  const epoch = search.epoch;
  const query = new URLSearchParams({ q, limit: "20" });
  if (more && search.cursor) query.set("cursor", search.cursor);
  try {
    const page = await request("GET", `${CHAT}/search?${query}`);
    if (epoch !== search.epoch) return;
    if (!more) results.replaceChildren();
    for (const hit of page.items) results.append(searchHit(hit));
    search.cursor = page.next_cursor;
    if (page.next_cursor) {
      results.append(
        h(
          "li",
          { class: "more" },
          h("button", {
            type: "button",
            text: "More results",
            onclick: (event) => {
              event.target.closest("li").remove();
              runSearch(true);
            },
          }),
        ),
      );
    }
    if (!results.children.length) results.append(h("li", { class: "small", text: "No match." }));
  } catch (err) {
    notify(api.describe(err));
  }
}

// A hit: its title, and its snippet with the matched words marked (offsets in code points).
function searchHit(hit) {
  const chars = Array.from(hit.snippet || "");
  const snippet = h("span", { class: "snippet" });
  let at = 0;
  for (const [start, end] of hit.highlights || []) {
    if (start < at) continue;
    snippet.append(chars.slice(at, start).join(""), h("mark", { text: chars.slice(start, end).join("") }));
    at = end;
  }
  snippet.append(chars.slice(at).join(""));
  return h(
    "li",
    {},
    h(
      "a",
      {
        href: `#c=${hit.conversation_id}`,
        onclick: (event) => {
          event.preventDefault();
          go(hit.conversation_id);
        },
      },
      h("strong", { text: hit.title }),
      h("br"),
      snippet,
    ),
  );
}

// --- the narrow layout's menu ----------------------------------------------------------------

function toggleMenu(open) {
  document.body.classList.toggle("menu-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
  $("menu").textContent = open ? "Hide conversations" : "Show conversations";
}

$("menu").addEventListener("click", () => {
  const open = !document.body.classList.contains("menu-open");
  toggleMenu(open);
  if (open) $("new-conversation").focus();
});

// --- log out and the account -----------------------------------------------------------------

$("logout").addEventListener("click", async () => {
  try {
    await api.logout();
  } catch (err) {
    notify(api.describe(err));
  }
});

$("account").addEventListener("click", openAccount);
$("account-dialog").addEventListener("close", () => {
  $("account-dialog").replaceChildren();
  if (!$("chat-view").hidden) $("account").focus();
});

// A line in the account dialog's live region (if the dialog is still open).
function accountSay(text) {
  const status = $("account-status");
  if (status) status.textContent = text;
}

async function openAccount() {
  const dialog = $("account-dialog");
  dialog.replaceChildren($("account-template").content.cloneNode(true));
  $("account-close").addEventListener("click", () => dialog.close());
  $("password-form").addEventListener("submit", changePassword);
  $("delete-account-form").addEventListener("submit", deleteAccount);
  $("password-section").hidden = !features.password;
  $("sessions-section").hidden = !features.sessions;
  $("delete-section").hidden = !features.deleteMe;
  dialog.showModal();
  try {
    const me = await request("GET", `${AUTH}/me`);
    const who = $("account-email");
    if (who) who.textContent = `${me.display_name} <${me.email}>`;
  } catch (err) {
    accountSay(api.describe(err));
  }
  if (features.sessions) loadSessions();
}

async function loadSessions() {
  try {
    const page = await request("GET", `${AUTH}/sessions`);
    $("sessions")?.replaceChildren(...page.items.map(sessionItem));
  } catch (err) {
    accountSay(api.describe(err));
  }
}

function sessionItem(s) {
  const when = new Date(s.last_used_at || s.created_at).toLocaleString();
  const what = `${s.user_agent || "Unknown browser"} (${s.ip || "unknown address"}), last used ${when}`;
  return h(
    "li",
    { class: "session" },
    h("span", { text: s.current ? `This browser: ${what}` : what }),
    h("button", {
      type: "button",
      text: s.current ? "End this session" : "End session",
      "aria-label": s.current ? "End this session (this browser)" : `End session: ${what}`,
      onclick: async () => {
        try {
          await request("DELETE", `${AUTH}/sessions/${s.id}`);
          if (s.current) {
            api.forget();
            return;
          }
          accountSay("Session ended.");
          loadSessions();
        } catch (err) {
          accountSay(api.describe(err));
        }
      },
    }),
  );
}

async function changePassword(event) {
  event.preventDefault();
  try {
    const body = await request("POST", `${AUTH}/password`, {
      json: {
        current_password: $("current-password").value,
        new_password: $("new-password").value,
      },
      headers: { "X-Token-Transport": "cookie" },
    });
    await api.adoptTokens(body);
    $("current-password").value = "";
    $("new-password").value = "";
    accountSay("Password changed. Every other session has been logged out.");
    if (features.sessions) loadSessions();
  } catch (err) {
    accountSay(api.describe(err));
  }
}

async function deleteAccount(event) {
  event.preventDefault();
  if (!(await confirmDialog("Delete your account and every conversation, for good?"))) return;
  try {
    await request("DELETE", `${AUTH}/me`, { json: { password: $("delete-password").value } });
    $("delete-password").value = "";
    api.forget();
    notify("Your account has been deleted.");
  } catch (err) {
    accountSay(api.describe(err));
  }
}

// --- start -----------------------------------------------------------------------------------

api.on("login", () => showChat());
api.on("logout", () => {
  thread.open(null);
  showAuth();
});

if (!location.hash.startsWith("#reset=")) {
  api.resume().then((ok) => {
    if (!ok) showAuth();
  });
} else {
  showAuth();
}
