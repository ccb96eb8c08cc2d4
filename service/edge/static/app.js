// The nooble4 chat page: no build step, no dependencies.
// It keeps {session_id, last_seq, transcript} in localStorage; on reload it shows the transcript
// and resumes the WebSocket with after_seq=last_seq, so only what it missed is replayed.
// The bearer token lives in sessionStorage only: gone with the tab, never shared across tabs or
// left on disk for the next user of the browser profile.
"use strict";

const STORE = "nooble4.chat";
const TOKEN = "nooble4.token";
const AGENT = "demo";
const PING_EVERY_MS = 15000;
const MAX_TRANSCRIPT = 500;
// Close codes after which reconnecting with the same session or token cannot help.
const FINAL_CLOSES = new Set([1000, 4400, 4401, 4403, 4404]);
// A send that got `timeout` or `unavailable` (or whose socket dropped before its ack) is sent
// again with the SAME frame id: the edge answers a repeat with the first send's task, so the
// message is stored and answered once.
const RETRY_CODES = new Set(["timeout", "unavailable"]);
const MAX_SEND_TRIES = 5;

const $ = (id) => document.getElementById(id);
let state = load();
let socket = null;
let pinger = null;
let backoff = 500;
let frameId = 0;
// Frame ids are unique across reloads: a reused id within the edge's de-dup window would be
// taken for a repeat of the earlier message.
const PAGE_ID = Math.random().toString(36).slice(2, 10);
const pending = new Map(); // frame id -> {frame, tries}: chat messages not yet acknowledged

function load() {
  try { return JSON.parse(localStorage.getItem(STORE)) || null; } catch { return null; }
}

function save() {
  if (!state) { localStorage.removeItem(STORE); return; }
  state.transcript = state.transcript.slice(-MAX_TRANSCRIPT);
  localStorage.setItem(STORE, JSON.stringify(state));
}

