// One conversation: its messages (keyset pages of the active branch, loaded as the person
// scrolls), the reply being written (streamed token by token, re-attached after a reload or
// a lost connection from the last event shown, so no word is lost or doubled), stop, edit,
// regenerate and the versions of a message.
import { ApiError, describe, fetchAuthed, request } from "./api.js";
import { $, h, notify, whenVisible } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { readEvents } from "./sse.js";

const CHAT = "/api/v1/chat";
const PAGE = 50;

const state = {
  id: null, // the open conversation, null for a new one
  cursor: null,
  more: false,
  loading: null,
  generation: 0, // bumps on every open: answers for an older one are dropped
  reply: null, // the Reply being followed
};
const hooks = { conversationChanged: () => {}, conversationCreated: () => {} };

export function setHooks(h) {
  Object.assign(hooks, h);
}

export function currentId() {
  return state.id;
}

export function busy() {
  return state.reply !== null;
}

// --- rendering -------------------------------------------------------------------------------

function article(message) {
  const mine = message.role === "user";
  const body = h("div", { class: "body" });
  const el = h(
    "article",
    { class: `message ${mine ? "user" : "assistant"}`, dataset: { role: message.role } },
    h("header", { class: "who" }, h("span", { text: mine ? "You" : "ALICE" })),
    body,
    h("div", { class: "tools row" }),
  );
  fill(el, message);
  return el;
}

// Put a MessageResponse into its article: text, status and the controls it allows.
function fill(el, message) {
  if (message.id) el.dataset.id = message.id;
  el.dataset.status = message.status || "complete";
  const body = el.querySelector(".body");
  if (message.role === "user") body.textContent = message.content;
  else renderMarkdown(body, message.content);
  const header = el.querySelector("header");
  header.querySelector(".status")?.remove();
  const label = { streaming: "writing…", stopped: "stopped", incomplete: "incomplete" }[
    message.status
  ];
  if (label) header.append(h("span", { class: "status", text: label }));
  tools(el, message);
}

function tools(el, message) {
  const box = el.querySelector(".tools");
  box.replaceChildren();
  if (!message.id || message.status === "streaming") return;
  if ((message.sibling_count ?? 1) > 1) {
    const at = message.sibling_index + 1;
    const of = message.sibling_count;
    box.append(
      h("button", {
        type: "button",
        "aria-label": "Previous version",
        disabled: at <= 1,
        text: "‹",
        onclick: () => switchVersion(message, -1),
      }),
      h("span", { class: "versions", text: `${at} / ${of}` }),
      h("button", {
        type: "button",
        "aria-label": "Next version",
        disabled: at >= of,
        text: "›",
        onclick: () => switchVersion(message, +1),
      }),
    );
  }
  if (!features.branches) return;
  if (message.role === "user") {
    box.append(h("button", { type: "button", text: "Edit", onclick: () => startEdit(el) }));
  } else {
    box.append(
      h("button", { type: "button", text: "Regenerate", onclick: () => regenerate(el) }),
    );
  }
}

// What the server offers beyond SPEC 4-6, learned from /openapi.json at start.
export const features = {
  branches: false,
  exportConversation: false,
  search: false,
  idempotency: false,
};

function list() {
  return $("message-list");
}

function scrollToEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// --- opening a conversation -----------------------------------------------------------------

export async function open(id) {
  detach();
  state.generation += 1;
  state.id = id;
  state.cursor = null;
  state.more = Boolean(id);
  state.loading = null;
  list().replaceChildren();
  $("conversation-actions").hidden = !id;
  if (!id) {
    $("title").textContent = "New conversation";
    return;
  }
  await loadMore();
}

