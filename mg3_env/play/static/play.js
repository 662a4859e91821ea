// mg3 play: the page. Receives one JPEG per chunk, plays its frames at the model's frame rate,
// sends the keys and mouse, reports playback (which paces generation) and measures what it sees.
// window.mg3Play exposes the measurements (tests and the benchmark read them).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_CODES = { KeyW: 0, KeyS: 1, KeyA: 2, KeyD: 3, Space: 4, KeyC: 5 };
const LOOK_CODES = { ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [1, -1], ArrowRight: [1, 1] };

const S = {
  hello: null, ws: null, episode: -1, fps: 16, rate: 16, playing: false, nextDue: 0,
  queue: [], stalled: false, stallStart: 0, stalls: [], framesShown: 0, framesReceived: 0,
  chunks: [], errors: [], statuses: [], latencies: [], pendingLatency: null,
  seq: 0, keys: [0, 0, 0, 0, 0, 0], lookKeys: {}, mouse: [0, 0], mouseTimer: null,
  pose: null, trace: [], genFps: null, decode: Promise.resolve(), closed: null, busy: null,
  drag: null, shownTimes: [], uploaded: false, shownChunk: null,
};

function send(obj) { if (S.ws && S.ws.readyState === 1) S.ws.send(JSON.stringify(obj)); }
function sendRaw(data) { if (S.ws && S.ws.readyState === 1) S.ws.send(data); }

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// ---------------------------------------------------------------- connection

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onChunk(ev.data));
  ws.onclose = (ev) => {
    S.closed = { code: ev.code, reason: ev.reason };
    S.playing = false;
    if (!S.busy) setStatus(`connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""}); reload to play again`, true);
  };
}

function onText(msg) {
  if (msg.type === "hello") {
    S.hello = msg;
    S.fps = S.rate = msg.fps;
    const video = $("video");
    video.width = msg.width;
    video.height = msg.height;
    video.style.width = `${Math.max(512, Math.min(960, msg.width))}px`;
    S.keys = new Array(msg.keys.length).fill(0);
    const select = $("image");
    select.innerHTML = "";
    for (const im of msg.images.concat([{ name: "upload", label: "uploaded image" }])) {
      const o = document.createElement("option");
      o.value = im.name;
      o.textContent = im.label;
      o.disabled = im.name === "upload";
      select.appendChild(o);
    }
    $("prompt").maxLength = msg.max_prompt_chars;
    const m = msg.model;
    $("model").textContent = `${m.model}${m.random_weights ? " (random weights)" : ""}, ${msg.width}x${msg.height} ` +
      `at ${msg.fps} frames/s${msg.recording ? ", recording" : ""}`;
  } else if (msg.type === "status") {
    S.statuses.push(msg);
    if (msg.state === "resetting") {
      S.episode = msg.episode;
      clearQueue();
      S.playing = false;
      S.stalled = false;
      S.trace = [];
      S.pose = null;
      S.shownChunk = null;
      S.pendingLatency = null;
      setStatus(msg.message || `episode ${msg.episode}: generating the first chunk...`);
    } else if (msg.message) {
      setStatus(msg.message);
    }
  } else if (msg.type === "error") {
    S.errors.push(msg);
    setStatus(`error: ${msg.message}`, true);
  } else if (msg.type === "uploaded") {
    S.uploaded = true;
    const opt = [...$("image").options].find((o) => o.value === "upload");
    opt.disabled = false;
    $("image").value = "upload";
    setStatus(`image uploaded (${msg.width}x${msg.height}); press Reset to start from it`);
  } else if (msg.type === "busy") {
    S.busy = msg;
    setStatus(msg.message, true);
    showBanner(msg.message);
  }
}

function onChunk(buffer) {
  const n = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  if (header.episode !== S.episode) return; // a chunk of an episode the page has left
  const blob = new Blob([new Uint8Array(buffer, 4 + n)], { type: "image/jpeg" });
  const received = performance.now();
  S.decode = S.decode.then(() => createImageBitmap(blob)).then((bitmap) => {
    if (header.episode !== S.episode) { bitmap.close(); return; }
    header.received = received;
    header.decodeMs = performance.now() - received;
    const { poses, ...rest } = header;
    S.chunks.push(rest);
    S.framesReceived += header.frames;
    for (let i = 0; i < header.frames; i++) S.queue.push({ bitmap, i, header });
    // chunk k is encoded while chunk k + 1 is generated: the slower of the two sets the rate
    const g = header.frames / (Math.max(header.step_ms, header.encode_ms) / 1000);
    S.genFps = S.genFps === null || header.chunk === 0 ? g : 0.7 * S.genFps + 0.3 * g;
    if (header.chunk === 0) {
      S.playing = true;
      S.nextDue = performance.now();
      setStatus(`episode ${header.episode} (seed ${header.seed}, ${header.image})`);
    } else {
      adaptRate();
    }
  }).catch((e) => { S.errors.push({ message: `could not decode a chunk: ${e}` }); });
}

