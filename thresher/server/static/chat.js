// The chat page. Replies stream in as plain text appended to the transcript (so the reader can select and copy
// while it grows); when a reply ends the server sends the whole conversation with every reply rendered to
// sanitised HTML, which takes the streamed text's place. Nothing here builds HTML from text: text goes in through
// textContent, and only the server's sanitised rendering goes in through innerHTML.
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), scroller = $("scroller"), input = $("input"), form = $("composer"), statusLine = $("status");
const endButton = $("end"), newButton = $("new"), sendButton = $("send"), stopButton = $("stop");
const publishSwitch = $("publish"), pubState = $("pubstate"), consent = $("consent"), jump = $("jump");
const historyList = $("history"), sidebar = $("sidebar"), menu = $("menu"), search = $("search");
const panel = $("panel"), optionsButton = $("options"), systemBox = $("system"), temperature = $("temperature");
const lengthBox = $("length"), starters = $("starters"), endDialog = $("end-dialog");
const CONSENT_KEY = "thresher.publish";  // "yes" | "no": the answer to the first-visit notice, in this browser
const THEME_KEY = "thresher.theme";      // "light" | "dark"; absent: follow the system
const touch = window.matchMedia("(pointer: coarse)").matches;
const DEFAULTS = { temperature: Number(document.body.dataset.temperature),
                   max_tokens: Number(document.body.dataset.maxTokens) };
// Enter sends on a keyboard; on a touch keyboard Enter is the only way to start a new line, so Send sends there.
const PLACEHOLDER = touch ? "Type a message." : "Type a message. Enter sends, Shift+Enter adds a line.";
const STARTERS = [
  "Explain photosynthesis in two sentences.",
  "Write a short poem about the sea.",
  "Give me three tips for a job interview.",
  "What is the difference between weather and climate?",
];

let conv = null;        // the conversation shown (the server's view), or null for a new chat
let chosen = {};        // a new chat's reply settings, until its first message creates it
let busy = false;       // a reply is being written
let follow = true;      // keep the newest text in sight, until the reader scrolls up

function say(text) { statusLine.textContent = text; }
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const c of children) node.append(c);
  return node;
}
function button(text, label, onClick, extra) {
  const b = el("button", Object.assign({ type: "button", textContent: text }, extra || {}));
  if (label) { b.setAttribute("aria-label", label); b.title = label; }
  b.addEventListener("click", onClick);
  return b;
}

// --- scrolling --------------------------------------------------------------------------------------------------
// Where the page last scrolled to by itself: a scroll position that differs from it is the reader's doing, even when
// new text arrives before the browser reports the reader's scroll.
let lastAuto = 0;
function nearBottom() { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60; }
function toBottom() {
  scroller.scrollTop = scroller.scrollHeight;
  lastAuto = scroller.scrollTop; follow = true; jump.hidden = true;
}
function readerMoved() { return Math.abs(scroller.scrollTop - lastAuto) > 2 && !nearBottom(); }
function keepUp() {  // after new text: stay at the newest, unless the reader has scrolled away
  if (follow && readerMoved()) follow = false;
  if (follow) toBottom(); else jump.hidden = false;
}
scroller.addEventListener("scroll", () => {
  if (Math.abs(scroller.scrollTop - lastAuto) <= 2) return;  // the page's own scrolling
  follow = nearBottom(); jump.hidden = follow;
  if (follow) lastAuto = scroller.scrollTop;
});
jump.addEventListener("click", () => { toBottom(); input.focus(); });

// --- server -----------------------------------------------------------------------------------------------------
class Refused extends Error {}  // the server answered with an error: nothing was stored
async function call(method, url, body) {
  let r;
  try {
    r = await fetch(url, { method, headers: { "Content-Type": "application/json" },
                           body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) { throw new Refused("the server could not be reached (" + e.message + ")"); }
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* keep the status text */ }
    throw new Refused(message);
  }
  return r;
}
const getJSON = async (url) => (await call("GET", url)).json();
const postJSON = async (url, body) => (await call("POST", url, body || {})).json();

