// worldlab player: WebRTC video + `ctl` data channel + frame-accurate glass-to-glass measurement.
// One ES module for the served page and the JupyterLab widget; signaling is pluggable (fetch or comm).

const KEYMAP = {
  ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right",
  w: "up", s: "down", a: "left", d: "right", W: "up", S: "down", A: "left", D: "right",
};
const HISTORY = 600; // frames / samples kept for mapping and percentiles
const DISCONNECTED_GRACE_MS = 5000; // see onconnectionstatechange: ~5 s + this ~ the server's ICE consent
const STALE_LINK_MS = 1500; // nothing from the server (frames come 30 times a second) this long: the link stalls
// A/V offset (docs/streaming.md, Audio): a click heard is paired with the display of the frame the server flagged
// as its bounce when they are this close (the server spaces clicks >= 450 ms apart, worldlab.engine.audio).
const AV_PAIR_MS = 200;
const AV_PATH_KEPT = 9; // the audio-minus-video path reported to the server: median of this many latest clicks
const JITTER_EVERY_MS = 500; // how often the audio jitter buffer's current delay is read
const CLICK_THRESHOLD = 0.4; // full scale: the tone stays at 0.08, a click starts at 0.9
const CLICK_GAP_S = 0.15; // after a loud sample, this much quiet before the next onset counts (a click rings)

// Click onsets on the audio clock: a worklet sees every sample (a polled AnalyserNode would blur 6 ms clicks).
const ONSET_WORKLET = `class Onsets extends AudioWorkletProcessor {
  constructor(o) { super(); this.th = o.processorOptions.threshold; this.gap = o.processorOptions.gap * sampleRate;
    this.last = -Infinity; }
  process(inputs) {
    const x = inputs[0] && inputs[0][0];
    for (let i = 0; x && i < x.length; i++) {
      if (Math.abs(x[i]) < this.th) continue;
      const f = currentFrame + i;
      if (f - this.last >= this.gap) this.port.postMessage(f / sampleRate);
      this.last = f;
    }
    return true;
  }
}
registerProcessor("worldlab-onsets", Onsets);`;
const ICE_TIMEOUT_MS = 4000; // transport "auto": WebRTC not connected this long after the answer -> the WebSocket
// The WebCodecs fallback (worldlab.transport.websocket): H.264 constrained baseline as Annex B (no `description`),
// each binary message = a 16-byte header (version u8, flags u8 with bit 0 = keyframe, u16, frame_id u32, pts u64
// at 90 kHz) + one access unit.
const WS_DECODER = { codec: "avc1.42E01F", optimizeForLatency: true };
// The server's codecs (worldlab.config.CODECS) and their RTP names; a player asks for one in its offer.
export const CODEC_MIME = { vp8: "video/VP8", h264: "video/H264", av1: "video/AV1" };
const CODEC_FALLBACK = ["h264", "vp8"]; // what a page that cannot decode the asked codec takes instead
const AU_HEADER = 16, AU_VERSION = 1;

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