// The next page of messages, if any (the sentinel at the end calls it as it comes into view).
export function loadMore() {
  if (!state.more || state.loading) return state.loading;
  const generation = state.generation;
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (state.cursor) query.set("cursor", state.cursor);
  state.loading = request("GET", `${CHAT}/conversations/${state.id}/messages?${query}`)
    .then((page) => {
      if (generation !== state.generation) return;
      state.cursor = page.next_cursor;
      state.more = Boolean(page.next_cursor);
      for (const message of page.items) {
        const el = article(message);
        list().append(el);
        if (message.status === "streaming") resume(message, el);
      }
    })
    .catch((err) => {
      if (generation !== state.generation) return;
      state.more = false;
      if (err instanceof ApiError && err.code === "CONVERSATION_NOT_FOUND") {
        notify("That conversation does not exist any more.");
        hooks.conversationChanged(null);
      } else {
        notify(describe(err));
      }
    })
    .finally(() => {
      if (generation === state.generation) state.loading = null;
    });
  return state.loading;
}

async function loadAll() {
  while (state.more) await loadMore();
}

export function startPaging() {
  whenVisible($("messages-more"), $("messages"), () => loadMore());
}

// --- a reply, followed to its end -----------------------------------------------------------

class Reply {
  constructor(el, conversationId) {
    this.el = el;
    this.conversationId = conversationId;
    this.messageId = el.dataset.id || null;
    this.text = "";
    this.next = 0; // the index of the next token to show; lower ones were shown already
    this.lastEventId = null;
    this.stopping = false;
    this.over = false;
    this.frame = 0;
    this.abort = new AbortController();
    this.origin = null; // the request that started it: {method, path, body, headers}
  }

  show() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      renderMarkdown(this.el.querySelector(".body"), this.text);
      const box = $("messages");
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) scrollToEnd();
    });
  }

  // Handle one event; true when it was the last one.
  take(event) {
    if (event.id) this.lastEventId = event.id;
    const data = JSON.parse(event.data);
    switch (event.event) {
      case "conversation":
        this.conversationId = data.conversation_id;
        this.messageId = data.message_id;
        this.el.dataset.id = data.message_id;
        if (data.is_new && state.reply === this && state.id === null) {
          state.id = data.conversation_id;
          $("conversation-actions").hidden = false;
          hooks.conversationCreated(data.conversation_id);
        }
        return false;
      case "token":
        if (data.index < this.next) return false; // already shown
        this.next = data.index + 1;
        if (!this.stopping) {
          this.text += data.content;
          this.show();
        }
        return false;
      case "done":
        this.finish({ status: data.status, content: this.text });
        return true;
      case "snapshot":
        this.finish(data);
        return true;
      case "error":
        notify(describe(new ApiError(503, data, null)));
        this.finish({ status: "incomplete", content: this.text });
        return true;
      default:
        return false;
    }
  }

  finish(message) {
    this.over = true;
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    fill(this.el, {
      role: "assistant",
      id: this.messageId,
      sibling_count: 1,
      ...message,
      content: message.content ?? this.text,
    });
  }
}

function detach() {
  if (state.reply) {
    state.reply.abort.abort();
    state.reply = null;
  }
  composerIdle();
}

function composerBusy() {
  $("send").hidden = true;
  $("stop").hidden = false;
}

function composerIdle() {
  $("send").hidden = false;
  $("stop").hidden = true;
}

// Follow a reply: read `response`, and whenever the connection ends before the reply does
// (network lost, server restart, a re-attach's time limit) re-attach after the last event.
async function follow(reply, response) {
  state.reply = reply;
  composerBusy();
  let res = response;
  let wait = 250;
  const signal = reply.abort.signal;
  try {
    for (;;) {
      if (res) {
        try {
          for await (const event of readEvents(res)) {
            if (reply.take(event)) return;
          }
        } catch (err) {
          if (signal.aborted) return;
        }
      }
      if (signal.aborted) return;
      await pause(wait);
      if (signal.aborted) return;
      wait = Math.min(wait * 2, 5000);
      try {
        // No event yet: the request may or may not have reached the server. The same request
        // with the same Idempotency-Key re-attaches to the reply it started, or sends the
        // message if it never arrived.
        const resend = !reply.lastEventId && reply.origin && features.idempotency;
        if (!reply.conversationId && !resend) {
          // Lost before the first event, and no way to ask again safely: say so.
          notify("The connection was lost before the reply began. Reload to see it.");
          reply.finish({ status: "incomplete", content: reply.text });
          return;
        }
        const headers = reply.lastEventId ? { "Last-Event-ID": reply.lastEventId } : {};
        res = !resend
          ? await fetchAuthed("GET", `${CHAT}/conversations/${reply.conversationId}/stream`, {
              headers,
              signal,
            })
          : await fetchAuthed(reply.origin.method, reply.origin.path, {
              json: reply.origin.body,
              headers: reply.origin.headers,
              signal,
            });
        if (res.status === 204) {
          await settle(reply);
          return;
        }
        wait = 250;
        notify("");
      } catch (err) {
        if (signal.aborted) return;
        res = null;
        if (err instanceof ApiError && err.status !== 503 && err.status !== 429) {
          await settle(reply);
          return;
        }
        notify(navigator.onLine ? describe(err) : "Offline: the reply continues when the network is back.", { sticky: true });
      }
    }
  } finally {
    if (state.reply === reply) {
      state.reply = null;
      composerIdle();
    }
  }
}