// Read a reply's server-sent events. `onDelta(text)` for each piece; returns the `done` event's data; throws
// {message, conversation} on an `error` event and a plain Error when the connection breaks.
async function readEvents(response, onMeta, onDelta) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the connection closed before the reply ended");
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
      if (name === "meta") onMeta(data);
      else if (name === "queue") showQueue(data.ahead);
      else if (name === "delta") onDelta(data.text);
      else if (name === "error") throw Object.assign(new Error(data.message), { view: data.conversation });
      else if (name === "done") return data;
    }
  }
}

// While a reply waits for the model, how many are ahead of it (null: its turn has come).
function showQueue(ahead) {
  say(ahead === null ? "The assistant is replying…"
      : ahead === 0 ? "Waiting: you are next." : `Waiting: ${ahead} ahead of you.`);
}

// --- rendering --------------------------------------------------------------------------------------------------
async function copyText(text, what) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // no clipboard permission: copy through a selection
    const area = el("textarea", { value: text });
    document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
  }
  say(what + " copied.");
}

function addCodeButtons(body) {
  for (const pre of body.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    const b = button("Copy", "Copy code", () => copyText(code.textContent, "Code"), { className: "copy-code" });
    pre.prepend(b);
  }
}

function when(iso) {  // a message's time: the time of day, with the date when it was not today
  const t = new Date(iso), today = new Date();
  const time = t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return t.toDateString() === today.toDateString() ? time
    : t.toLocaleDateString([], { day: "numeric", month: "short", year: t.getFullYear() === today.getFullYear() ? undefined : "numeric" }) + " " + time;
}
function whoLine(name, iso) {
  const who = el("span", { className: "who", textContent: name });
  if (iso) who.append(el("time", { dateTime: iso, textContent: when(iso) }));
  return who;
}

function messageNode(m, index, count) {
  const mine = m.role === "user";
  const node = el("article", { className: "msg " + m.role });
  node.dataset.id = m.id;
  const name = mine ? "You" : m.role === "system" ? "Instructions given to the assistant" : "Assistant";
  node.setAttribute("aria-label", mine ? "You said" : m.role === "system" ? name : "Assistant replied");
  const body = el("div", { className: mine || m.role === "system" ? "body" : "body reply" });
  if (mine || m.html === undefined) body.textContent = m.content;
  else { body.innerHTML = m.html; addCodeButtons(body); }
  node.append(whoLine(name, m.created_at), body);
  const cutOff = !mine && (m.status === "interrupted" || m.finish_reason === "length");
  if (cutOff) node.append(el("p", { className: "cut", textContent:
    m.finish_reason === "length" ? "(cut off: it reached the length limit)" : "(stopped before the end)" }));
  if (m.role === "system") return node;

  const actions = el("div", { className: "actions", role: "group" });
  actions.setAttribute("aria-label", mine ? "Message actions" : "Reply actions");
  if (m.versions.length > 1) {
    const what = mine ? "message" : "reply";
    actions.append(
      button("‹", "Previous version of this " + what, () => switchTo(m.versions[m.version - 2]),
             { disabled: m.version === 1 || busy }),
      el("span", { className: "count", textContent: m.version + " / " + m.versions.length }),
      button("›", "Next version of this " + what, () => switchTo(m.versions[m.version]),
             { disabled: m.version === m.versions.length || busy }));
  }
  const open = conv && !conv.ended && !busy;
  if (mine) {
    actions.append(button("Copy", "Copy message", () => copyText(m.content, "Message")));
    actions.append(button("Edit", "Edit message", () => startEdit(node, m), { disabled: !open }));
  } else {
    actions.append(button("Copy", "Copy reply", () => copyText(m.content, "Reply")));
    actions.append(button("Regenerate", "Regenerate reply", () => regenerate(m.id), { disabled: !open }));
    if (cutOff && index === count - 1) {
      actions.append(button("Continue", "Continue reply", () => continueReply(m.id), { disabled: !open }));
    }
    const rated = m.feedback ? m.feedback.rating : null;
    const up = button("▲ Good", "Good reply", () => rate(m, rated === "up" ? null : "up"));
    const down = button("▼ Bad", "Bad reply", () => rate(m, rated === "down" ? null : "down"));
    up.setAttribute("aria-pressed", String(rated === "up"));
    down.setAttribute("aria-pressed", String(rated === "down"));
    actions.append(up, down);
    node.append(actions);
    if (rated) node.append(whyForm(m));
    return node;
  }
  node.append(actions);
  return node;
}

