// The chat page: send a message, read the reply as server-sent events, append text as it arrives.
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), form = $("composer"), statusLine = $("status");
const endButton = $("end"), newButton = $("new"), publishSwitch = $("publish"), sendButton = $("send");
let conversationId = null, busy = false, ended = false;

function say(text) { statusLine.textContent = text; }

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.append(who, body);
  log.append(div);
  toBottom();
  return body;
}

// Keep the newest text in sight (the composer is sticky, so scroll the whole page to its end), unless the reader
// has scrolled up to read something earlier.
function nearBottom() { return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80; }
function toBottom() { window.scrollTo(0, document.documentElement.scrollHeight); }

function refreshControls() {
  sendButton.disabled = busy || ended;
  newButton.disabled = busy;  // a reply still streaming belongs to the current conversation
  input.disabled = ended;
  endButton.disabled = busy || ended || conversationId === null;
}

async function post(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(body || {}) });
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* keep the status text */ }
    throw new Error(message);
  }
  return r;
}

async function send(text) {
  busy = true; refreshControls();
  const mine = addMessage("user", text).parentElement;
  const target = addMessage("assistant", "");
  let accepted = false;  // once the server takes the message, it is part of the conversation
  say("The assistant is replying…");
  try {
    const r = await post("/api/chat", { conversation_id: conversationId, content: text, publish: publishSwitch.checked });
    accepted = true;
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        const name = (block.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
        if (name === "meta") { conversationId = data.conversation_id; }
        else if (name === "delta") {
          const follow = nearBottom();
          target.append(document.createTextNode(data.text));
          if (follow) toBottom();
        }
        else if (name === "error") { throw new Error(data.message); }
        else if (name === "done") {
          if (data.finish_reason === "length") target.parentElement.classList.add("interrupted");
        }
      }
    }
    say("Reply complete.");
  } catch (e) {
    say("Something went wrong: " + e.message + ". Your message is back in the box; try again.");
    target.parentElement.remove();
    if (!accepted) mine.remove();  // refused (too long, rate limit, ended): it is not in the transcript
    input.value = text;
  } finally {
    busy = false; refreshControls(); input.focus();
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value;
  if (!text.trim() || busy || ended) return;
  input.value = "";
  send(text);
});

input.addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter is a new line; never send while an input method is composing.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    form.requestSubmit();
  }
});

endButton.addEventListener("click", async () => {
  if (conversationId === null) return;
  try {
    await post(`/api/conversations/${conversationId}/end`);
    ended = true; refreshControls();
    say(!publishSwitch.checked
      ? "Conversation ended. You chose not to publish it: it stays private."
      : "Conversation ended. It will be rated as training data. Start a new conversation to keep chatting.");
  } catch (e) { say("Could not end the conversation: " + e.message); }
});

newButton.addEventListener("click", () => {
  conversationId = null; ended = false; log.replaceChildren(); say("New conversation.");
  refreshControls(); input.focus();
});

publishSwitch.addEventListener("change", async () => {
  const yes = publishSwitch.checked;
  const said = yes ? "This conversation may be published." : "This conversation will not be published.";
  if (conversationId === null) { say(said); return; }
  try {
    await post(`/api/conversations/${conversationId}/publish`, { allowed: yes });
    say(said);
  } catch (e) {
    publishSwitch.checked = !yes;
    say("Could not change the publishing choice: " + e.message);
  }
});

refreshControls();