// GET /ws (a WebSocket) of the served page: the WebCodecs fallback; `extra` (prompt, preset) joins `params`.
export function httpSocket(path = "/ws", params = {}) {
  return (extra = {}) => {
    const q = new URLSearchParams({ ...params, ...Object.fromEntries(Object.entries(extra).filter(([, v]) => v != null)) });
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}?${q}`;
  };
}

// Why this browser cannot play the WebCodecs fallback, or null if it can.
// The server codecs this browser can decode over WebRTC (its receiver capabilities), e.g. ["vp8", "h264"].
export function receivableCodecs() {
  const have = new Set((RTCRtpReceiver.getCapabilities?.("video")?.codecs || []).map((c) => c.mimeType.toLowerCase()));
  return Object.keys(CODEC_MIME).filter((name) => have.has(CODEC_MIME[name].toLowerCase()));
}

// `want` if this browser decodes it, else the first of CODEC_FALLBACK it does (AV1 is offered only where it
// can be decoded); null for no preference (the server's default). Throws on a name the server does not know.
export function pickCodec(want) {
  if (!want) return null;
  if (!(want in CODEC_MIME)) throw new Error(`codec must be one of ${Object.keys(CODEC_MIME).join(", ")}, got ${want}`);
  const ok = receivableCodecs();
  return ok.includes(want) ? want : (CODEC_FALLBACK.find((c) => ok.includes(c)) ?? null);
}

export async function webCodecsProblem() {
  if (typeof VideoDecoder === "undefined" || typeof EncodedVideoChunk === "undefined") {
    return "this browser has no WebCodecs (VideoDecoder), so it cannot use the WebSocket fallback";
  }
  try {
    const { supported } = await VideoDecoder.isConfigSupported(WS_DECODER);
    return supported ? null : `this browser's WebCodecs cannot decode ${WS_DECODER.codec} (H.264)`;
  } catch (e) {
    return `WebCodecs check failed: ${e.message}`;
  }
}

export class Player {
  // ice: async () => {iceServers, iceTransportPolicy} (httpIce for the served page); none: host candidates only.
  // socket: (extra) => WebSocket URL of the WebCodecs fallback (httpSocket), or null (WebRTC only);
  // transport: "auto" (WebRTC, then the socket if ICE does not connect in iceTimeoutMs), "webrtc" or "ws".
  constructor({ video, overlay = null, signal, ice = null, keyTarget = document, role = "player",
    onStatus = () => {}, socket = null, transport = "auto", iceTimeoutMs = ICE_TIMEOUT_MS, codec = null }) {
    this.video = video;
    this.codec = codec; // a CODEC_MIME name the player asks the server for (pickCodec), or null: its default
    this.socket = socket;
    this.transport = transport;
    this.iceTimeoutMs = iceTimeoutMs;
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
    this.unmapped = new Map(); // pts -> display time of a shown frame whose `frame` message has not come yet
    this.votes = new Map();
    this.rtpOrigin = null;
    this.presented = []; // [frameId, displayTime]
    this.samples = { g2g_ms: [], capture_ms: [], rtt_ms: [], decode_ms: [], interval_ms: [], av_offset_ms: [],
      display_lag_ms: [] };
    this.avEvents = []; // {fid, shown, at}: frames the server flagged as showing a bounce (its click)
    this.onsets = []; // performance.now() times at which clicks were output
    this.clicksHeard = 0;
    this.avMissed = 0; // flagged frames shown with no click heard near them
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
    this._newSession();
    this.video.srcObject = null;
    const ice = this.ice ? await this.ice() : {};
    const pc = new RTCPeerConnection({
      iceServers: ice.iceServers || [], iceTransportPolicy: ice.iceTransportPolicy || "all",
    });
    this.pc = pc;
    const video = pc.addTransceiver("video", { direction: "recvonly" });
    const codec = this.role === "player" ? this.codec : null; // spectators take the room's codec
    if (codec) {  // offer only that codec: the answer cannot pick another one
      const mime = CODEC_MIME[codec].toLowerCase();
      video.setCodecPreferences(RTCRtpReceiver.getCapabilities("video").codecs.filter((c) => c.mimeType.toLowerCase() === mime));
    }
    pc.addTransceiver("audio", { direction: "recvonly" }); // the sound: in the video's stream, on its clock
    const ch = pc.createDataChannel("ctl", { ordered: true });
    this.ch = ch;
    ch.onmessage = (e) => this._onMessage(JSON.parse(e.data));
    ch.onopen = () => this.setState("live");
    pc.ontrack = (e) => {
      // Ask Chrome's jitter buffer for the minimum delay: loopback/LAN needs no smoothing.
      if ("jitterBufferTarget" in e.receiver) e.receiver.jitterBufferTarget = 0;
      if ("playoutDelayHint" in e.receiver) e.receiver.playoutDelayHint = 0;
      if (e.track.kind === "audio") this._listenAudio(e.track);
      const stream = e.streams[0] || new MediaStream([e.track]);
      if (this.video.srcObject === stream) return; // the audio and video tracks share one stream
      this.video.srcObject = stream;
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
    const answer = await this.signal(pc.localDescription, codec ? { ...extra, codec } : extra);
    this.negotiated = answer.codec ?? null;
    this.session = answer.session;
    this.room = answer.room;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    this._watchFrames();
    this._listen();
    return answer;
  }

  // A new offer (or socket) is a new session: its pts, frame ids and RTP origin share nothing with the old one.
  _newSession() {
    this.ended = null;
    this.setState("connecting");
    this.ptsToFrame.clear();
    this.unmapped.clear();
    this.presented = [];
    this.pending.clear();
    this.firstFrameMs = null;
    this.lastDisplay = null;
    this.fpsWindow = [];
    this.generation = (this.generation || 0) + 1;
  }

  // Keys, visibility, pings, reports and the overlay of a session (either transport).
  _listen() {
    if (this.role === "player") {
      this.keyTarget.addEventListener("keydown", this._onKey);
      this.keyTarget.addEventListener("keyup", this._onKey);
    }
    document.addEventListener("visibilitychange", this._onVisibility);
    // Pings and reports only while the server is heard from: during an outage they would queue in SCTP and
    // arrive as one burst after it (stale figures, RTTs that include the outage, over the server's rate limit).
    const heard = () => performance.now() - (this.lastHeard ?? -Infinity) < STALE_LINK_MS;
    this._pingTimer = setInterval(() => heard() && this.send({ type: "ping", t: performance.now() }), 500);
    // What this page measured, for the server (protocol.REPORT_FIELDS: it refuses any other field, and
    // anything but a finite number >= 0 or null).
    const reported = ["fps_actual", "g2g_ms", "g2g_ms_p95", "rtt_ms", "capture_ms", "decode_ms",
      "interval_ms_p95", "frames", "new_frames", "dropped_frames", "first_frame_ms", "av_offset_ms_p95",
      "av_path_ms"];
    this._reportTimer = setInterval(() => {
      if (!heard()) return;
      const st = this.stats();
      const ok = (v) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : null);
      this.send({ type: "report", ...Object.fromEntries(reported.map((k) => [k, ok(st[k])])) });
    }, 1000);
    this._drawTimer = setInterval(() => this.draw(), 250);
  }

