// The nooble4 chat page, built on the browser client (nooble-client.js); no build step.
// It keeps {session_id, agent_id, last_seq, answers, transcript} in localStorage; on reload it
// shows the transcript and resumes with after_seq=last_seq, so only what it missed is replayed.
// The bearer token lives in sessionStorage only: gone with the tab, never left on disk.
import { NoobleClient } from "/static/nooble-client.js";
import { renderMarkdown } from "/static/markdown.js";

const STORE = "nooble4.chat";
const TOKEN = "nooble4.token";
const MAX_TRANSCRIPT = 500;
const TERMINAL = new Set(["completed", "failed", "timed_out", "cancelled"]);
const STATES = { connecting: "Connecting…", live: "Connected", reconnecting: "Reconnecting…", closed: "Disconnected" };

const $ = (id) => document.getElementById(id);
let state = load();
let chat = null;
let agents = [];
let connection = { state: "connecting", reason: "" };
let sending = null; // {id, content}: the message in the box, until it is acknowledged
const shown = new Map(); // transcript key -> its element

function load() {
  try { return JSON.parse(localStorage.getItem(STORE)) || null; } catch { return null; }
}

function save() {
  if (!state) { localStorage.removeItem(STORE); return; }
  state.transcript = state.transcript.slice(-MAX_TRANSCRIPT);
  if (chat) {
    const snap = chat.snapshot();
    state.last_seq = snap.afterSeq;
    state.answers = snap.answers;
  }
  localStorage.setItem(STORE, JSON.stringify(state));
}

function status(text, kind = "info") {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

// One live announcement per finished message; cleared first so a repeat is read again.
function announce(text) {
  $("announcer").textContent = "";
  setTimeout(() => { $("announcer").textContent = text; }, 50);
}

function agentName(id) {
  const found = agents.find((a) => a.agent_id === id);
  return found ? found.name : id;
}

async function token(refresh = false) {
  const stored = JSON.parse(sessionStorage.getItem(TOKEN) || "null");
  if (!refresh && stored && Date.parse(stored.expires_at) - Date.now() > 60000) return stored.token;
  const resp = await fetch("/api/dev/token");
  if (resp.ok) {
    const minted = await resp.json();
    sessionStorage.setItem(TOKEN, JSON.stringify(minted));
    return minted.token;
  }
  // Not a dev edge: ask for a token.
  $("token-box").hidden = false;
  status("Paste a bearer token to continue", "error");
  return new Promise((resolve) => {
    $("token-save").onclick = () => {
      const value = $("token-input").value.trim();
      const expires = new Date(Date.now() + 3600000).toISOString();
      sessionStorage.setItem(TOKEN, JSON.stringify({ token: value, expires_at: expires }));
      $("token-box").hidden = true;
      resolve(value);
    };
  });
}

const client = new NoobleClient({ token });

// `before`: the key of an entry the new one goes in front of (tool calls precede their answer).
function item(key, fields, before = null) {
  let found = state.transcript.find((e) => e.key === key);
  if (!found) {
    found = { key, ...fields };
    const at = before ? state.transcript.findIndex((e) => e.key === before) : -1;
    if (at < 0) state.transcript.push(found);
    else state.transcript.splice(at, 0, found);
  }
  return found;
}

function answerOf(taskId) {
  return item(`bot-${taskId}`, { kind: "assistant", task_id: taskId, text: "", final: false });
}

// Elements are kept per key and updated in place, so an answer form keeps focus while others stream.
function render() {
  const box = $("messages");
  const keys = new Set((state ? state.transcript : []).map((e) => e.key));
  for (const [key, el] of shown) if (!keys.has(key)) { el.remove(); shown.delete(key); }
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  let previous = null;
  for (const entry of (state ? state.transcript : [])) {
    let el = shown.get(entry.key);
    if (!el) {
      el = document.createElement(entry.kind === "tool" ? "details" : "div");
      el.dataset.key = entry.key;
      shown.set(entry.key, el);
    }
    if (el.previousElementSibling !== previous || !el.isConnected) {
      box.insertBefore(el, previous ? previous.nextElementSibling : box.firstElementChild);
    }
    previous = el;
    update(el, entry);
  }
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function update(el, entry) {
  const stamp = JSON.stringify(entry);
  if (el.dataset.stamp === stamp) return;
  el.dataset.stamp = stamp;
  el.className = `msg ${entry.kind}${entry.failed ? " failed" : ""}`;
  switch (entry.kind) {
    case "assistant":
      el.dataset.final = String(entry.final);
      el.dataset.status = entry.status || "";
      if (entry.failed) {
        el.textContent = entry.text;
      } else {
        el.innerHTML = renderMarkdown(entry.text) + (entry.status === "cancelled" ? '<p class="note">Stopped.</p>' : "");
      }
      break;
    case "tool": {
      el.replaceChildren();
      const summary = document.createElement("summary");
      summary.textContent = entry.result === undefined ? `Tool call: ${entry.name}…` : `Tool call: ${entry.name}`;
      const args = document.createElement("pre");
      args.textContent = JSON.stringify(entry.arguments || {}, null, 2);
      el.append(summary, args);
      if (entry.result !== undefined) {
        const result = document.createElement("pre");
        result.className = "tool-result";
        result.textContent = entry.result;
        el.append(result);
      }
      break;
    }
    case "ask":
      updateAsk(el, entry);
      break;
    default:
      el.textContent = entry.text;
  }
}

function updateAsk(el, entry) {
  if (!el.firstChild) {
    const prompt = document.createElement("p");
    prompt.className = "ask-prompt";
    prompt.id = `ask-prompt-${entry.key}`;
    const form = document.createElement("form");
    form.className = "ask-form";
    const label = document.createElement("label");
    label.className = "visually-hidden";
    label.htmlFor = `ask-input-${entry.key}`;
    label.textContent = "Your answer";
    const input = document.createElement("input");
    input.id = `ask-input-${entry.key}`;
    input.autocomplete = "off";
    input.setAttribute("aria-describedby", prompt.id);
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Answer";
    const outcome = document.createElement("p");
    outcome.className = "ask-outcome";
    form.append(label, input, button);
    el.append(prompt, form, outcome);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const content = input.value.trim();
      if (!content || !chat) return;
      button.disabled = true;
      chat.respond(entry.task_id, content).then(() => {
        Object.assign(answered(entry.key), { answer: content, open: false });
        save(); render();
      }, (err) => {
        button.disabled = false;
        Object.assign(answered(entry.key), { problem: `Not sent: ${err.message}` });
        save(); render();
      });
    });
  }
  const [prompt, form, outcome] = el.children;
  prompt.textContent = `${agentName(state.agent_id)} asks: ${entry.prompt}`;
  form.hidden = !entry.open;
  outcome.textContent = entry.answer ? `You answered: ${entry.answer}` : (entry.open ? entry.problem || "" : "No longer waiting for an answer.");
}

