// The chat page. Replies stream in as plain text appended to the transcript (so the reader can select and copy
// while it grows); when a reply ends the server sends the whole conversation with every reply rendered to
// sanitised HTML, which takes the streamed text's place. Nothing here builds HTML from text: text goes in through
// textContent, and only the server's sanitised rendering goes in through innerHTML.
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), scroller = $("scroller"), input = $("input"), form = $("composer"), statusLine = $("status");
const endButton = $("end"), newButton = $("new"), sendButton = $("send"), stopButton = $("stop");
const publishSwitch = $("publish"), pubState = $("pubstate"), consent = $("consent"), jump = $("jump");
const historyList = $("history"), sidebar = $("sidebar"), menu = $("menu");
const CONSENT_KEY = "thresher.publish";  // "yes" | "no": the answer to the first-visit notice, in this browser
const touch = window.matchMedia("(pointer: coarse)").matches;

let conv = null;        // the conversation shown (the server's view), or null for a new chat
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
      else if (name === "delta") onDelta(data.text);
      else if (name === "error") throw Object.assign(new Error(data.message), { view: data.conversation });
      else if (name === "done") return data;
    }
  }
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

function messageNode(m, index, count) {
  const mine = m.role === "user";
  const node = el("article", { className: "msg " + m.role });
  node.dataset.id = m.id;
  node.setAttribute("aria-label", mine ? "You said" : "Assistant replied");
  const body = el("div", { className: mine ? "body" : "body reply" });
  if (mine || m.html === undefined) body.textContent = m.content;
  else { body.innerHTML = m.html; addCodeButtons(body); }
  node.append(el("span", { className: "who", textContent: mine ? "You" : "Assistant" }), body);
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
  input.placeholder = ended ? "This conversation has ended. Start a new chat to keep talking."
                            : "Type a message. Enter sends, Shift+Enter adds a line.";
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
async function loadHistory() {
  let data;
  try { data = (await getJSON("/api/conversations")).data; } catch (e) { say("Could not load your conversations: " + e.message); return; }
  historyList.replaceChildren(...data.map((c) => {
    const open = button(c.title, null, () => openConversation(c.id), { className: "open" });
    open.dataset.id = c.id;
    const badge = c.status === "published" ? "published" : c.publish_allowed ? "may publish" : "";
    if (badge) open.append(" ", el("span", { className: "badge", textContent: "(" + badge + ")" }));
    const del = button("✕", "Delete conversation: " + c.title, () => remove(c), { className: "icon" });
    return el("li", {}, open, del);
  }));
  markCurrent();
  refreshControls();
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
    say("");
    closeSidebar();
    input.focus();
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
  refreshControls(); markCurrent(); closeSidebar();
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
async function stream(url, body, pending, { refused, failed }) {
  busy = true; refreshControls(); clearErrors();
  const target = el("div", { className: "body streaming" });
  pending.append(target);
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
  await stream("/api/chat", { conversation_id: conv ? conv.id : null, content: text, publish: publishSwitch.checked },
               pendingReply(), {
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
  try {
    showConversation(await postJSON(`/api/conversations/${conv.id}/messages/${m.id}/feedback`,
                                    { rating, reason: m.feedback ? m.feedback.reason : null }), true);
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
  send(text);
});

endButton.addEventListener("click", async () => {
  if (conv === null) return;
  try {
    showConversation(await postJSON(`/api/conversations/${conv.id}/end`), true);
    say(conv.publish_allowed
      ? "Conversation ended. It will be rated as training data. Start a new chat to keep talking."
      : "Conversation ended. You chose not to publish it: it stays private.");
    loadHistory();
  } catch (e) { say("Could not end the conversation: " + e.message); }
});

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

// --- start ------------------------------------------------------------------------------------------------------
consent.hidden = localStorage.getItem(CONSENT_KEY) !== null;
publishSwitch.checked = localStorage.getItem(CONSENT_KEY) === "yes";
refreshControls();
loadHistory();
if (location.hash.length > 1) openConversation(location.hash.slice(1));