function whyForm(m) {
  const field = el("input", { type: "text", value: m.feedback.reason || "", maxLength: 2000 });
  const id = "why-" + m.id;
  field.id = id;
  const formNode = el("form", { className: "why" },
    el("label", { htmlFor: id, textContent: (m.feedback.rating === "up" ? "What was good?" : "What was wrong?") +
                                            " (optional)" }),
    field,
    el("button", { type: "submit", textContent: "Save reason" }),
    el("p", { className: "small", textContent: "Your rating is stored with this conversation, shown to the people " +
      "who review the dataset if the conversation is published, and may be used to train the judge." }));
  formNode.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      showConversation(await postJSON(`/api/conversations/${conv.id}/messages/${m.id}/feedback`,
                                      { rating: m.feedback.rating, reason: field.value }));
      say("Reason saved.");
    } catch (err) { say("Could not save the reason: " + err.message + ". It is still in the box."); }
  });
  return formNode;
}

function showConversation(view, keepScroll) {
  const top = scroller.scrollTop, wasFollowing = follow && !readerMoved();
  conv = view;
  log.replaceChildren(...view.messages.map((m, i) => messageNode(m, i, view.messages.length)));
  const replies = log.querySelectorAll(".msg.assistant");
  if (replies.length) replies[replies.length - 1].classList.add("latest");
  showStarters();
  showSettings();
  if (keepScroll && !wasFollowing) scroller.scrollTop = top; else toBottom();
  if (location.hash !== "#" + view.id) history_replace("#" + view.id);
  refreshControls();
  markCurrent();
}
function history_replace(hash) { window.history.replaceState(null, "", hash); }

function refreshControls() {
  const ended = !!(conv && conv.ended);
  sendButton.disabled = busy || ended;
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
  input.disabled = ended;
  input.placeholder = ended ? "This conversation has ended. Start a new chat to keep talking." : PLACEHOLDER;
  newButton.disabled = busy;
  endButton.disabled = busy || ended || conv === null;
  for (const b of historyList.querySelectorAll("button")) b.disabled = busy;
  if (conv === null || conv.pending) {
    publishSwitch.disabled = false;
    pubState.textContent = publishSwitch.checked
      ? "You allow publishing this new conversation." : "Private unless you switch this on.";
  } else {
    publishSwitch.checked = conv.publish_allowed;
    publishSwitch.disabled = conv.publication.locked;
    pubState.textContent = conv.publication.text;
  }
}