  // ---- transport choice and the WebCodecs fallback ----------------------------------------
  // transport "auto": WebRTC, and the WebSocket when ICE has not connected iceTimeoutMs after the answer (UDP
  // blocked); once fallen back, later starts (reconnect) go straight to the socket.
  async start(extra = {}) {
    clearTimeout(this._fallbackTimer);
    if (this.transport === "ws" || (this.fellBack && this.socket)) return this.connectSocket(extra);
    const answer = await this.connect(extra);
    if (this.transport === "auto" && this.socket) {
      this._fallbackTimer = setTimeout(() => {
        if (!this.pc || this.pc.connectionState === "connected") return;
        this.fellBack = true;
        // naming the failed attempt's room lets the server replace it at once (its peer never connected)
        this.connectSocket({ ...extra, room: this.room }).catch((e) => this.setState(`error: ${e.message}`));
      }, this.iceTimeoutMs);
    }
    return answer;
  }

  // The session over a WebSocket: access units decoded by VideoDecoder onto a canvas in the video's place, the
  // same ctl messages as text. Resolves at the first access unit; rejects with the server's error if refused.
  async connectSocket(extra = {}) {
    this.close(false);
    const problem = this.socket ? await webCodecsProblem() : "this player has no WebSocket fallback configured";
    if (problem) {
      this.setState(`error: ${problem}`);
      throw new Error(problem);
    }
    const ws = new WebSocket(this.socket(extra));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.attachUnits({ get readyState() { return ws.readyState === WebSocket.OPEN ? "open" : "closed"; },
      send: (text) => ws.send(text) }, "ws");
    const first = new Promise((resolve, reject) => {
      ws.onmessage = (e) => {
        if (typeof e.data === "string") return this.feedText(e.data);
        if (this.feedUnit(e.data)) resolve({ transport: "ws", room: this.server.room ?? null });
      };
      ws.onclose = (e) => {
        this.lastSocketClose = { code: e.code, reason: e.reason, afterMs: performance.now() - this.offerAt };
        const why = this.lastError ? `${this.lastError.code}: ${this.lastError.message}` : `socket closed (${e.code})`;
        reject(new Error(why));
        if (ws === this.ws) this._socketClosed(e, why, extra);
      };
    });
    ws.onopen = () => this.setState("live");
    return first;
  }