function clearQueue() {
  const seen = new Set();
  for (const f of S.queue) if (!seen.has(f.bitmap)) { seen.add(f.bitmap); f.bitmap.close(); }
  S.queue = [];
}

function adaptRate() {
  const slow = S.genFps < S.fps * 0.98;
  S.rate = slow && $("adapt").checked ? Math.max(1, 0.95 * S.genFps) : S.fps;
  if (slow) {
    showBanner(`Generation is slower than real time: ${S.genFps.toFixed(1)} frames/s generated, the model's rate is ` +
      `${S.fps} frames/s; ` + ($("adapt").checked ? `playing at ${S.rate.toFixed(1)} frames/s.` : "playback will pause for frames."));
  } else {
    showBanner("");
  }
}

function showBanner(text) {
  const b = $("banner");
  b.textContent = text;
  b.style.display = text ? "block" : "none";
}

// ---------------------------------------------------------------- playback

function tick(now) {
  requestAnimationFrame(tick);
  if (!S.playing || now < S.nextDue) return;
  const interval = 1000 / S.rate;
  if (S.queue.length === 0) {
    if (!S.stalled) { S.stalled = true; S.stallStart = S.nextDue; }
    return;
  }
  if (S.stalled) {
    S.stalls.push(now - S.stallStart);
    S.stalled = false;
    S.nextDue = now;
  }
  const f = S.queue.shift();
  const { width: w, height: h, grid } = f.header;
  const rows = grid[0];
  const ctx = $("video").getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(f.bitmap, Math.floor(f.i / rows) * w, (f.i % rows) * h, w, h, 0, 0, w, h);
  S.framesShown++;
  S.shownTimes.push(now);
  if (S.shownTimes.length > 64) S.shownTimes.shift();
  S.nextDue = Math.max(S.nextDue + interval, now - interval);
  S.pose = f.header.poses[f.i];
  S.shownChunk = f.header.chunk;
  S.trace.push([S.pose[0], S.pose[1]]);
  if (f.i === 0) onChunkStart(f.header, now);
  if (f.i === f.header.frames - 1) f.bitmap.close();
  drawOverlay();
}

function onChunkStart(header, now) {
  send({ type: "played", episode: header.episode, chunk: header.chunk, buffered_ms: Math.round(S.queue.length * 1000 / S.rate) });
  const p = S.pendingLatency;
  if (p && header.chunk > 0 && header.input_seq >= p.seq) {
    S.latencies.push({ ms: now - p.t, key: p.key, chunk: header.chunk });
    S.pendingLatency = null;
  }
}

// ---------------------------------------------------------------- input

function sendInput() {
  const look = [0, 0];
  for (const code in S.lookKeys) if (S.lookKeys[code]) { const [axis, dir] = LOOK_CODES[code]; look[axis] += dir; }
  send({ type: "input", seq: ++S.seq, keys: S.keys.slice(), look: look.map((v) => Math.max(-1, Math.min(1, v))),
         mouse: S.mouse.map((v) => Math.max(-360, Math.min(360, v))) });
  S.mouse = [0, 0];
}

function inputChanged(key) {
  sendInput();
  if (!S.pendingLatency) S.pendingLatency = { seq: S.seq, t: performance.now(), key };
}

function onKey(ev, down) {
  if (["INPUT", "SELECT", "TEXTAREA"].includes(ev.target.tagName)) return;
  const k = KEY_CODES[ev.code];
  if (k !== undefined && k < S.keys.length) {
    ev.preventDefault();
    if (ev.repeat || S.keys[k] === (down ? 1 : 0)) return;
    S.keys[k] = down ? 1 : 0;
    inputChanged(ev.code);
  } else if (LOOK_CODES[ev.code]) {
    ev.preventDefault();
    if (ev.repeat || !!S.lookKeys[ev.code] === down) return;
    S.lookKeys[ev.code] = down;
    inputChanged(ev.code);
  }
}

function onMouseMove(ev) {
  const video = $("video");
  let dx, dy;
  if (document.pointerLockElement === video) {
    dx = ev.movementX; dy = ev.movementY;
  } else if (S.drag) {
    dx = ev.clientX - S.drag[0]; dy = ev.clientY - S.drag[1];
    S.drag = [ev.clientX, ev.clientY];
  } else {
    return;
  }
  const sens = Math.max(0.01, Math.min(5, parseFloat($("sensitivity").value) || 0.2));
  S.mouse[0] += dy * sens; // down: positive pitch (the release looks down)
  S.mouse[1] += dx * sens; // right: positive yaw
  if (!S.mouseTimer) S.mouseTimer = setTimeout(() => { S.mouseTimer = null; sendInput(); }, 50);
}

function releaseAll() {
  S.keys.fill(0);
  S.lookKeys = {};
  S.drag = null;
  sendInput();
}