function status(text, kind = "info") {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

function entry(key, role) {
  let item = state.transcript.find((e) => e.key === key);
  if (!item) {
    item = { key, role, text: "", final: role !== "assistant", chunks: {}, attempt: 0 };
    state.transcript.push(item);
  }
  return item;
}

// Attempt `attempt` of an answer began: the text of earlier attempts is discarded.
function newAttempt(item, attempt) {
  item.attempt = attempt;
  item.chunks = {};
  item.text = "";
}

function render() {
  const box = $("messages");
  box.replaceChildren();
  for (const item of (state ? state.transcript : [])) {
    const div = document.createElement("div");
    div.className = `msg ${item.role}`;
    div.dataset.key = item.key;
    div.dataset.final = String(item.final);
    div.textContent = item.text;
    box.appendChild(div);
  }
  box.scrollTop = box.scrollHeight;
}

async function token() {
  const stored = JSON.parse(sessionStorage.getItem(TOKEN) || "null");
  if (stored && Date.parse(stored.expires_at) - Date.now() > 60000) return stored.token;
  const resp = await fetch("/api/dev/token");
  if (resp.ok) {
    const minted = await resp.json();
    sessionStorage.setItem(TOKEN, JSON.stringify(minted));
    return minted.token;
  }
  // Not a dev edge: ask for a token.
  $("token-box").hidden = false;
  status("paste a bearer token to continue", "error");
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

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { "Authorization": `Bearer ${await token()}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await resp.json();
  if (!resp.ok) throw new Error(`${data.error.code}: ${data.error.message}`);
  return data;
}

async function startSession() {
  status("starting a session…");
  const started = await api("POST", "/api/chat/start", { agent_id: AGENT, metadata: { client: "page" } });
  state = { session_id: started.session_id, last_seq: 0, transcript: [] };
  save();
  render();
}

function onEvent(frame) {
  if (frame.seq !== undefined) {
    if (frame.seq <= state.last_seq) return; // already shown: the resume seam never duplicates
    state.last_seq = frame.seq;
  }
  const d = frame.data || {};
  switch (frame.type) {
    case "session.ready":
      window.nooble4Ready = d; // for people debugging (and the browser test): where resume began
      status(d.recovered ? "live" : "live (older messages were lost)", "live");
      if (!d.recovered) entry(`lost-${d.after_seq}`, "system").text = "Some earlier events aged out.";
      break;
    case "session.started":
      entry(`start-${frame.seq}`, "system").text = `Session with ${d.agent_id} started`;
      break;
    case "message.accepted":
      entry(`user-${d.task_id}`, "user").text = d.content;
      entry(`bot-${d.task_id}`, "assistant");
      state.open = [...(state.open || []).filter((t) => t !== d.task_id), d.task_id];
      break;
    case "chat.chunk": {
      const item = entry(`bot-${d.task_id}`, "assistant");
      if (item.final) break;
      // A retry writes other text: a higher attempt replaces what is shown, a lower one is stale.
      if ((d.attempt || 0) > (item.attempt || 0)) newAttempt(item, d.attempt);
      if ((d.attempt || 0) < (item.attempt || 0) || d.index in item.chunks) break;
      item.chunks[d.index] = d.content;
      item.text = Object.keys(item.chunks).sort((a, b) => a - b).map((k) => item.chunks[k]).join("");
      break;
    }
    case "tool.call":
      entry(`tool-${d.task_id}-${d.attempt}-${d.index}`, "system").text =
        `tool ${d.name}(${JSON.stringify(d.arguments || {})})`;
      break;
    case "tool.result":
      entry(`tool-${d.task_id}-${d.attempt}-${d.index}`, "system").text = `tool result: ${d.content}`;
      break;
    case "chat.response": {
      const item = entry(`bot-${d.task_id}`, "assistant");
      item.text = d.content;
      item.final = true;
      item.chunks = {};
      break;
    }
    case "task.status":
      if (d.status === "running") {
        const item = entry(`bot-${d.task_id}`, "assistant");
        if (!item.final && (d.attempt || 0) > (item.attempt || 0)) newAttempt(item, d.attempt);
      }
      if (["completed", "failed", "timed_out", "cancelled"].includes(d.status)) {
        state.open = (state.open || []).filter((t) => t !== d.task_id);
        if (state.asking && state.asking.task_id === d.task_id) state.asking = null;
      }
      if (d.status === "input_required") {
        // The agent asks; the next thing typed answers it (task.respond) instead of a new turn.
        state.asking = { task_id: d.task_id, prompt: d.input.prompt };
        entry(`ask-${d.task_id}-${frame.seq}`, "system").text = `The agent asks: ${d.input.prompt}`;
      } else if (d.status === "queued" && state.asking && state.asking.task_id === d.task_id) {
        state.asking = null;
      }
      if (["failed", "timed_out", "cancelled"].includes(d.status)) {
        const item = entry(`bot-${d.task_id}`, "assistant");
        item.final = true;
        item.text = item.text || `(${d.status}${d.error ? ": " + d.error.message : ""})`;
      }
      break;
    case "session.closed":
      entry(`closed-${frame.seq}`, "system").text = `Session closed: ${d.reason}`;
      break;
    case "ack":
      pending.delete(frame.id);
      return;
    case "error": {
      const waiting = frame.id && pending.get(frame.id);
      if (waiting && RETRY_CODES.has(d.error.code) && waiting.tries < MAX_SEND_TRIES) {
        setTimeout(() => resend(frame.id), 500 * 2 ** waiting.tries);
        return;
      }
      pending.delete(frame.id);
      entry(`error-${Date.now()}`, "error").text = `${d.error.code}: ${d.error.message}`;
      break;
    }
    case "auth.expiring":
      refreshToken();
      break;
    default:
      return; // ack, pong, auth.refreshed: nothing to show
  }
  save();
  render();
}

async function refreshToken() {
  sessionStorage.removeItem(TOKEN);
  const fresh = await token();
  send({ type: "auth.refresh", data: { token: fresh } });
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ id: `${PAGE_ID}-${++frameId}`, ...frame }));
    return true;
  }
  return false;
}

function sendMessage(content) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  const framed = { id: `${PAGE_ID}-${++frameId}`, type: "chat.message", data: { content } };
  pending.set(framed.id, { frame: framed, tries: 1 });
  socket.send(JSON.stringify(framed));
  return true;
}

function resend(id) {
  const waiting = pending.get(id);
  if (!waiting || !socket || socket.readyState !== WebSocket.OPEN) return;
  waiting.tries += 1;
  socket.send(JSON.stringify(waiting.frame));
}

async function connect() {
  if (!state) await startSession();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ token: await token(), after_seq: String(state.last_seq) });
  const ws = new WebSocket(`${scheme}://${location.host}/ws/chat/${state.session_id}?${params}`);
  socket = ws;
  status("connecting…");
  ws.onopen = () => {
    backoff = 500;
    $("input").disabled = false;
    $("send").disabled = false;
    $("stop").disabled = false;
    pinger = setInterval(() => send({ type: "ping" }), PING_EVERY_MS);
    for (const id of pending.keys()) resend(id); // unacknowledged when the last socket dropped
  };
  ws.onmessage = (msg) => onEvent(JSON.parse(msg.data));
  ws.onclose = (ev) => {
    clearInterval(pinger);
    $("input").disabled = true;
    $("send").disabled = true;
    $("stop").disabled = true;
    if (socket !== ws) return;
    if (ev.code === 4404 || ev.code === 1000) {
      status(ev.code === 1000 ? "session closed: start a new one" : "session not found", "error");
      return;
    }
    if (ev.code === 4401) sessionStorage.removeItem(TOKEN);
    if (FINAL_CLOSES.has(ev.code) && ev.code !== 4401) {
      status(`closed (${ev.code} ${ev.reason})`, "error");
      return;
    }
    status(`reconnecting (${ev.code})…`, "error");
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const content = $("input").value.trim();
  if (!content) return;
  const sent = state.asking
    ? send({ type: "task.respond", data: { task_id: state.asking.task_id, content } })
    : sendMessage(content);
  if (sent) $("input").value = "";
});

$("stop").addEventListener("click", () => {
  // Stop the oldest unfinished turn: the one running (or waiting) now.
  const open = (state && state.open) || [];
  if (open.length) send({ type: "task.cancel", data: { task_id: open[0] } });
});

$("new-session").addEventListener("click", async () => {
  state = null;
  save();
  if (socket) { const old = socket; socket = null; old.close(); }
  render();
  connect().catch((err) => status(String(err), "error"));
});

render();
connect().catch((err) => status(String(err), "error"));