function answered(key) {
  return state.transcript.find((e) => e.key === key) || {};
}

function openTasks() {
  return state ? state.open || [] : [];
}

function onState({ state: s, reason }) {
  connection = { state: s, reason };
  const words = s === "live" ? STATES.live : `${STATES[s]} (${reason})`;
  status(words, s === "live" ? "live" : s === "closed" ? "error" : "info");
  const live = s === "live";
  $("input").disabled = !live && s === "closed";
  $("send").disabled = !live;
  $("stop").disabled = !live || openTasks().length === 0;
}

function finish(taskId) {
  state.open = openTasks().filter((t) => t !== taskId);
  for (const e of state.transcript) if (e.kind === "ask" && e.task_id === taskId) e.open = false;
  $("stop").disabled = state.open.length === 0 || !chat || chat.state !== "live";
}

function wire(c) {
  c.on("state", onState);
  c.on("*", () => { save(); render(); });
  c.on("session.ready", (d) => {
    window.nooble4Ready = d; // for people debugging (and the browser test): where resume began
    if (!d.recovered) item(`lost-${d.after_seq}`, { kind: "system", text: "Some earlier messages aged out." });
  });
  c.on("session.started", (d, f) => item(`start-${f.seq}`, { kind: "system", text: `Conversation with ${agentName(d.agent_id)} started` }));
  c.on("message.accepted", (d) => {
    item(`user-${d.task_id}`, { kind: "user", task_id: d.task_id, text: d.content });
    answerOf(d.task_id);
    state.open = [...openTasks().filter((t) => t !== d.task_id), d.task_id];
    $("stop").disabled = c.state !== "live";
  });
  c.on("text", ({ task_id, text }) => {
    const answer = answerOf(task_id);
    if (!answer.failed) answer.text = text;
  });
  c.on("tool.call", (d) => item(`tool-${d.task_id}-${d.attempt}-${d.call_id}`,
    { kind: "tool", task_id: d.task_id, name: d.name, arguments: d.arguments }, `bot-${d.task_id}`));
  c.on("tool.result", (d) => {
    const tool = item(`tool-${d.task_id}-${d.attempt}-${d.call_id}`,
      { kind: "tool", task_id: d.task_id, name: "tool" }, `bot-${d.task_id}`);
    tool.result = d.content;
  });
  c.on("chat.response", (d) => {
    const answer = answerOf(d.task_id);
    answer.text = d.content;
    answer.final = true;
    if (!d.partial) announce(`${agentName(state.agent_id)} answered: ${d.content}`);
  });
  c.on("task.status", (d, f) => {
    const answer = answerOf(d.task_id);
    answer.status = d.status;
    if (d.status === "input_required") {
      item(`ask-${d.task_id}-${f.seq}`, { kind: "ask", task_id: d.task_id, prompt: d.input.prompt, open: true }, `bot-${d.task_id}`);
      announce(`${agentName(state.agent_id)} asks: ${d.input.prompt}`);
    } else if (d.status === "queued") {
      for (const e of state.transcript) if (e.kind === "ask" && e.task_id === d.task_id) e.open = false;
    }
    if (d.status === "failed" || d.status === "timed_out") {
      const why = d.error ? d.error.message : "no reason given";
      Object.assign(answer, {
        final: true, failed: true,
        text: `${d.status === "timed_out" ? "This answer timed out" : "This answer failed"}: ${why}`,
      });
      announce(answer.text);
    }
    if (d.status === "cancelled") {
      answer.final = true;
      announce("The answer was stopped.");
    }
    if (TERMINAL.has(d.status)) finish(d.task_id);
  });
  c.on("session.closed", (d, f) => item(`closed-${f.seq}`, { kind: "system", text: `Conversation closed: ${d.reason}` }));
  c.on("error", (d, f) => {
    if (!f.id) item(`error-${Date.now()}`, { kind: "error", text: d.error.message });
  });
}