  // Play access units from any carrier (this WebSocket; the widget's comm): `channel` {readyState, send(text)}
  // takes the page's ctl text; the carrier hands its binary messages to feedUnit and its text to feedText.
  attachUnits(channel, transport) {
    this._newSession();
    this.lastError = null;
    this.offerAt = performance.now();
    this.units = transport;
    this.ch = channel;
    this._showCanvas(true);
    this._newDecoder();
    this._listen();
  }

  feedText(text) {
    this._onMessage(JSON.parse(text));
  }

  // Refused (close code 4000 + HTTP status) or ended by the server: say so; a dropped link: a new socket.
  _socketClosed(e, why, extra) {
    if (this.ended) return;
    if (e.code >= 4000) {
      this.close(false);
      this.setState(`error: ${why}`);
      return;
    }
    this.setState("reconnecting");
    this._reconnectTimer = setTimeout(() => this.connectSocket(extra).catch(() => {}), 1500);
  }

  _newDecoder() {
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.keySeen = false; // a decoder starts at a keyframe (one comes every GOP, and first on a new socket)
    this.decodeStarts = new Map(); // chunk timestamp (us) -> [frame id, decode() time]
    this.decoder = new VideoDecoder({
      output: (frame) => this._decoded(frame),
      error: (e) => { this.lastDecodeError = e.message; this._newDecoder(); },
    });
    this.decoder.configure(WS_DECODER);
  }