// --- history ----------------------------------------------------------------------------------------------------
function badgeOf(c) {
  return c.status === "published" ? "published" : c.status === "taken_down" ? "taken down"
    : c.publish_allowed ? "may publish" : "private";
}
async function loadHistory() {
  let data;
  try { data = (await getJSON("/api/conversations")).data; } catch (e) { say("Could not load your conversations: " + e.message); return; }
  historyList.replaceChildren(...data.map((c) => {
    const meta = when(c.updated_at) + " · " + badgeOf(c) + (c.ended ? " · ended" : "");
    const open = button("", null, () => openConversation(c.id), { className: "open", title: c.title + "\n" + meta });
    open.append(el("span", { className: "t", textContent: c.title }), el("span", { className: "meta", textContent: meta }));
    open.dataset.id = c.id;
    open.setAttribute("aria-label", c.title + ", " + meta);
    const li = el("li", {}, open);
    li.dataset.title = c.title.toLowerCase();
    li.append(button("✎", "Rename conversation: " + c.title, () => startRename(li, c), { className: "icon" }),
              button("✕", "Delete conversation: " + c.title, () => remove(c), { className: "icon" }));
    return li;
  }));
  filterHistory();
  markCurrent();
  refreshControls();
}
function filterHistory() {
  const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  for (const li of historyList.children) {
    li.hidden = !words.every((w) => li.dataset.title.includes(w));
    if (!li.hidden) shown++;
  }
  $("no-match").hidden = shown > 0 || words.length === 0;
}
search.addEventListener("input", filterHistory);
function startRename(li, c) {
  const box = el("input", { type: "text", value: c.renamed ? c.title : "", className: "rename-box", maxLength: 200,
                            placeholder: c.title });
  box.setAttribute("aria-label", "New title (empty: its first message)");
  li.replaceChildren(box);
  box.focus(); box.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    if (save) {
      try { await postJSON(`/api/conversations/${c.id}/title`, { title: box.value }); say("Conversation renamed."); }
      catch (e) { say("Could not rename it: " + e.message); }
    }
    await loadHistory();
    const again = historyList.querySelector(`.open[data-id="${c.id}"]`);
    if (again) again.focus();
  };
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
  });
  box.addEventListener("blur", () => finish(true));
}
function markCurrent() {
  for (const b of historyList.querySelectorAll(".open")) {
    if (conv && b.dataset.id === conv.id) b.setAttribute("aria-current", "true"); else b.removeAttribute("aria-current");
  }
}
async function openConversation(id) {
  if (busy) return;
  try {
    showConversation(await getJSON("/api/conversations/" + id));
    say(conv.ended ? conv.publication.text : "");
    closeSidebar();
    input.focus();
    waitForRating(id);
  } catch (e) { say("Could not open that conversation: " + e.message); }
}
async function remove(c) {
  if (busy) return;
  if (!window.confirm(`Delete “${c.title}”? It is removed from the server and will never be published.`)) return;
  try {
    await call("DELETE", "/api/conversations/" + c.id);
    if (conv && conv.id === c.id) newChat(false);
    say("Conversation deleted.");
    await loadHistory();
  } catch (e) { say("Could not delete it: " + e.message); }
}
function newChat(announce = true) {
  if (busy) return;
  conv = null;
  log.replaceChildren();
  history_replace(location.pathname);
  publishSwitch.checked = localStorage.getItem(CONSENT_KEY) === "yes";
  systemBox.value = ""; chosen = {};
  refreshControls(); markCurrent(); closeSidebar(); showStarters(); showSettings();
  if (announce) say("New chat.");
  input.focus();
}
function openSidebar() { sidebar.classList.add("open"); menu.setAttribute("aria-expanded", "true"); newButton.focus(); }
function closeSidebar() {
  if (!sidebar.classList.contains("open")) return;
  sidebar.classList.remove("open"); menu.setAttribute("aria-expanded", "false");
}
menu.addEventListener("click", () => (sidebar.classList.contains("open") ? closeSidebar() : openSidebar()));
newButton.addEventListener("click", () => newChat());
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.shiftKey && e.key.toLowerCase() === "o") { e.preventDefault(); newChat(); }
  else if (e.key === "Escape" && busy) { e.preventDefault(); stop(); }
  else if (e.key === "Escape" && sidebar.classList.contains("open")) { closeSidebar(); menu.focus(); }
});

