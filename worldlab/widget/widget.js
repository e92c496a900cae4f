// JupyterLab glue for the shared player module (player.js is prepended to this file at import time):
// signaling over the widget comm, keyboard focus on the stage, toggles, JPEG fallback, stats to the kernel.

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
  return `<label>${name} <select data-trait="${name}">${options.map((o) =>
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
      <div class="wl-msg" hidden></div>
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
  let fallback = false;
  const player = new Player({
    video, overlay: $(".wl-overlay"), signal: commSignal(model), keyTarget: stage,
    onStatus: (s) => { el.dataset.state = s; },
  });
  el.player = player; // tests read el.player.stats()

  const showMessage = (text) => { msgBox.textContent = text; msgBox.hidden = !text; };
  const startFallback = (why) => {
    if (fallback || model.get("status") === "closed") return;
    fallback = true;
    player.close(false);
    video.hidden = true;
    $(".wl-fallback").hidden = false;
    $(".wl-badge").hidden = false;
    el.dataset.state = "fallback";
    model.send({ type: "fallback", reason: String(why || "") });
  };
  const fallbackKeys = new Set();
  stage.addEventListener("keydown", (e) => fallback && fallbackKey(e, true));
  stage.addEventListener("keyup", (e) => fallback && fallbackKey(e, false));
  function fallbackKey(e, down) {
    const key = { ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right", w: "up", s: "down", a: "left", d: "right" }[e.key];
    if (!key) return;
    e.preventDefault();
    const before = fallbackKeys.size + [...fallbackKeys].join();
    down ? fallbackKeys.add(key) : fallbackKeys.delete(key);
    if (before !== fallbackKeys.size + [...fallbackKeys].join()) model.send({ type: "ctl", msg: { type: "action", keys: [...fallbackKeys] } });
  }

  const onMsg = async (msg, buffers) => {
    if (msg.type === "jpeg" && buffers && buffers.length) {
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
    fallback ? model.send({ type: "ctl", msg: { type: "prompt", text } }) : player.sendPrompt(text);
  });
  model.on("change:prompt", () => { $(".wl-prompt").value = model.get("prompt"); });  // player.prompt = ...
  el.querySelectorAll("select[data-trait]").forEach((s) => s.addEventListener("change", () => {
    model.set(s.dataset.trait, s.value);
    model.save_changes();
  }));
  stage.addEventListener("click", () => stage.focus());

  if (model.get("status") !== "closed") {
    // A busy kernel (a long cell) answers late; fall back only when WebRTC itself fails: no answer in
    // 20 s, or an answer but no frame 8 s later (e.g. UDP blocked on a remote JupyterHub).
    player.connect().then(() => {
      setTimeout(() => { if (!fallback && player.stats().frames === 0) startFallback("no WebRTC frames 8 s after the answer"); }, 8000);
    }).catch((e) => startFallback(e.message));
  }
  const timer = setInterval(() => {
    model.send({ type: "frontend_stats", stats: fallback ? { fallback: true, frames: player.frames } : player.stats() });
  }, 1000);
  return () => {
    clearInterval(timer);
    model.off("msg:custom", onMsg);
    model.off("change:status", onStatus);
    player.close();
    model.send({ type: "view_closed" });
  };
}

export default { render };
