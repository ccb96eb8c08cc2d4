// nooble4 browser client: one ES module, no build step, no dependencies.
// Served by the edge at /static/nooble-client.js; import it from any page (or copy it).
//
//   const client = new NoobleClient({ token: async (refresh) => "<jwt>" });
//   const { session_id } = await client.startChat("demo");
//   const chat = client.connect(session_id, { afterSeq: 0 });
//   chat.on("text", ({ task_id, text }) => ...);  // the answer so far; a retry's text replaces it
//   await chat.send("Hello");                      // resolves with the ack once durably stored
//
// What it does for you (docs/edge.md describes the protocol it speaks):
// * resume: remembers the highest event `seq` and reconnects with `after_seq`, ignoring repeats;
// * reconnect with exponential backoff and full jitter after a dropped socket, 1012, 4008, 4408;
//   gives up (state "closed") only when retrying cannot help (1000, 4400, 4403, 4404);
// * token refresh: asks `token(true)` on `auth.expiring` and on a 4401 close;
// * idempotent sends: a `chat.message` unacknowledged when its socket dropped, or answered
//   `timeout` / `unavailable`, is sent again with the SAME frame id (the edge stores it once);
// * retries: a `task.status running` or `chat.chunk` of a higher `attempt` discards the task's
//   earlier text, chunks of older attempts are ignored (the "text" callback gets the result).
"use strict";

/** Close codes after which reconnecting cannot help, and the error code each stands for. */
const FINAL_CLOSES = new Map([
  [1000, "conflict"], [4400, "validation_error"], [4403, "forbidden"], [4404, "not_found"],
]);
/** Error codes after which the same frame is sent again (it reached no one, or may have). */
const RETRY_CODES = new Set(["timeout", "unavailable"]);
const TERMINAL = new Set(["completed", "failed", "timed_out", "cancelled"]);

/** What a close code means, in words a person can read. */
export function describeClose(code) {
  return {
    1000: "this conversation was closed",
    1006: "the connection dropped",
    1009: "a message was too large",
    1012: "the server is restarting",
    4008: "the connection fell behind",
    4400: "the conversation could not be opened",
    4401: "the sign-in expired",
    4403: "you may not open this conversation",
    4404: "this conversation no longer exists",
    4408: "the connection was idle",
    4429: "too many connections",
    4503: "the service is unavailable",
  }[code] || "the connection was lost";
}

/** An error envelope `{code, message, details}` from HTTP or an `error` frame, as an Error. */
export class NoobleError extends Error {
  constructor(body, status) {
    super(body && body.message ? body.message : "request failed");
    this.name = "NoobleError";
    this.code = (body && body.code) || "internal";
    this.details = (body && body.details) || {};
    this.status = status;
  }
}

/** HTTP half of the API: a token per request, typed errors. */
export class NoobleClient {
  /**
   * @param {object} options
   * @param {string | ((refresh: boolean) => Promise<string>)} options.token a JWT, or a function
   *   returning one (`refresh` true: the last one expired, get a new one)
   * @param {string} [options.baseUrl] the edge's URL (default: this page's origin)
   */
  constructor({ token, baseUrl = globalThis.location ? location.origin : "" } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this._token = typeof token === "function" ? token : async () => token;
  }

  /** A current token; `refresh` asks for a new one. */
  token(refresh = false) {
    return this._token(refresh);
  }

