// worldlab player: WebRTC video + `ctl` data channel + frame-accurate glass-to-glass measurement.
// One ES module for the served page and the JupyterLab widget; signaling is pluggable (fetch or comm).

const KEYMAP = {
  ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right",
  w: "up", s: "down", a: "left", d: "right", W: "up", S: "down", A: "left", D: "right",
};
const HISTORY = 600; // frames / samples kept for mapping and percentiles
const DISCONNECTED_GRACE_MS = 5000; // see onconnectionstatechange: ~5 s + this ~ the server's ICE consent
const STALE_LINK_MS = 1500; // nothing from the server (frames come 30 times a second) this long: the link stalls

// The overlay is drawn in a worker through an OffscreenCanvas where the browser has one, so text
// rendering never competes with video decode/compositing on the main thread.
const OVERLAY_WORKER = `let ctx = null;
onmessage = (e) => {
  if (e.data.canvas) { ctx = e.data.canvas.getContext("2d"); return; }
  if (!ctx) return;
  const lines = e.data.lines, w = ctx.canvas.width, h = ctx.canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "rgba(0,0,0,0.55)"; ctx.fillRect(0, 0, w, 16 * lines.length + 8);
  ctx.fillStyle = "#fff"; ctx.font = "12px monospace";
  lines.forEach((l, i) => ctx.fillText(l, 6, 16 * (i + 1)));
};`;

function overlayPainter(canvas) {
  if (canvas.transferControlToOffscreen && typeof Worker !== "undefined") {
    try {
      const url = URL.createObjectURL(new Blob([OVERLAY_WORKER], { type: "text/javascript" }));
      const worker = new Worker(url);
      const off = canvas.transferControlToOffscreen();
      worker.postMessage({ canvas: off }, [off]);
      return { offscreen: true, paint: (lines) => worker.postMessage({ lines }) };
    } catch (e) { /* fall through to the main-thread canvas */ }
  }
  return {
    offscreen: false,
    paint: (lines) => {
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "rgba(0,0,0,0.55)";
      ctx.fillRect(0, 0, canvas.width, 16 * lines.length + 8);
      ctx.fillStyle = "#fff";
      ctx.font = "12px monospace";
      lines.forEach((l, i) => ctx.fillText(l, 6, 16 * (i + 1)));
    },
  };
}

// The one percentile definition (worldlab.engine.metrics.percentile = numpy's default): linear interpolation
// between closest ranks, with numpy's two-sided lerp so page and server agree to the last bit.
export function pct(values, q) {
  if (!values.length) return null;
  const s = Float64Array.from(values).sort();
  const v = (s.length - 1) * (q / 100), i = Math.floor(v);
  if (i >= s.length - 1) return s[s.length - 1];
  const a = s[i], b = s[i + 1], g = v - i, d = b - a;
  return g >= 0.5 ? b - d * (1 - g) : a + d * g;
}

// POST /offer signaling for the served page.
export function httpSignal(url = "/offer", extra = {}) {
  return async (offer, more = {}) => {
    const res = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: offer.sdp, type: offer.type, ...extra, ...more }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : res.statusText);
    return body;
  };
}

// GET /ice: the STUN/TURN servers (TURN credentials minted per request) and policy of the served page.
export function httpIce(url = "/ice", params = {}) {
  return async () => {
    const res = await fetch(`${url}?${new URLSearchParams(params)}`, { cache: "no-store" });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : res.statusText);
    return body;
  };
}

export class Player {
  // ice: async () => {iceServers, iceTransportPolicy} (httpIce for the served page); none: host candidates only.
  constructor({ video, overlay = null, signal, ice = null, keyTarget = document, role = "player",
    onStatus = () => {} }) {
    this.video = video;
    this.ice = ice;
    this.overlay = overlay;
    this.signal = signal;
    this.keyTarget = keyTarget;
    this.role = role;
    this.onStatus = onStatus;
    this.seq = 0;
    this.held = new Set();
    this.pending = new Map(); // seq -> {t: key event time, sent, frameId}
    this.ptsToFrame = new Map();
    this.votes = new Map();
    this.rtpOrigin = null;
    this.presented = []; // [frameId, displayTime]
    this.samples = { g2g_ms: [], capture_ms: [], rtt_ms: [], decode_ms: [], interval_ms: [] };
    this.historyLimit = HISTORY; // benchmarks raise it to keep a whole run
    this.server = {};
    this.frames = 0;
    this.lastDisplay = null;
    this.fpsWindow = [];
    this.state = "idle";
    this.connectedAt = null;
    this.firstFrameMs = null;
    this._onKey = this._onKey.bind(this);
    this._onVisibility = this._onVisibility.bind(this);
  }