// Wait `ms`, or until the browser is back online when it is not.
function pause(ms) {
  return new Promise((resolve) => {
    if (navigator.onLine) {
      setTimeout(resolve, ms);
      return;
    }
    window.addEventListener("online", () => resolve(), { once: true });
  });
}

// The reply ended while we were away: show it as the server kept it.
async function settle(reply) {
  if (!reply.messageId) return;
  let cursor = null;
  for (;;) {
    const query = new URLSearchParams({ limit: "100" });
    if (cursor) query.set("cursor", cursor);
    const page = await request("GET", `${CHAT}/conversations/${reply.conversationId}/messages?${query}`);
    const found = page.items.find((m) => m.id === reply.messageId);
    if (found) {
      reply.finish(found);
      return;
    }
    if (!page.next_cursor) return;
    cursor = page.next_cursor;
  }
}

// A `streaming` message found in a page: show the text saved so far, then re-attach after the
// stream position that text covers (its `event_id`).
function resume(message, el) {
  const reply = new Reply(el, message.conversation_id);
  reply.text = message.content;
  reply.lastEventId = message.event_id;
  reply.show();
  follow(reply, null);
}

// --- sending ---------------------------------------------------------------------------------

export async function send(content, model) {
  if (state.reply) return false;
  await loadAll();
  const mine = article({ role: "user", content, status: "complete" });
  const theirs = article({ role: "assistant", content: "", status: "streaming" });
  list().append(mine, theirs);
  scrollToEnd();
  const body = { content };
  if (state.id) body.conversation_id = state.id;
  if (model && !state.id) body.model = model;
  return stream(theirs, [mine], "POST", `${CHAT}/message`, body);
}

// Open a reply's stream with `method path body`; on a refusal, remove `added` and the
// reply's article and say why.
async function stream(theirs, added, method, path, body) {
  const reply = new Reply(theirs, state.id);
  state.reply = reply;
  composerBusy();
  const headers = { Accept: "text/event-stream", "Idempotency-Key": crypto.randomUUID() };
  reply.origin = { method, path, body, headers };
  let res;
  try {
    res = await fetchAuthed(method, path, { json: body, headers, signal: reply.abort.signal });
  } catch (err) {
    if (!(err instanceof ApiError) && features.idempotency && !reply.abort.signal.aborted) {
      // The network failed before an answer: ask again, safely, with the same key.
      follow(reply, null).then(() => {
        if (features.branches) refreshIds(reply.conversationId).catch(() => {});
      });
      return true;
    }
    state.reply = null;
    composerIdle();
    theirs.remove();
    for (const el of added) el.remove();
    if (!reply.abort.signal.aborted) notify(describe(err));
    return false;
  }
  follow(reply, res).then(() => {
    // The user message's id and the versions' counts are not in the events: read them back.
    if (features.branches) refreshIds(reply.conversationId).catch(() => {});
  });
  return true;
}