// --- writing replies --------------------------------------------------------------------------------------------
function inlineError(message, retry) {
  const box = el("div", { className: "error", role: "alert" },
                 el("span", { textContent: "Something went wrong: " + message }));
  if (retry) box.append(button("Retry", null, () => { box.remove(); retry(); }));
  log.append(box);
  keepUp();
  return box;
}
function clearErrors() { for (const e of log.querySelectorAll(".error")) e.remove(); }

// Run one streamed request. `pending` is the node that shows the reply as it streams in; `refused(message)` runs
// when the server turned the request down (nothing stored); `failed(message)` when it failed after storing.
async function stream(url, body, pending, { refused, failed, target }) {
  busy = true; refreshControls(); clearErrors(); showStarters();
  if (!target) { target = el("div", { className: "body streaming" }); pending.append(target); }
  say("The assistant is replying…");
  let accepted = false;
  try {
    const r = await call("POST", url, body);
    accepted = true;
    const done = await readEvents(r, (meta) => {
      if (!conv) conv = { id: meta.conversation_id, pending: true, messages: [] };
    },
      (text) => { target.append(document.createTextNode(text)); keepUp(); });
    busy = false;
    showConversation(done.conversation, true);
    say(done.finish_reason === "interrupted" ? "Reply stopped. The text so far is kept."
        : done.finish_reason === "length" ? "Reply complete (cut off at the length limit)." : "Reply complete.");
  } catch (e) {
    busy = false;
    if (!accepted) { pending.remove(); refused(e.message); }
    else {
      let view = e.view;
      if (view === undefined && conv) { try { view = await getJSON("/api/conversations/" + conv.id); } catch (_) { view = null; } }
      if (view) showConversation(view, true); else pending.remove();
      failed(e.message);
    }
    say("Something went wrong: " + e.message);
  } finally {
    busy = false; refreshControls(); loadHistory();
    if (!document.querySelector(".editing textarea")) input.focus();
  }
}

function pendingReply() {
  const node = el("article", { className: "msg assistant" }, el("span", { className: "who", textContent: "Assistant" }));
  log.append(node);
  keepUp();
  return node;
}

function retryLast() {
  const replies = conv ? conv.messages.filter((m) => m.role === "assistant") : [];
  if (replies.length) regenerate(replies[replies.length - 1].id);
}

async function send(text) {
  const mine = el("article", { className: "msg user" }, el("span", { className: "who", textContent: "You" }),
                  el("div", { className: "body", textContent: text }));
  log.append(mine);
  toBottom();
  const firstTurn = conv === null;
  const body = { conversation_id: conv ? conv.id : null, content: text, publish: publishSwitch.checked };
  if (firstTurn) Object.assign(body, { system: systemBox.value.trim() || null, settings: chosen });
  await stream("/api/chat", body, pendingReply(), {
    refused: (message) => {
      mine.remove();
      if (firstTurn) conv = null;
      if (!input.value) input.value = text; else input.value = text + "\n" + input.value;
      inlineError(message + ". Your message is back in the box.", () => form.requestSubmit());
    },
    failed: (message) => inlineError(message, retryLast),
  });
}

async function regenerate(messageId) {
  if (busy || !conv) return;
  const node = log.querySelector(`[data-id="${messageId}"]`);
  const pending = pendingReply();
  if (node) { node.after(pending); while (pending.nextSibling) pending.nextSibling.remove(); node.remove(); }
  await stream(`/api/conversations/${conv.id}/regenerate`, { message_id: messageId }, pending, {
    refused: async (message) => { await reload(); inlineError(message, () => regenerate(messageId)); },
    failed: (message) => inlineError(message, retryLast),
  });
}

async function continueReply(messageId) {
  if (busy || !conv) return;
  const node = log.querySelector(`[data-id="${messageId}"]`);
  const body = node.querySelector(".body");
  const pending = el("div", { className: "body streaming", textContent: conv.messages.at(-1).content });
  body.replaceWith(pending);
  for (const extra of node.querySelectorAll(".cut, .actions, .why")) extra.remove();
  await stream(`/api/conversations/${conv.id}/continue`, { message_id: messageId }, node, {
    refused: async (message) => { await reload(); inlineError(message, () => continueReply(messageId)); },
    failed: (message) => inlineError(message, retryLast),
    target: pending,  // the continuation grows the same text, on the same line
  });
}