function resetEpisode() {
  const seed = $("seed").value.trim();
  send({ type: "reset", image: $("image").value || null, prompt: $("prompt").value.trim() || null,
         seed: seed === "" ? null : Number(seed) });
}

function upload(file) {
  if (!file) return;
  const limit = S.hello ? S.hello.max_upload_bytes : 0;
  if (file.size > limit) { setStatus(`the image has ${file.size} bytes; at most ${limit} are accepted`, true); return; }
  file.arrayBuffer().then((buf) => sendRaw(buf));
}

// ---------------------------------------------------------------- overlay

function drawOverlay() {
  const p = S.pose;
  const lat = S.latencies.map((l) => l.ms);
  const mean = lat.length ? lat.reduce((a, b) => a + b, 0) / lat.length : 0;
  const t = S.shownTimes;
  const shownFps = t.length > 1 ? (1000 * (t.length - 1)) / (t[t.length - 1] - t[0]) : 0;
  const last = S.chunks[S.chunks.length - 1];
  const stallS = S.stalls.reduce((a, b) => a + b, 0) / 1000;
  $("overlay").textContent = [
    `generated ${S.genFps === null ? "-" : S.genFps.toFixed(1)} frames/s (model ${S.fps})`,
    `shown     ${shownFps.toFixed(1)} frames/s`,
    `key->frame ${lat.length ? (lat[lat.length - 1] / 1000).toFixed(2) + " s (mean " + (mean / 1000).toFixed(2) + ")" : "-"}`,
    p ? `x ${p[0].toFixed(0)} y ${p[1].toFixed(0)} z ${p[2].toFixed(0)}` : "",
    p ? `pitch ${p[3].toFixed(1)} yaw ${p[4].toFixed(1)}` : "",
    `chunk ${last ? last.chunk : "-"} episode ${S.episode} stalls ${S.stalls.length} (${stallS.toFixed(1)} s)`,
  ].join("\n");
  drawTrace();
}

function drawTrace() {
  const c = $("trace");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (!S.trace.length) return;
  // top-down: x (forward at yaw 0) up, y (right) to the right
  let [minX, maxX, minY, maxY] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [x, y] of S.trace) { minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y); }
  const span = Math.max(400, maxX - minX, maxY - minY) * 1.15;
  const cx = (minX + maxX) / 2, cy = (minY + maxY) / 2, s = (c.width - 10) / span;
  const at = (x, y) => [c.width / 2 + (y - cy) * s, c.height / 2 - (x - cx) * s];
  ctx.strokeStyle = "#7fc8ff";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  S.trace.forEach(([x, y], i) => { const [u, v] = at(x, y); if (i) ctx.lineTo(u, v); else ctx.moveTo(u, v); });
  ctx.stroke();
  const p = S.pose;
  const [u, v] = at(p[0], p[1]);
  const yaw = (p[4] * Math.PI) / 180;
  ctx.fillStyle = "#ffcc66";
  ctx.beginPath();
  ctx.arc(u, v, 3, 0, 2 * Math.PI);
  ctx.fill();
  ctx.strokeStyle = "#ffcc66";
  ctx.beginPath();
  ctx.moveTo(u, v);
  ctx.lineTo(u + 12 * Math.sin(yaw), v - 12 * Math.cos(yaw));
  ctx.stroke();
}

// ---------------------------------------------------------------- wiring

function stats() {
  const last = S.chunks[S.chunks.length - 1] || null;
  return {
    episode: S.episode, chunks: S.chunks.slice(), framesShown: S.framesShown, framesReceived: S.framesReceived,
    pose: S.pose, latencies: S.latencies.slice(), stalls: S.stalls.slice(), stalledNow: S.stalled,
    errors: S.errors.slice(), statuses: S.statuses.slice(), genFps: S.genFps, rate: S.rate, fps: S.fps,
    last, busy: S.busy, closed: S.closed, playing: S.playing, queued: S.queue.length, shownChunk: S.shownChunk,
  };
}

window.mg3Play = { send, sendRaw, stats, reset: resetEpisode };

document.addEventListener("keydown", (ev) => onKey(ev, true));
document.addEventListener("keyup", (ev) => onKey(ev, false));
document.addEventListener("mousemove", onMouseMove);
document.addEventListener("mouseup", () => { S.drag = null; });
window.addEventListener("blur", releaseAll);
$("video").addEventListener("mousedown", (ev) => {
  S.drag = [ev.clientX, ev.clientY];
  $("video").focus();
  if ($("video").requestPointerLock) {
    try { const r = $("video").requestPointerLock(); if (r && r.catch) r.catch(() => {}); } catch (e) { /* drag instead */ }
  }
});
$("reset").addEventListener("click", resetEpisode);
$("upload").addEventListener("change", (ev) => upload(ev.target.files[0]));
$("adapt").addEventListener("change", adaptRate);
connect();
requestAnimationFrame(tick);