async function refreshIds(conversationId) {
  if (conversationId !== state.id) return;
  const generation = state.generation;
  const els = [...list().querySelectorAll("article")];
  const byIndex = [];
  let cursor = null;
  for (;;) {
    const query = new URLSearchParams({ limit: "100" });
    if (cursor) query.set("cursor", cursor);
    const page = await request("GET", `${CHAT}/conversations/${conversationId}/messages?${query}`);
    byIndex.push(...page.items);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  if (generation !== state.generation || byIndex.length !== els.length) return;
  byIndex.forEach((message, i) => fill(els[i], message));
}

export async function stop() {
  const reply = state.reply;
  if (!reply || !reply.conversationId) return;
  reply.stopping = true;
  const lastIndex = reply.next - 1;
  try {
    const message = await request("POST", `${CHAT}/conversations/${reply.conversationId}/stop`, {
      json: lastIndex >= 0 ? { last_index: lastIndex } : {},
    });
    if (message && message.id && message.status !== "streaming") {
      reply.abort.abort();
      reply.finish(message);
    }
  } catch (err) {
    reply.stopping = false;
    notify(describe(err));
  }
}

// --- edit, regenerate, versions (SPEC 14) ---------------------------------------------------

function startEdit(el) {
  if (state.reply || el.querySelector("form")) return;
  const body = el.querySelector(".body");
  const field = h("textarea", { "aria-label": "Edited message", rows: "3" });
  field.value = body.textContent;
  const form = h(
    "form",
    { class: "edit" },
    field,
    h(
      "div",
      { class: "row" },
      h("button", { type: "submit", text: "Save and send" }),
      h("button", { type: "button", text: "Cancel", onclick: () => form.remove() }),
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const content = field.value;
    if (!content.trim()) return;
    form.remove();
    await edit(el, content);
  });
  field.addEventListener("keydown", (event) => {
    if (event.key === "Escape") form.remove();
  });
  el.append(form);
  field.focus();
}

function dropFrom(el) {
  const removed = [];
  for (let node = el; node; ) {
    const next = node.nextElementSibling;
    removed.push(node);
    node.remove();
    node = next;
  }
  return removed;
}

async function edit(el, content) {
  await loadAll();
  const anchor = el.previousElementSibling;
  const removed = dropFrom(el);
  const mine = article({ role: "user", content, status: "complete" });
  const theirs = article({ role: "assistant", content: "", status: "streaming" });
  list().append(mine, theirs);
  const ok = await stream(theirs, [mine], "POST", `${CHAT}/message`, {
    content,
    conversation_id: state.id,
    edit_of: el.dataset.id,
  });
  if (!ok) restore(anchor, removed);
}

async function regenerate(el) {
  if (state.reply) return;
  await loadAll();
  const anchor = el.previousElementSibling;
  const removed = dropFrom(el);
  const theirs = article({ role: "assistant", content: "", status: "streaming" });
  list().append(theirs);
  const ok = await stream(
    theirs,
    [],
    "POST",
    `${CHAT}/conversations/${state.id}/messages/${el.dataset.id}/regenerate`,
  );
  if (!ok) restore(anchor, removed);
}

function restore(anchor, removed) {
  if (anchor) anchor.after(...removed);
  else list().prepend(...removed);
}

// Step to the previous or next version of a message: its siblings (same parent, by creation)
// are read from the conversation's JSON export, the one public view of the whole tree.
async function switchVersion(message, step) {
  if (state.reply) return;
  const generation = state.generation;
  try {
    const res = await fetchAuthed("GET", `${CHAT}/conversations/${state.id}/export?format=json`);
    const tree = await res.json();
    const parent = message.parent_id ?? null;
    const siblings = tree.messages
      .filter((m) => (m.parent_id ?? null) === parent)
      .sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
    const target = siblings[message.sibling_index + step];
    if (!target || generation !== state.generation) return;
    const page = await request("PUT", `${CHAT}/conversations/${state.id}/branch`, {
      json: { message_id: target.id },
    });
    if (generation !== state.generation) return;
    state.generation += 1;
    list().replaceChildren(...page.items.map(article));
    state.cursor = page.next_cursor;
    state.more = Boolean(page.next_cursor);
    const shown = list().querySelector(`article[data-id="${target.id}"]`);
    shown?.querySelector(step < 0 ? "[aria-label='Previous version']" : "[aria-label='Next version']")?.focus();
  } catch (err) {
    notify(describe(err));
  }
}