  // ---- connection -----------------------------------------------------------------------
  async connect(extra = {}) {
    this.close(false);
    this.ended = null;
    this.setState("connecting");
    // A new offer is a new session: its pts, frame ids and RTP origin share nothing with the old one.
    this.ptsToFrame.clear();
    this.presented = [];
    this.pending.clear();
    this.firstFrameMs = null;
    this.lastDisplay = null;
    this.fpsWindow = [];
    this.generation = (this.generation || 0) + 1;
    this.video.srcObject = null;
    const ice = this.ice ? await this.ice() : {};
    const pc = new RTCPeerConnection({
      iceServers: ice.iceServers || [], iceTransportPolicy: ice.iceTransportPolicy || "all",
    });
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    const ch = pc.createDataChannel("ctl", { ordered: true });
    this.ch = ch;
    ch.onmessage = (e) => this._onMessage(JSON.parse(e.data));
    ch.onopen = () => this.setState("live");
    pc.ontrack = (e) => {
      // Ask Chrome's jitter buffer for the minimum delay: loopback/LAN needs no smoothing.
      if ("jitterBufferTarget" in e.receiver) e.receiver.jitterBufferTarget = 0;
      if ("playoutDelayHint" in e.receiver) e.receiver.playoutDelayHint = 0;
      this.video.srcObject = e.streams[0] || new MediaStream([e.track]);
      this.video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc || this.ended) return;  // the server ended the session on purpose: keep its notice
      // A short network outage must not end the session (its world, its room): ICE comes back by itself on the
      // same connection. So "disconnected" (Chrome: ~5 s without a packet) only shows "reconnecting"; a new
      // offer follows if it lasts DISCONNECTED_GRACE_MS more (by then the server, whose ICE consent gives up
      // after ~10 s of silence, has dropped the peer), or 1.5 s after "failed". Back to "connected": live.
      const s = pc.connectionState;
      clearTimeout(this._reconnectTimer);
      if (s === "connected" && this.state === "reconnecting") this.setState("live");
      if (s === "failed" || s === "disconnected") {
        this.setState("reconnecting");
        this._reconnectTimer = setTimeout(() => {
          if (pc === this.pc && pc.connectionState !== "connected") this.connect(extra);
        }, s === "failed" ? 1500 : DISCONNECTED_GRACE_MS);
      }
    };
    this.offerAt = performance.now();
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {  // aiortc takes complete (non-trickle) offers
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
      setTimeout(resolve, 2000);
    });
    const answer = await this.signal(pc.localDescription, extra);
    this.session = answer.session;
    this.room = answer.room;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    if (this.role === "player") {
      this.keyTarget.addEventListener("keydown", this._onKey);
      this.keyTarget.addEventListener("keyup", this._onKey);
    }
    document.addEventListener("visibilitychange", this._onVisibility);
    this._watchFrames();
    // Pings and reports only while the server is heard from: during an outage they would queue in SCTP and
    // arrive as one burst after it (stale figures, RTTs that include the outage, over the server's rate limit).
    const heard = () => performance.now() - (this.lastHeard ?? -Infinity) < STALE_LINK_MS;
    this._pingTimer = setInterval(() => heard() && this.send({ type: "ping", t: performance.now() }), 500);
    // What this page measured, for the server (protocol.REPORT_FIELDS: it refuses any other field, and
    // anything but a finite number >= 0 or null).
    const reported = ["fps_actual", "g2g_ms", "g2g_ms_p95", "rtt_ms", "capture_ms", "decode_ms",
      "interval_ms_p95", "frames", "new_frames", "dropped_frames", "first_frame_ms"];
    this._reportTimer = setInterval(() => {
      if (!heard()) return;
      const st = this.stats();
      const ok = (v) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : null);
      this.send({ type: "report", ...Object.fromEntries(reported.map((k) => [k, ok(st[k])])) });
    }, 1000);
    this._drawTimer = setInterval(() => this.draw(), 250);
    return answer;
  }

  close(final = true) {
    clearInterval(this._pingTimer);
    clearInterval(this._reportTimer);
    clearInterval(this._drawTimer);
    clearTimeout(this._reconnectTimer);
    clearInterval(this._drainTimer);
    this.keyTarget.removeEventListener("keydown", this._onKey);
    this.keyTarget.removeEventListener("keyup", this._onKey);
    document.removeEventListener("visibilitychange", this._onVisibility);
    if (this.pc) this.pc.close();
    this.pc = null;
    this.ch = null;
    this.rtpOrigin = null;
    this.votes.clear();
    if (final) this.setState("closed");
  }

  setState(s) {
    this.state = s;
    this.onStatus(s);
  }

  send(msg) {
    if (!this.ch || this.ch.readyState !== "open") return null;
    const seq = ++this.seq;
    this.ch.send(JSON.stringify({ v: 1, seq, ...msg }));
    return seq;
  }

  // ---- input ----------------------------------------------------------------------------
  _onKey(e) {
    const key = KEYMAP[e.key];
    if (!key || (e.target && e.target.tagName === "INPUT")) return;
    e.preventDefault();
    const before = [...this.held].sort().join();
    if (e.type === "keydown") this.held.add(key); else this.held.delete(key);
    if ([...this.held].sort().join() === before) return; // auto-repeat: held keys did not change
    this.sendAction(e.timeStamp);
  }

  sendAction(eventTime = performance.now()) {
    const sent = performance.now();
    const seq = this.send({ type: "action", keys: [...this.held], t: sent });
    if (seq !== null) {
      this.pending.set(seq, { t: eventTime, frameId: null });
      this._push("capture_ms", sent - eventTime);
    }
    return seq;
  }

  sendPrompt(text) {
    const seq = this.send({ type: "prompt", text });
    if (seq !== null) this.pending.set(seq, { t: performance.now(), frameId: null, prompt: true });
    return seq;
  }

  setQuality(preset) { return this.send({ type: "quality", preset }); }

  _onVisibility() {
    if (document.hidden) {  // release held keys so the world does not run away while we are away
      this.held.clear();
      this.sendAction();
    } else if (!this.pc || ["failed", "closed"].includes(this.pc.connectionState)) {  // not while ICE recovers
      this.connect();
    }
  }

  // ---- server messages ------------------------------------------------------------------
  _onMessage(m) {
    this.lastHeard = performance.now();
    if (m.type === "frame") {
      this.ptsToFrame.set(m.pts, m.frame_id);
      if (this.ptsToFrame.size > HISTORY) this.ptsToFrame.delete(this.ptsToFrame.keys().next().value);
    } else if (m.type === "ack") {
      for (const [seq, p] of this.pending) if (seq <= m.seq && p.frameId === null) p.frameId = m.frame_id;
      this._resolve();
    } else if (m.type === "pong") {
      this._push("rtt_ms", performance.now() - m.t);
    } else if (m.type === "stats") {
      this.server = m;
    } else if (m.type === "drain") {
      this._drainCountdown(m.deadline_s);
    } else if (m.type === "error") {
      this.lastError = m;
      if (m.code === "drained" || m.code === "frame_cap") {  // the session ends (docs/streaming.md)
        this.ended = m;
        clearInterval(this._drainTimer);
        this.onStatus(`ended: ${m.message}`);
      }
    }
  }

  // The server is restarting (graceful drain): show the seconds left in the status area.
  _drainCountdown(deadlineS) {
    const end = performance.now() + deadlineS * 1000;
    const tick = () => {
      const left = Math.max(0, Math.ceil((end - performance.now()) / 1000));
      if (!this.ended) this.onStatus(`server restarting in ${left} s`);
      if (!left) clearInterval(this._drainTimer);
    };
    clearInterval(this._drainTimer);
    this._drainTimer = setInterval(tick, 1000);
    tick();
  }

  // rtpTimestamp = random origin + pts (90 kHz). pts carry real-time jitter, so exactly one origin keeps
  // matching: vote until one candidate is clearly ahead, then map rtpTimestamp -> frame_id exactly.
  _frameIdFor(rtp) {
    if (this.rtpOrigin === null) {
      for (const pts of this.ptsToFrame.keys()) {
        const o = (rtp - pts) >>> 0;
        this.votes.set(o, (this.votes.get(o) || 0) + 1);
      }
      let best = null, bestN = 0, second = 0;
      for (const [o, n] of this.votes) {
        if (n > bestN) { second = bestN; best = o; bestN = n; } else if (n > second) second = n;
      }
      if (bestN >= 4 && second * 2 < bestN) { this.rtpOrigin = best; this.votes.clear(); }
      if (this.votes.size > 50000) this.votes.clear();
      return null;
    }
    return this.ptsToFrame.get((rtp - this.rtpOrigin) >>> 0) ?? null;
  }

  _watchFrames() {
    const video = this.video;
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
    const generation = this.generation;
    const onFrame = (now, md) => {
      if (!this.pc || generation !== this.generation) return; // a newer connection owns the video now
      this.frames += 1;
      const shown = md.expectedDisplayTime || now;
      if (this.firstFrameMs === null && this.offerAt) this.firstFrameMs = shown - this.offerAt;
      if (this.lastDisplay !== null) this._push("interval_ms", shown - this.lastDisplay);
      this.lastDisplay = shown;
      this.fpsWindow.push(shown);
      while (this.fpsWindow.length && shown - this.fpsWindow[0] > 2000) this.fpsWindow.shift();
      if (md.processingDuration !== undefined) this._push("decode_ms", md.processingDuration * 1000);
      this.width = md.width;
      this.height = md.height;
      const fid = md.rtpTimestamp !== undefined ? this._frameIdFor(md.rtpTimestamp) : null;
      if (fid !== null) {
        if (fid !== this.lastFrameId) this.newFrames = (this.newFrames || 0) + 1; // repeats excluded
        this.presented.push([fid, shown]);
        if (this.presented.length > HISTORY) this.presented.shift();
        this.lastFrameId = fid;
        this._resolve();
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  // glass-to-glass: key event -> display of the first frame whose id >= the frame that acked it.
  _resolve() {
    for (const [seq, p] of this.pending) {
      if (p.frameId === null) {
        if (performance.now() - p.t > 5000) this.pending.delete(seq);
        continue;
      }
      const hit = this.presented.find(([fid]) => fid >= p.frameId);
      if (hit) {
        if (!p.prompt) this._push("g2g_ms", hit[1] - p.t);
        else this.lastSwitchMs = hit[1] - p.t;
        this.pending.delete(seq);
      }
    }
  }

  _push(name, v) {
    const a = this.samples[name];
    a.push(v);
    if (a.length > this.historyLimit) a.shift();
  }

  // ---- numbers --------------------------------------------------------------------------
  fpsActual() {
    const w = this.fpsWindow;
    return w.length > 1 ? (1000 * (w.length - 1)) / (w[w.length - 1] - w[0]) : 0;
  }

  stats() {
    const s = this.samples;
    const q = this.video.getVideoPlaybackQuality ? this.video.getVideoPlaybackQuality() : null;
    return {
      fps_actual: this.fpsActual(), fps_target: this.server.fps_target ?? null,
      g2g_ms: pct(s.g2g_ms, 50), g2g_ms_p95: pct(s.g2g_ms, 95), g2g_count: s.g2g_ms.length,
      rtt_ms: pct(s.rtt_ms, 50), capture_ms: pct(s.capture_ms, 50), decode_ms: pct(s.decode_ms, 50),
      interval_ms_p95: pct(s.interval_ms, 95), frames: this.frames, new_frames: this.newFrames || 0,
      frame_id: this.lastFrameId ?? null,
      dropped_frames: q ? q.droppedVideoFrames : null, first_frame_ms: this.firstFrameMs,
      rtp_locked: this.rtpOrigin !== null, width: this.width ?? null, height: this.height ?? null,
      server: this.server, state: this.state, switch_ms: this.lastSwitchMs ?? null,
    };
  }

  draw() {
    const c = this.overlay;
    if (!c) return;
    const st = this.stats();
    const f = (v, d = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
    const lines = [
      `${this.state}  ${f(st.fps_actual, 1)} fps`,
      `g2g ${f(st.g2g_ms)} ms (p95 ${f(st.g2g_ms_p95)})  rtt ${f(st.rtt_ms)} ms`,
      `drop ${f(this.server.drop_pct, 1)} %  ${st.width ?? "?"}x${st.height ?? "?"} ${this.server.rung ?? ""}`,
      `model ${f(this.server.model_ms, 1)} ms  ${f(this.server.bitrate_kbps)} kbps`,
    ];
    if (!this.painter) this.painter = overlayPainter(c); // the canvas can be transferred only once
    this.painter.paint(lines);
    c.dataset.offscreen = String(this.painter.offscreen);
    c.dataset.fps = f(st.fps_actual, 1);
    c.dataset.g2g = f(st.g2g_ms);
  }
}