function showSendError(text) {
  $("send-error-text").textContent = text;
  $("send-error").hidden = !text;
}

function submit() {
  const content = $("input").value.trim();
  if (!content || !chat) return;
  // The same text again (the Retry button, or Send after a failure) keeps its frame id: the edge
  // then stores it at most once even if the first try was stored after all.
  if (!sending || sending.content !== content) sending = { id: chat.newId(), content };
  const attempt = sending;
  showSendError("");
  $("send").disabled = true;
  chat.send(content, { id: attempt.id }).then(() => {
    if (sending === attempt) sending = null;
    if ($("input").value.trim() === content) $("input").value = "";
    onState(connection);
  }, (err) => {
    const why = {
      timeout: "The service did not answer in time.",
      unavailable: "The service is unavailable right now.",
      conflict: "The agent is still busy with the previous message.",
      rate_limited: "Too many messages; wait a moment.",
    }[err.code] || err.message;
    showSendError(`Not sent: ${why} Your message is still in the box.`);
    onState(connection);
  });
}

async function startSession(agentId) {
  status("Starting a conversation…");
  const started = await client.startChat(agentId, { client: "page" });
  state = { session_id: started.session_id, agent_id: agentId, last_seq: 0, answers: {}, transcript: [], open: [] };
  save();
}

function connect() {
  if (chat) chat.close();
  shown.clear();
  $("messages").replaceChildren();
  render();
  chat = client.connect(state.session_id, { afterSeq: state.last_seq || 0, answers: state.answers || {} });
  wire(chat);
}

async function loadAgents() {
  const page = await client.listAgents();
  agents = page.items;
  const select = $("agent");
  select.replaceChildren(...agents.map((a) => new Option(a.name, a.agent_id)));
  select.disabled = agents.length === 0;
}

async function main() {
  await loadAgents();
  if (!agents.length) { status("No agent is available to you", "error"); return; }
  const usable = state && agents.some((a) => a.agent_id === state.agent_id);
  if (!usable) await startSession(agents.some((a) => a.agent_id === "demo") ? "demo" : agents[0].agent_id);
  $("agent").value = state.agent_id;
  connect();
}

$("composer").addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
$("retry").addEventListener("click", submit);
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("composer").requestSubmit(); }
});

$("stop").addEventListener("click", () => {
  // Stop the oldest unfinished turn: the one running (or waiting) now.
  const open = openTasks();
  if (!open.length || !chat) return;
  $("stop").disabled = true;
  chat.cancel(open[0]).catch((err) => {
    if (err.code !== "conflict") item(`error-${Date.now()}`, { kind: "error", text: `Could not stop: ${err.message}` });
    save(); render();
  });
});

async function restart(agentId) {
  sending = null;
  showSendError("");
  // The old conversation's socket is closed first: none of its frames reach the new transcript.
  if (chat) { chat.close(); chat = null; }
  await startSession(agentId);
  connect();
}

$("new-session").addEventListener("click", () => {
  restart($("agent").value).catch((err) => status(`Could not start: ${err.message}`, "error"));
});
$("agent").addEventListener("change", () => {
  restart($("agent").value).catch((err) => status(`Could not start: ${err.message}`, "error"));
});

main().catch((err) => status(`Could not start: ${err.message}`, "error"));