  /** One call to the HTTP API; rejects with `NoobleError`. A 401 is retried once with a new token. */
  async request(method, path, body, headers = {}) {
    for (let round = 0; ; round += 1) {
      const resp = await fetch(this.baseUrl + path, {
        method,
        headers: {
          Authorization: `Bearer ${await this.token(round > 0)}`,
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
          ...headers,
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const data = await resp.json().catch(() => ({}));
      if (resp.ok) return data;
      if (resp.status === 401 && round === 0) continue;
      throw new NoobleError(data.error, resp.status);
    }
  }

  /** Start a session: `{session_id, expires_at, ws_url, session}`. */
  startChat(agentId, metadata = {}) {
    return this.request("POST", "/api/chat/start", { agent_id: agentId, metadata });
  }

  /** The agents this caller may start a session with: `{items, next_cursor}`. */
  listAgents({ cursor, limit } = {}) {
    const query = new URLSearchParams();
    if (cursor) query.set("cursor", cursor);
    if (limit) query.set("limit", String(limit));
    const search = query.toString();
    return this.request("GET", `/api/agents${search ? `?${search}` : ""}`);
  }

  /** Open (and keep open) the session's WebSocket; see `Chat`. */
  connect(sessionId, options = {}) {
    return new Chat(this, sessionId, options);
  }
}

/**
 * One session's live connection. Callbacks, registered with `on(type, fn)`:
 * - every server frame type (`"chat.chunk"`, `"task.status"`, `"ack"`, ...): `fn(data, frame)`;
 * - `"text"`: `fn({task_id, attempt, text})`, the task's answer so far (retries handled);
 * - `"state"`: `fn({state, reason})`, state one of connecting | live | reconnecting | closed,
 *   reason a sentence (never a close code);
 * - `"*"`: every frame, `fn(frame)`.
 */
export class Chat {
  constructor(client, sessionId, options = {}) {
    this.client = client;
    this.sessionId = sessionId;
    this.lastSeq = options.afterSeq || 0;
    this.state = "connecting";
    this._opts = {
      pingMs: 15000, backoffMs: 500, maxBackoffMs: 15000, maxSendTries: 5, ...options,
    };
    this._answers = new Map(Object.entries(options.answers || {}));
    this._handlers = new Map();
    this._pending = new Map(); // frame id -> {frame, resolve, reject, tries, chat}
    this._prefix = Math.random().toString(36).slice(2, 10);
    this._count = 0;
    this._failures = 0;
    this._socket = null;
    this._closed = false;
    this._refresh = false;
    queueMicrotask(() => this._open());
  }

  /** Register a callback (see the class comment); returns a function that removes it. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type).delete(fn);
  }

  /** A new frame id, unique across pages and reloads (the edge de-duplicates by it). */
  newId() {
    this._count += 1;
    return `${this._prefix}-${Date.now().toString(36)}-${this._count}`;
  }

  /**
   * Send a user message; resolves with the ack `{task_id, seq}` once it is durably stored.
   * Pass the `id` of an earlier failed send to retry it: it is then stored at most once.
   * Rejects with `NoobleError` (e.g. `conflict`, `rate_limited`, or `timeout` after
   * `maxSendTries`); the message is then not stored under that id.
   */
  send(content, { id } = {}) {
    return this._request({ id: id || this.newId(), type: "chat.message", data: { content } }, true);
  }

  /** Stop a turn; resolves with its `TaskView`. */
  cancel(taskId) {
    return this._request({ id: this.newId(), type: "task.cancel", data: { task_id: taskId } });
  }

  /** Answer a turn waiting in `input_required`; resolves with its `TaskView`. */
  respond(taskId, content) {
    return this._request({ id: this.newId(), type: "task.respond", data: { task_id: taskId, content } });
  }

  /** What to store to resume after a reload: pass it back as `connect(id, snapshot)`. */
  snapshot() {
    const answers = {};
    for (const [taskId, answer] of this._answers) if (!answer.final) answers[taskId] = answer;
    return { afterSeq: this.lastSeq, answers };
  }

  /** Close for good (no reconnect); pending requests are rejected. */
  close() {
    this._closed = true;
    clearTimeout(this._retryTimer);
    if (this._socket) this._socket.close(1000);
    this._setState("closed", "closed by this page");
    this._failPending(new NoobleError({ code: "unavailable", message: "the connection was closed" }));
  }

  _emit(type, ...args) {
    for (const fn of this._handlers.get(type) || []) {
      try { fn(...args); } catch (err) { console.error(err); }
    }
  }

  _setState(state, reason) {
    this.state = state;
    this._emit("state", { state, reason });
  }

  _request(frame, isSend = false) {
    if (this._closed) {
      return Promise.reject(new NoobleError({ code: "unavailable", message: "the connection is closed" }));
    }
    return new Promise((resolve, reject) => {
      const known = this._pending.get(frame.id);
      if (known) { known.waiters.push({ resolve, reject }); return; }
      this._pending.set(frame.id, { frame, waiters: [{ resolve, reject }], tries: 0, isSend });
      this._transmit(frame.id);
    });
  }

  _transmit(id) {
    const pending = this._pending.get(id);
    if (!pending || !this._socket || this._socket.readyState !== WebSocket.OPEN) return;
    pending.tries += 1;
    this._socket.send(JSON.stringify(pending.frame));
  }

  _settle(id, error, value) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    for (const waiter of pending.waiters) error ? waiter.reject(error) : waiter.resolve(value);
  }

  _failPending(error) {
    for (const id of [...this._pending.keys()]) this._settle(id, error);
  }

  async _open() {
    if (this._closed) return;
    if (this._failures === 0) this._setState("connecting", "connecting");
    let token;
    try {
      token = await this.client.token(this._refresh);
    } catch (err) {
      this._retry("could not get a sign-in token");
      return;
    }
    this._refresh = false;
    const base = this.client.baseUrl.replace(/^http/, "ws");
    const query = new URLSearchParams({ token, after_seq: String(this.lastSeq) });
    const ws = new WebSocket(`${base}/ws/chat/${encodeURIComponent(this.sessionId)}?${query}`);
    this._socket = ws;
    ws.onmessage = (msg) => {
      if (this._socket !== ws || this._closed) return; // a socket this chat has left
      let frame;
      try { frame = JSON.parse(msg.data); } catch { return; }
      this.receive(frame);
    };
    ws.onclose = (ev) => {
      clearInterval(this._pinger);
      if (this._socket !== ws || this._closed) return;
      this._socket = null;
      if (FINAL_CLOSES.has(ev.code)) {
        this._closed = true;
        this._setState("closed", describeClose(ev.code));
        const code = FINAL_CLOSES.get(ev.code);
        this._failPending(new NoobleError({ code, message: describeClose(ev.code) }));
        return;
      }
      if (ev.code === 4401) this._refresh = true;
      this._retry(describeClose(ev.code));
    };
  }

  _retry(reason) {
    // Full jitter: a crowd of clients dropped together does not come back together.
    const cap = Math.min(this._opts.maxBackoffMs, this._opts.backoffMs * 2 ** this._failures);
    this._failures += 1;
    const delay = Math.round(Math.random() * cap);
    this._setState("reconnecting", `${reason}; reconnecting`);
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  /** Handle one server frame (what the socket does with each it receives). */
  receive(frame) {
    if (frame.seq !== undefined && frame.seq !== null) {
      if (frame.seq <= this.lastSeq) return; // seen before the resume: never twice
      this.lastSeq = frame.seq;
    }
    const data = frame.data || {};
    switch (frame.type) {
      case "session.ready":
        this._failures = 0;
        this._pinger = setInterval(() => this._ping(), this._opts.pingMs);
        this._setState("live", data.recovered ? "connected" : "connected; some older events aged out");
        // Sends unacknowledged when the last socket dropped go again, with their own ids.
        for (const id of this._pending.keys()) this._transmit(id);
        break;
      case "ack":
      case "task":
        this._settle(frame.id, null, data);
        break;
      case "error": {
        const pending = frame.id && this._pending.get(frame.id);
        if (pending) {
          const error = new NoobleError(data.error);
          if (pending.isSend && RETRY_CODES.has(error.code) && pending.tries < this._opts.maxSendTries) {
            const wait = this._opts.backoffMs * 2 ** pending.tries * (0.5 + Math.random() / 2);
            setTimeout(() => this._transmit(frame.id), wait);
          } else {
            this._settle(frame.id, error);
          }
        }
        break;
      }
      case "auth.expiring":
        this._refreshToken();
        break;
      case "task.status":
        if (data.status === "running") this._attempt(data.task_id, data.attempt || 0);
        if (TERMINAL.has(data.status)) this._answer(data.task_id).final = true;
        break;
      case "chat.chunk":
        this._chunk(data);
        break;
      case "chat.response": {
        const answer = this._answer(data.task_id);
        Object.assign(answer, { attempt: data.attempt || answer.attempt, text: data.content });
        answer.final = true;
        this._emit("text", { task_id: data.task_id, attempt: answer.attempt, text: answer.text, final: true });
        break;
      }
      default:
        break;
    }
    this._emit(frame.type, data, frame);
    this._emit("*", frame);
  }

  _answer(taskId) {
    if (!this._answers.has(taskId)) this._answers.set(taskId, { attempt: 0, chunks: {}, text: "", final: false });
    return this._answers.get(taskId);
  }

  // A higher attempt began: the text of earlier attempts is discarded.
  _attempt(taskId, attempt) {
    const answer = this._answer(taskId);
    if (answer.final || attempt <= answer.attempt) return;
    Object.assign(answer, { attempt, chunks: {}, text: "" });
    this._emit("text", { task_id: taskId, attempt, text: "", final: false });
  }

  _chunk(data) {
    const attempt = data.attempt || 0;
    this._attempt(data.task_id, attempt);
    const answer = this._answer(data.task_id);
    if (answer.final || attempt < answer.attempt || data.index in answer.chunks) return;
    answer.chunks[data.index] = data.content;
    answer.text = Object.keys(answer.chunks).sort((a, b) => a - b).map((k) => answer.chunks[k]).join("");
    this._emit("text", { task_id: data.task_id, attempt, text: answer.text, final: false });
  }

  _ping() {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) {
      this._socket.send(JSON.stringify({ type: "ping" }));
    }
  }

  async _refreshToken() {
    try {
      const token = await this.client.token(true);
      if (this._socket && this._socket.readyState === WebSocket.OPEN) {
        this._socket.send(JSON.stringify({ id: this.newId(), type: "auth.refresh", data: { token } }));
      }
    } catch (err) {
      // No new token: the socket closes with 4401 at expiry and the reconnect asks again.
      console.warn("token refresh failed", err);
    }
  }
}