function startEdit(node, m) {
  if (busy) return;
  const box = el("textarea", { value: m.content, rows: Math.min(8, m.content.split("\n").length + 1) });
  box.setAttribute("aria-label", "Edit your message");
  const save = button("Send edit", null, () => submitEdit(m, box.value));
  const cancel = button("Cancel", null, () => { showConversation(conv, true); input.focus(); });
  box.addEventListener("keydown", (e) => {
    if (isSend(e)) { e.preventDefault(); save.click(); }
    else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); cancel.click(); }
  });
  const editor = el("div", { className: "editing" }, box, el("div", { className: "actions" }, save, cancel));
  node.replaceChildren(el("span", { className: "who", textContent: "You (editing)" }), editor);
  box.focus();
}

async function submitEdit(m, text) {
  if (!text.trim() || busy) return;
  const node = log.querySelector(`[data-id="${m.id}"]`);
  node.replaceChildren(el("span", { className: "who", textContent: "You" }),
                       el("div", { className: "body", textContent: text }));
  while (node.nextSibling) node.nextSibling.remove();
  await stream(`/api/conversations/${conv.id}/edit`, { message_id: m.id, content: text }, pendingReply(), {
    refused: async (message) => {
      await reload();
      input.value = text + (input.value ? "\n" + input.value : "");
      inlineError(message + ". Your edited message is in the box below.", null);
    },
    failed: (message) => inlineError(message, retryLast),
  });
}

async function reload() {
  if (!conv) return;
  try { showConversation(await getJSON("/api/conversations/" + conv.id), true); } catch (e) { /* keep what shows */ }
}

async function switchTo(messageId) {
  if (busy || !conv) return;
  try {
    showConversation(await postJSON(`/api/conversations/${conv.id}/switch`, { message_id: messageId }), true);
    const focusNode = log.querySelector(`[data-id="${messageId}"] .actions button`);
    if (focusNode) focusNode.focus();
    say("Showing another version.");
  } catch (e) { say("Could not switch versions: " + e.message); }
}

async function rate(m, rating) {
  // A reason belongs to its rating: "Short and correct" must not stay behind when Good becomes Bad.
  const same = m.feedback && m.feedback.rating === rating;
  try {
    showConversation(await postJSON(`/api/conversations/${conv.id}/messages/${m.id}/feedback`,
                                    { rating, reason: same ? m.feedback.reason : null }), true);
    say(rating === null ? "Rating removed." : "Thanks: rated " + (rating === "up" ? "good" : "bad") +
        ". You can add a reason below the reply.");
    const field = log.querySelector(`[data-id="${m.id}"] .why input`);
    if (field) field.focus();
  } catch (e) { say("Could not save the rating: " + e.message); }
}

async function stop() {
  if (!busy || !conv) return;
  say("Stopping…");
  try { await postJSON(`/api/conversations/${conv.id}/stop`); } catch (e) { say("Could not stop: " + e.message); }
}
stopButton.addEventListener("click", stop);

// Enter sends; Shift+Enter is a new line; never while an input method is composing (isComposing, or keyCode 229
// on browsers that report composition that way), and not on touch keyboards, where Enter is the only way to start
// a new line (the Send button sends there).
function isSend(e) {
  return e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229 && !touch;
}
input.addEventListener("keydown", (e) => {
  if (isSend(e)) { e.preventDefault(); form.requestSubmit(); }
});
form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value;
  if (!text.trim() || busy || (conv && conv.ended)) return;
  input.value = "";
  grow();
  send(text);
});

