// JupyterLab glue for the shared player module (player.js is prepended to this file at import time):
// signalling through the Jupyter server relay (answers while the kernel is busy) or the widget comm,
// keyboard focus on the stage, toggles, kernel-gone notice, the WebCodecs fallback over the comm (JPEG without it).

const RELAY_POLL_MS = 3000;

function pageConfig() {
  const el = document.getElementById("jupyter-config-data");
  try { return el ? JSON.parse(el.textContent) : null; } catch (e) { return null; }
}

// {base_url}worldlab/players/<id> on the Jupyter server (relay.py), authenticated like JupyterLab's own
// requests: the session cookie plus the _xsrf cookie echoed in a header. null outside JupyterLab.
function relayFor(model) {
  const cfg = pageConfig(), id = model.get("player_id");
  if (!cfg || typeof cfg.baseUrl !== "string" || !id) return null;
  const url = new URL(`${cfg.baseUrl.replace(/\/?$/, "/")}worldlab/players/${id}`, location.origin).href;
  const call = async (path = "", body = null, extra = {}) => {
    const headers = { "Content-Type": "application/json" };
    const xsrf = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    if (xsrf) headers["X-XSRFToken"] = decodeURIComponent(xsrf[1]);
    const res = await fetch(url + path, {
      method: body === null ? "GET" : "POST", headers, credentials: "same-origin",
      body: body === null ? undefined : JSON.stringify(body), ...extra,
    });
    let data = null;
    try { data = await res.json(); } catch (e) { /* not our JSON: e.g. no relay extension */ }
    if (!res.ok) {
      const err = new Error(data && data.error ? data.error.message : (data && data.message) || res.statusText);
      err.code = data && data.error ? data.error.code : null;
      throw err;
    }
    return data;
  };
  return { url, call, ok: null }; // ok: null = untried, true = answering, false = unavailable (use the comm)
}

const KERNEL_GONE = new Set(["kernel_gone", "gone"]);

function relayOrComm(relay, model) {
  const comm = commSignal(model);
  return async (offer, extra = {}) => {
    if (relay && relay.ok !== false) {
      try {
        const answer = await relay.call("/offer", { sdp: offer.sdp, type: offer.type });
        relay.ok = true;
        return answer;
      } catch (e) {
        if (KERNEL_GONE.has(e.code)) throw e;
        relay.ok = false; // no extension, or it refused us: the comm still works once the kernel is idle
      }
    }
    return comm(offer, extra);
  };
}

function commSignal(model) {
  return (offer, extra = {}) => new Promise((resolve, reject) => {
    const id = Math.random().toString(36).slice(2);
    const onMsg = (msg) => {
      if (msg.id !== id) return;
      model.off("msg:custom", onMsg);
      if (msg.type === "answer") resolve({ ...msg, type: msg.sdp_type });
      else reject(new Error(msg.message || "offer refused"));
    };
    model.on("msg:custom", onMsg);
    model.send({ type: "offer", id, sdp: offer.sdp, ...extra });
    setTimeout(() => reject(new Error("no answer from the kernel")), 20000);
  });
}

function select(name, options, value) {
  // A toggle the model does not support offers its one value, greyed out (worldlab.model.registry).
  const fixed = options.length < 2 ? " disabled title=\"this model does not support other values\"" : "";
  return `<label>${name} <select data-trait="${name}"${fixed}>${options.map((o) =>
    `<option${o === value ? " selected" : ""}>${o}</option>`).join("")}</select></label>`;
}