  // One binary message (ArrayBuffer) -> VideoDecoder. True if it was an access unit.
  feedUnit(buf) {
    if (buf.byteLength <= AU_HEADER) return false;
    const dv = new DataView(buf);
    if (dv.getUint8(0) !== AU_VERSION) return false;
    this.lastHeard = performance.now();
    const key = (dv.getUint8(1) & 1) === 1, fid = dv.getUint32(4), pts = Number(dv.getBigUint64(8));
    if ((!key && !this.keySeen) || this.decoder.state !== "configured") return true;
    this.keySeen = true;
    const timestamp = Math.round((pts * 1000) / 90); // 90 kHz -> microseconds
    this.decodeStarts.set(timestamp, [fid, performance.now()]);
    if (this.decodeStarts.size > HISTORY) this.decodeStarts.delete(this.decodeStarts.keys().next().value);
    this.decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp, data: new Uint8Array(buf, AU_HEADER) }));
    return true;
  }

  // Only the newest decoded frame is painted, at the next animation frame (its time is the paint time).
  _decoded(frame) {
    const started = this.decodeStarts.get(frame.timestamp);
    this.decodeStarts.delete(frame.timestamp);
    if (started) this._push("decode_ms", performance.now() - started[1]);
    if (this._nextPaint) this._nextPaint.frame.close();
    this._nextPaint = { frame, fid: started ? started[0] : null };
    if (!this._paintAsked) {
      this._paintAsked = true;
      requestAnimationFrame((t) => this._paint(t));
    }
  }

  _paint(t) {
    this._paintAsked = false;
    const next = this._nextPaint;
    this._nextPaint = null;
    if (!next) return;
    const c = this.canvas, { frame, fid } = next;
    if (!this.units) return frame.close();
    if (c.width !== frame.displayWidth || c.height !== frame.displayHeight) {
      c.width = frame.displayWidth;
      c.height = frame.displayHeight;
    }
    c.getContext("2d").drawImage(frame, 0, 0);
    frame.close();
    this._shown(t, fid, c.width, c.height);
  }

  // The canvas that stands where the <video> is while the socket plays (made once, next to the video).
  _showCanvas(on) {
    if (on && !this.canvas) {
      const v = this.video, c = document.createElement("canvas");
      c.className = "wl-ws-frames";
      if (v.id) c.id = `${v.id}-ws`;
      c.style.cssText = `image-rendering:pixelated;width:${v.clientWidth || v.width}px;`
        + `height:${v.clientHeight || v.height}px`;
      v.parentNode.insertBefore(c, v);
      this.canvas = c;
    }
    // style, not the hidden attribute: page CSS such as `video { display: block }` outranks [hidden]
    if (this.canvas) this.canvas.style.display = on ? "block" : "none";
    this.video.style.display = on ? "none" : "";
  }

  _closeSocket() {
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
      this.ws = null;
    }
    this.units = null;
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.decoder = null;
    if (this._nextPaint) this._nextPaint.frame.close();
    this._nextPaint = null;
    if (this.canvas) this._showCanvas(false);
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
    this._closeSocket();
    this.ch = null;
    this.rtpOrigin = null;
    this.votes.clear();
    if (final) clearTimeout(this._fallbackTimer);
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
    if (this.audioCtx && this.audioCtx.state !== "running") this.audioCtx.resume().catch(() => {}); // a gesture
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

  // Sound is muted by default (autoplay rules); the A/V measurement listens either way.
  setSound(on) {
    this.video.muted = !on;
    if (on && this.audioCtx) this.audioCtx.resume().catch(() => {});
    return !this.video.muted;
  }

  _onVisibility() {
    if (document.hidden) {  // release held keys so the world does not run away while we are away
      this.held.clear();
      this.sendAction();
    } else if (!this.units && (!this.pc || ["failed", "closed"].includes(this.pc.connectionState))) {  // not while ICE recovers
      this.connect();
    }
  }

  // ---- server messages ------------------------------------------------------------------
  _onMessage(m) {
    this.lastHeard = performance.now();
    if (m.type === "frame") {
      this.ptsToFrame.set(m.pts, m.frame_id);
      if (m.click && this._audioSource) {
        this.avEvents.push({ fid: m.frame_id, shown: null, at: performance.now(), lead: m.lead_ms ?? 0 });
      }
      const shown = this.unmapped.get(m.pts);
      if (shown !== undefined) {
        this.unmapped.delete(m.pts);
        this._identified(m.frame_id, shown);
      }
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
      if (md.processingDuration !== undefined) this._push("decode_ms", md.processingDuration * 1000);
      const fid = md.rtpTimestamp !== undefined ? this._frameIdFor(md.rtpTimestamp) : null;
      // Glass-to-glass ends at the rendering frame that first composites the picture (`now`, rAF's clock): the
      // one end every path can see (a canvas has no expectedDisplayTime). Chrome's own estimate of the rest
      // of its compositor pipeline, the same for every path, is kept apart as display_lag_ms.
      const shown = now;
      if (md.expectedDisplayTime) this._push("display_lag_ms", md.expectedDisplayTime - now);
      this._shown(shown, fid, md.width, md.height);
      if (fid === null && this.rtpOrigin !== null) this._awaitId((md.rtpTimestamp - this.rtpOrigin) >>> 0, shown);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  // A picture reached the screen at `shown` (ms, performance.now() clock) holding model frame `fid` (null:
  // not known yet): frame rate, pacing, offer -> first frame, and the glass-to-glass it completes.
  _shown(shown, fid, width, height) {
    this.frames += 1;
    if (this.firstFrameMs === null && this.offerAt) this.firstFrameMs = shown - this.offerAt;
    if (this.lastDisplay !== null) this._push("interval_ms", shown - this.lastDisplay);
    this.lastDisplay = shown;
    this.fpsWindow.push(shown);
    while (this.fpsWindow.length && shown - this.fpsWindow[0] > 2000) this.fpsWindow.shift();
    this.width = width;
    this.height = height;
    if (fid !== null) this._identified(fid, shown);
  }

  // Model frame `fid` was on screen at `shown`: what glass-to-glass and the A/V pairing wait for.
  _identified(fid, shown) {
    if (fid !== this.lastFrameId) this.newFrames = (this.newFrames || 0) + 1; // repeats excluded
    this.presented.push([fid, shown]);
    if (this.presented.length > HISTORY) this.presented.shift();
    this.lastFrameId = fid;
    this._resolve();
    for (const ev of this.avEvents) if (ev.shown === null && fid >= ev.fid) ev.shown = shown;
    this._pairAV();
  }

  // The video often beats its `frame` message (RTP vs the data channel, sent together): keep the display time
  // by pts until the id arrives. Dropping it instead credited the action to the next frame (+1 frame of g2g).
  _awaitId(pts, shown) {
    this.unmapped.set(pts, shown);
    if (this.unmapped.size > 64) this.unmapped.delete(this.unmapped.keys().next().value);
  }

  // ---- sound: click onsets heard vs the display of the frames that show their bounces -----------
  async _listenAudio(track) {
    try {
      const ctx = this.audioCtx || (this.audioCtx = new AudioContext({ latencyHint: "interactive" }));
      const url = URL.createObjectURL(new Blob([ONSET_WORKLET], { type: "text/javascript" }));
      this._worklet = this._worklet || ctx.audioWorklet.addModule(url);
      await this._worklet;
      if (this._audioSource) this._audioSource.disconnect();
      this.avEvents = []; // a new session: its frame ids share nothing with the old one's
      this.onsets = [];
      this._jitterLast = null;
      this._jitterTimer = this._jitterTimer || setInterval(() => this.pc && this._sampleJitter(), JITTER_EVERY_MS);
      // Chrome feeds a remote track to WebAudio only while its stream plays in a media element: the <video>.
      const src = ctx.createMediaStreamSource(new MediaStream([track]));
      const node = new AudioWorkletNode(ctx, "worldlab-onsets",
        { processorOptions: { threshold: CLICK_THRESHOLD, gap: CLICK_GAP_S } });
      const mute = ctx.createGain(); // the destination pulls the worklet; what is heard comes from the <video>
      mute.gain.value = 0;
      src.connect(node).connect(mute).connect(ctx.destination);
      const generation = this.generation;
      node.port.onmessage = (m) => generation === this.generation && this._onOnset(m.data);
      this._audioSource = src;
      if (ctx.state !== "running") ctx.resume().catch(() => {});
    } catch (err) {
      this.audioError = String(err);
    }
  }

  // contextTime: the onset's sample on the audio clock -> when it leaves the output (performance.now() time).
  _onOnset(contextTime) {
    const ts = this.audioCtx.getOutputTimestamp();
    this.onsets.push(ts.performanceTime + (contextTime - ts.contextTime) * 1000);
    this.clicksHeard += 1;
    this._pairAV();
  }

  // Each flagged frame, once shown and AV_PAIR_MS old, takes the nearest unpaired onset within AV_PAIR_MS:
  // offset = click heard - frame on the glass (positive: the sound is late). Both ends include their output
  // pipeline: the audio's output latency (getOutputTimestamp), the video's display lag (expectedDisplayTime -
  // the rendering frame, its median). offset + the lead the server clicked with = this receiver's audio path
  // minus its video path; less the audio jitter buffer's delay at the time, it is a steady remainder (median of
  // the latest AV_PATH_KEPT) to which the buffer's current delay is added when reported (av_path_ms), so the
  // server's lead follows the buffer within a second instead of a few clicks.
  _pairAV() {
    const now = performance.now(), lag = pct(this.samples.display_lag_ms || [], 50) ?? 0;
    while (this.avEvents.length) {
      const ev = this.avEvents[0];
      if (ev.shown === null ? now - ev.at < 2000 : now - ev.shown < AV_PAIR_MS) break;
      this.avEvents.shift();
      if (ev.shown === null) continue; // never presented (a dropped frame): nothing to pair
      const seen = ev.shown + lag;
      let best = -1;
      this.onsets.forEach((o, i) => {
        const d = Math.abs(o - seen);
        if (d <= AV_PAIR_MS && (best < 0 || d < Math.abs(this.onsets[best] - seen))) best = i;
      });
      if (best < 0) { this.avMissed += 1; continue; }
      this._push("av_offset_ms", this.onsets[best] - seen);
      const rest = this.onsets[best] - seen + ev.lead - (this.audioJitterMs ?? 0);
      this.avPaths = [...(this.avPaths || []), rest].slice(-AV_PATH_KEPT);
      this.onsets.splice(best, 1);
    }
    while (this.onsets.length && now - this.onsets[0] > 4 * AV_PAIR_MS) this.onsets.shift();
  }

  // Chrome's audio jitter buffer now (ms): its delay over the samples it emitted since the last look. It moves
  // by tens of ms within seconds (a hiccup raises it, calm lowers it): the reported path follows it at once.
  async _sampleJitter() {
    const a = await this.audioStats().catch(() => null);
    if (!a || !a.emitted) return;
    const last = this._jitterLast;
    this._jitterLast = a;
    if (last && a.emitted > last.emitted) {
      this.audioJitterMs = (1000 * (a.delay_s - last.delay_s)) / (a.emitted - last.emitted);
    }
  }

  // The audio receiver's counters (Chrome's inbound-rtp): packets, samples and its jitter-buffer delay.
  async audioStats() {
    if (!this.pc) return null;
    for (const r of (await this.pc.getStats()).values()) {
      if (r.type !== "inbound-rtp" || r.kind !== "audio") continue;
      const n = r.jitterBufferEmittedCount;
      return { packets: r.packetsReceived, samples: r.totalSamplesReceived,
        jitter_buffer_ms: n ? (1000 * r.jitterBufferDelay) / n : null, delay_s: r.jitterBufferDelay, emitted: n };
    }
    return null;
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
      display_lag_ms: pct(s.display_lag_ms, 50),
      interval_ms_p95: pct(s.interval_ms, 95), frames: this.frames, new_frames: this.newFrames || 0,
      frame_id: this.lastFrameId ?? null,
      dropped_frames: q ? q.droppedVideoFrames : null, first_frame_ms: this.firstFrameMs,
      rtp_locked: this.rtpOrigin !== null, width: this.width ?? null, height: this.height ?? null,
      server: this.server, state: this.state, switch_ms: this.lastSwitchMs ?? null,
      av_offset_ms: pct(s.av_offset_ms, 50), av_offset_ms_p95: pct(s.av_offset_ms.map(Math.abs), 95),
      av_count: s.av_offset_ms.length, clicks_heard: this.clicksHeard, av_missed: this.avMissed,
      av_path_ms: (this.avPaths || []).length >= 3 ? pct(this.avPaths, 50) + (this.audioJitterMs ?? 0) : null,
      audio_error: this.audioError ?? null,
      transport: this.units || (this.pc ? "webrtc" : null),
      codec: this.units ? "h264" : (this.negotiated ?? null), // what this session's video is encoded with
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
      `model ${f(this.server.model_ms, 1)} ms  ${f(this.server.bitrate_kbps)} kbps ${(st.codec ?? "").toUpperCase()}`,
    ];
    if (!this.painter) this.painter = overlayPainter(c); // the canvas can be transferred only once
    this.painter.paint(lines);
    c.dataset.offscreen = String(this.painter.offscreen);
    c.dataset.fps = f(st.fps_actual, 1);
    c.dataset.g2g = f(st.g2g_ms);
  }
}