endButton.addEventListener("click", () => {
  if (conv === null) return;
  $("end-dialog-text").textContent = "Nothing more can be added to it; you can still read, copy and export it. " +
    (conv.publish_allowed
      ? "You allowed publishing, so the model now rates it as training data, and if it is among the best it goes " +
        "into the public dataset. You can still switch publishing off until then."
      : "You did not allow publishing, so it stays private.");
  endDialog.returnValue = "";
  endDialog.showModal();
  $("end-cancel").focus();
});
endDialog.addEventListener("close", async () => {
  if (endDialog.returnValue !== "end" || conv === null) { endButton.focus(); return; }
  try {
    showConversation(await postJSON(`/api/conversations/${conv.id}/end`), true);
    say("Conversation ended. " + conv.publication.text + " Start a new chat to keep talking.");
    loadHistory();
    waitForRating(conv.id);
  } catch (e) { say("Could not end the conversation: " + e.message); }
  input.focus();
});

// After End, the model rates the conversation in the background: look again now and then, so the owner sees the
// rating and whether it will be published, without reloading.
let ratingTimer = null;
function waitForRating(id, tries = 36) {
  clearTimeout(ratingTimer);
  if (!conv || conv.id !== id || conv.publication.state !== "waiting" || tries <= 0) return;
  ratingTimer = setTimeout(async () => {
    if (busy || !conv || conv.id !== id) return;
    try {
      const view = await getJSON("/api/conversations/" + id);
      if (!conv || conv.id !== id || busy) return;
      if (view.publication.state !== "waiting") {
        showConversation(view, true); say(view.publication.text); loadHistory();
      }
    } catch (e) { /* try again */ }
    waitForRating(id, tries - 1);
  }, 5000);
}

// --- consent ----------------------------------------------------------------------------------------------------
async function choosePublish(yes) {
  if (conv === null) { publishSwitch.checked = yes; refreshControls(); return true; }
  try {
    const view = await postJSON(`/api/conversations/${conv.id}/publish`, { allowed: yes });
    if (busy) {  // a reply is streaming in: leave the transcript alone
      Object.assign(conv, { publish_allowed: view.publish_allowed, publication: view.publication });
      refreshControls();
    } else showConversation(view, true);
    loadHistory();
    return true;
  } catch (e) {
    say("Could not change the publishing choice: " + e.message);
    refreshControls();
    return false;
  }
}
publishSwitch.addEventListener("change", async () => {
  const yes = publishSwitch.checked;
  if (await choosePublish(yes)) {
    say(yes ? "This conversation may be published." : "This conversation will not be published.");
  }
});
function answerNotice(yes) {
  localStorage.setItem(CONSENT_KEY, yes ? "yes" : "no");
  consent.hidden = true;
  choosePublish(yes);
  say(yes ? "Thank you. Your conversations may be published; switch it off for any of them."
          : "Understood. Your conversations stay private; you can switch publishing on for any of them.");
  input.focus();
}
$("consent-yes").addEventListener("click", () => answerNotice(true));
$("consent-no").addEventListener("click", () => answerNotice(false));
$("about").addEventListener("click", () => { consent.hidden = false; $("consent-title").tabIndex = -1; $("consent-title").focus(); });