function render({ model, el }) {
  const size = model.get("size");
  el.innerHTML = `
    <div class="wl-stage" tabindex="0" style="width:${size}px;height:${size}px">
      <video muted autoplay playsinline style="width:${size}px;height:${size}px"></video>
      <canvas class="wl-fallback" width="${size}" height="${size}" hidden></canvas>
      <canvas class="wl-overlay" width="${size}" height="72"></canvas>
      <span class="wl-badge" hidden>fallback</span>
      <div class="wl-msg" hidden><span></span> <button class="wl-reconnect" hidden>reconnect</button></div>
    </div>
    <div class="wl-controls">
      <input class="wl-prompt" maxlength="500" value="${model.get("prompt").replace(/"/g, "&quot;")}">
      <button class="wl-send">prompt</button>
      ${Object.entries(model.get("toggle_choices")).map(([k, vals]) => select(k, vals, model.get(k))).join("\n      ")}
    </div>
    <div class="wl-help">click the picture, then arrows / WASD to move</div>`;
  el.classList.add("worldlab-player");
  const $ = (q) => el.querySelector(q);
  const stage = $(".wl-stage"), video = $("video"), msgBox = $(".wl-msg");
  let fallback = false, gone = false;
  const relay = relayFor(model);
  const player = new Player({
    video, overlay: $(".wl-overlay"), signal: relayOrComm(relay, model), keyTarget: stage,
    onStatus: (s) => { el.dataset.state = gone ? "gone" : s; },
  });
  el.player = player; // tests read el.player.stats()
  el.relay = relay;

  const showMessage = (text, reconnect = false) => {
    msgBox.querySelector("span").textContent = text;
    msgBox.hidden = !text;
    $(".wl-reconnect").hidden = !reconnect;
  };
  const kernelGone = (e) => {
    if (gone) return;
    gone = true;
    player.close(false);
    el.dataset.state = "gone";
    showMessage(e.code === "kernel_gone" ? "kernel restarted — this session is gone; run the Player cell again"
      : `session gone: ${e.message}`, true);
  };
  $(".wl-reconnect").addEventListener("click", async () => {
    showMessage("reconnecting…");
    try {
      if (relay) await relay.call("");
      gone = false;
      showMessage("");
      await player.connect();
    } catch (e) {
      gone = false;
      kernelGone(e);
    }
  });
  // WebRTC cannot connect: the served page's WebCodecs path (H.264 access units, the same ctl text) over the
  // comm where the browser has WebCodecs; JPEG pictures and comm key messages where it has not.
  const startFallback = async (why) => {
    if (fallback || model.get("status") === "closed") return;
    fallback = true;
    player.close(false);
    if (!(await webCodecsProblem())) {
      player.attachUnits({ readyState: "open", send: (text) => model.send({ type: "ctl_text", text }) }, "comm");
      $(".wl-badge").hidden = false;
      el.dataset.state = "fallback";
      model.send({ type: "fallback", codec: "h264", reason: String(why || "") });
      return;
    }
    video.hidden = true;
    $(".wl-fallback").hidden = false;
    $(".wl-badge").hidden = false;
    el.dataset.state = "fallback";
    model.send({ type: "fallback", reason: String(why || "") });
  };
  const fallbackKeys = new Set();
  stage.addEventListener("keydown", (e) => fallback && !player.units && fallbackKey(e, true));
  stage.addEventListener("keyup", (e) => fallback && !player.units && fallbackKey(e, false));
  function fallbackKey(e, down) {
    const key = { ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right", w: "up", s: "down", a: "left", d: "right" }[e.key];
    if (!key) return;
    e.preventDefault();
    const before = fallbackKeys.size + [...fallbackKeys].join();
    down ? fallbackKeys.add(key) : fallbackKeys.delete(key);
    if (before !== fallbackKeys.size + [...fallbackKeys].join()) model.send({ type: "ctl", msg: { type: "action", keys: [...fallbackKeys] } });
  }

  const onMsg = async (msg, buffers) => {
    if (msg.type === "au" && buffers && buffers.length && player.units) {
      const b = buffers[0]; // a DataView (or ArrayBuffer) over the message's bytes
      player.feedUnit(b instanceof ArrayBuffer ? b : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
    } else if (msg.type === "ctl" && typeof msg.text === "string" && player.units) {
      player.feedText(msg.text);
    } else if (msg.type === "jpeg" && buffers && buffers.length) {
      const bmp = await createImageBitmap(new Blob([buffers[0]], { type: "image/jpeg" }));
      const g = $(".wl-fallback").getContext("2d");
      g.imageSmoothingEnabled = false;
      g.drawImage(bmp, 0, 0, size, size);
      player.frames += 1;
    }
  };
  model.on("msg:custom", onMsg);
  const onStatus = () => {
    const s = model.get("status");
    if (s === "closed") { player.close(); showMessage("session closed — run the cell again to start a new one"); }
  };
  model.on("change:status", onStatus);
  onStatus();

  $(".wl-send").addEventListener("click", () => {
    const text = $(".wl-prompt").value;
    fallback && !player.units ? model.send({ type: "ctl", msg: { type: "prompt", text } }) : player.sendPrompt(text);
  });
  model.on("change:prompt", () => { $(".wl-prompt").value = model.get("prompt"); });  // player.prompt = ...
  el.querySelectorAll("select[data-trait]").forEach((s) => s.addEventListener("change", () => {
    model.set(s.dataset.trait, s.value);
    model.save_changes(); // the kernel applies it when idle (a no-op if the relay already did)
    if (relay && relay.ok) {
      relay.call("/toggle", { [s.dataset.trait]: s.value })
        .catch((e) => showMessage(`${s.dataset.trait} switch failed: ${e.message}`));
    }
  }));
  model.on("change:weights", () => syncSelects());
  model.on("change:window", () => syncSelects());
  model.on("change:kv", () => syncSelects());
  function syncSelects() {
    el.querySelectorAll("select[data-trait]").forEach((s) => { s.value = model.get(s.dataset.trait); });
  }
  stage.addEventListener("click", () => stage.focus());

  if (model.get("status") !== "closed") {
    // A busy kernel (a long cell) answers late; fall back only when WebRTC itself fails: no answer in
    // 20 s, or an answer but no frame 8 s later (e.g. UDP blocked on a remote JupyterHub).
    player.connect().then(() => {
      setTimeout(() => { if (!fallback && player.stats().frames === 0) startFallback("no WebRTC frames 8 s after the answer"); }, 8000);
    }).catch((e) => (KERNEL_GONE.has(e.code) ? kernelGone(e) : startFallback(e.message)));
  }
  // The page's numbers reach the kernel over the data channel ("report"); only the JPEG fallback has
  // no data channel and sends its heartbeat over the comm.
  const timer = setInterval(() => {
    if (fallback) model.send({ type: "frontend_stats", stats: { fallback: true, frames: player.frames } });
  }, 1000);
  // A restarted kernel takes the session with it; the relay knows (the kernel's process is gone).
  const watch = setInterval(() => {
    if (!relay || relay.ok !== true || gone || model.get("status") === "closed") return;
    relay.call("").catch((e) => KERNEL_GONE.has(e.code) && kernelGone(e));
  }, RELAY_POLL_MS);
  return () => {
    clearInterval(timer);
    clearInterval(watch);
    model.off("msg:custom", onMsg);
    model.off("change:status", onStatus);
    player.close();
    if (relay && relay.ok) relay.call("/view_closed", {}, { keepalive: true }).catch(() => {});
    else model.send({ type: "view_closed" });
  };
}

export default { render };