// --- this conversation's settings and export ------------------------------------------------------------------
function settingsNow() { return Object.assign({}, DEFAULTS, conv ? conv.settings : chosen); }
function showSettings() {
  const now = settingsNow();
  temperature.value = now.temperature; $("temperature-value").textContent = Number(now.temperature).toFixed(1);
  lengthBox.value = now.max_tokens;
  const system = conv ? conv.messages.find((m) => m.role === "system") : null;
  if (conv) systemBox.value = system ? system.content : "";
  systemBox.disabled = conv !== null;
  temperature.disabled = lengthBox.disabled = !!(conv && conv.ended);
  $("panel-note").textContent = conv === null
    ? "These apply to this new chat from its first message."
    : "Instructions are set when a chat starts. Creativity and reply length apply to the next reply.";
  $("export-md").disabled = $("export-json").disabled = conv === null;
}
async function saveSettings() {
  const wanted = { temperature: Number(temperature.value), max_tokens: Math.round(Number(lengthBox.value)) };
  $("temperature-value").textContent = wanted.temperature.toFixed(1);
  if (!(wanted.max_tokens >= 1)) { say("The reply length must be a number of tokens."); return; }
  if (conv === null) { chosen = wanted; say("Settings kept for this new chat."); return; }
  try {
    const view = await postJSON(`/api/conversations/${conv.id}/settings`, wanted);
    conv.settings = view.settings;
    say("Settings saved for this conversation.");
  } catch (e) { say("Could not save the settings: " + e.message); showSettings(); }
}
temperature.addEventListener("input", () => { $("temperature-value").textContent = Number(temperature.value).toFixed(1); });
temperature.addEventListener("change", saveSettings);
lengthBox.addEventListener("change", saveSettings);
function togglePanel(open) {
  panel.hidden = !open;
  optionsButton.setAttribute("aria-expanded", String(open));
  if (open) { showSettings(); (systemBox.disabled ? temperature : systemBox).focus(); } else optionsButton.focus();
}
optionsButton.addEventListener("click", () => togglePanel(panel.hidden));
$("panel-close").addEventListener("click", () => togglePanel(false));

function titleOf(view) {
  const first = view.messages.find((m) => m.role === "user");
  return first ? first.content.split("\n")[0].slice(0, 60) : "conversation";
}
function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
function exportAs(kind) {
  if (!conv) return;
  const messages = conv.messages.map((m) => ({ role: m.role, content: m.content, created_at: m.created_at }));
  if (kind === "json") {
    download(`conversation-${conv.id}.json`, "application/json", JSON.stringify({
      id: conv.id, title: titleOf(conv), created_at: conv.created_at, ended: conv.ended, settings: settingsNow(),
      publication: conv.publication.state, messages }, null, 2) + "\n");
  } else {
    const names = { user: "You", assistant: "Assistant", system: "Instructions" };
    const parts = ["# " + titleOf(conv), ""];
    for (const m of messages) parts.push(`**${names[m.role] || m.role}**` + (m.created_at ? ` (${when(m.created_at)})` : ""), "", m.content, "");
    download(`conversation-${conv.id}.md`, "text/markdown", parts.join("\n"));
  }
  say("Conversation exported.");
}
$("export-md").addEventListener("click", () => exportAs("md"));
$("export-json").addEventListener("click", () => exportAs("json"));

// --- theme, the message box, ideas to start with --------------------------------------------------------------
const themeSelect = $("theme");
themeSelect.value = localStorage.getItem(THEME_KEY) || "system";
themeSelect.addEventListener("change", () => {
  const theme = themeSelect.value;
  if (theme === "system") { localStorage.removeItem(THEME_KEY); delete document.documentElement.dataset.theme; }
  else { localStorage.setItem(THEME_KEY, theme); document.documentElement.dataset.theme = theme; }
});

function grow() {  // the message box grows with its text, up to its maximum height (then it scrolls)
  input.style.height = "auto";
  input.style.height = input.scrollHeight + 2 + "px";
}
input.addEventListener("input", grow);

function showStarters() {
  const empty = conv === null && !busy && log.children.length === 0;
  starters.hidden = !empty;
}
for (const text of STARTERS) {
  starters.append(button(text, null, () => { if (!busy) { input.value = ""; grow(); send(text); } }));
}

// --- start ------------------------------------------------------------------------------------------------------
consent.hidden = localStorage.getItem(CONSENT_KEY) !== null;
publishSwitch.checked = localStorage.getItem(CONSENT_KEY) === "yes";
refreshControls();
showStarters();
showSettings();
loadHistory();
if (location.hash.length > 1) openConversation(location.hash.slice(1));
