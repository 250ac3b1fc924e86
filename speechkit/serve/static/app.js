// speechkit serve demo page: microphone -> AudioWorklet (resampled to 16 kHz, 16-bit PCM,
// 100 ms frames) -> WebSocket /asr (protocol: docs/serve.md) -> live partial text, final
// segments, latency. URL options: ?seconds=N stops after N s of audio were sent; ?autostart=1
// starts without a click. document.body.dataset.state is idle | connecting | streaming |
// finishing | done | error, for tests to wait on.
"use strict";

const RATE = 16000; // what we send: the worklet resamples to this
const FRAME_SAMPLES = RATE / 10; // 100 ms per WebSocket frame

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const limitSeconds = parseFloat(params.get("seconds") || "");
const limitSamples = Number.isFinite(limitSeconds) && limitSeconds > 0 ? Math.round(limitSeconds * RATE) : Infinity;

let session = null; // the one running session, or null

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) $("status-text").textContent = text;
  const running = state === "connecting" || state === "streaming" || state === "finishing";
  $("start").disabled = running;
  $("stop").disabled = !(state === "connecting" || state === "streaming");
}

function fmtMs(ms) {
  return `${Math.round(ms)} ms`;
}

function median(xs) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function wsUrl() {
  const u = new URL("asr", location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  u.search = "";
  return u.href;
}

function showModel(info) {
  const dl = $("model-info");
  for (const [k, v] of Object.entries(info)) {
    if (v === undefined || v === null) continue;
    let dd = dl.querySelector(`dd[data-key="${k}"]`);
    if (!dd) {
      const item = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = k.replace(/_/g, " ");
      dd = document.createElement("dd");
      dd.dataset.key = k;
      item.append(dt, dd);
      dl.append(item);
    }
    dd.textContent = String(v);
  }
}

async function loadHealth() {
  try {
    const r = await fetch(new URL("health", location.href), { cache: "no-store" });
    const h = await r.json();
    if (h.model) $("model-name").textContent = h.model;
  } catch (e) {
    $("model-name").textContent = "(no /health)";
  }
}

class Session {
  constructor() {
    this.ws = null;
    this.ctx = null;
    this.stream = null;
    this.node = null;
    this.ready = false;
    this.ended = false; // `end` sent
    this.doneMsg = null;
    this.errorMsg = null;
    this.queue = []; // frames captured before `ready`
    this.sent = 0; // samples sent
    this.sendLog = []; // [samples sent after a frame, performance.now() when it was sent]
    this.latencies = [];
    this.results = 0;
    this.partialSegment = -1;
    this.flushed = null;
    this.aborted = false;
    this.failed = false; // the error state is set and stays
    this.log = []; // every result: type, end, audio sent then, latency
  }

  async start() {
    setState("connecting", `connecting to ${wsUrl()} …`);
    for (const id of ["segments", "partial-text", "final-text"]) $(id).textContent = "";
    $("latency").textContent = "–";
    $("result-count").textContent = "0";
    $("audio-sent").textContent = "0.0 s";
    $("clock").textContent = "0.0 s";

    const ws = new WebSocket(wsUrl());
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: RATE, format: "pcm16" }));
    ws.onmessage = (e) => this.onMessage(e);
    ws.onclose = (e) => this.onClose(e);
    ws.onerror = () => {}; // the close event that follows says more

    try {
      // the microphone starts at once: frames before `ready` wait in this.queue
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      if (this !== session || this.ended) return this.releaseAudio();
      this.ctx = new AudioContext();
      await this.ctx.audioWorklet.addModule(new URL("capture-worklet.js", location.href));
      const src = this.ctx.createMediaStreamSource(this.stream);
      this.node = new AudioWorkletNode(this.ctx, "capture-processor", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], channelCount: 1, channelCountMode: "explicit",
        processorOptions: { targetRate: RATE, frameSamples: FRAME_SAMPLES },
      });
      this.node.port.onmessage = (e) => this.onWorklet(e.data);
      src.connect(this.node);
      this.node.connect(this.ctx.destination); // the node outputs silence; this keeps it pulled
      if (this.ctx.state !== "running") await this.ctx.resume();
      showModel({ microphone: `${this.ctx.sampleRate} Hz → ${RATE} Hz` });
    } catch (err) {
      this.fail(`microphone: ${err && err.message ? err.message : err}`);
    }
  }

  onWorklet(msg) {
    if (msg.type === "frame") {
      this.meter(msg.rms);
      if (this.ended) return;
      if (!this.ready) this.queue.push(msg.pcm);
      else this.send(msg.pcm);
    } else if (msg.type === "flushed" && this.flushed) {
      this.flushed();
    }
  }

  send(buf) {
    if (this.ended || this.ws.readyState !== WebSocket.OPEN) return;
    let pcm = buf;
    const room = limitSamples - this.sent;
    if (pcm.byteLength / 2 > room) pcm = pcm.slice(0, room * 2);
    if (pcm.byteLength) {
      this.ws.send(pcm);
      this.sent += pcm.byteLength / 2;
      this.sendLog.push([this.sent, performance.now()]);
      const secs = (this.sent / RATE).toFixed(1) + " s";
      $("audio-sent").textContent = secs;
      $("clock").textContent = secs;
    }
    if (this.sent >= limitSamples) this.stop(false);
  }

  meter(rms) {
    const db = 20 * Math.log10(rms + 1e-9);
    const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
    $("level").style.width = pct.toFixed(0) + "%";
  }

  // the send time of the sample at `seconds` of stream audio
  sentAt(seconds) {
    const pos = Math.round(seconds * RATE);
    const log = this.sendLog;
    if (!log.length || pos <= 0) return NaN;
    let lo = 0, hi = log.length - 1;
    if (pos > log[hi][0]) return log[hi][1];
    while (lo < hi) { // first frame whose end reaches pos
      const mid = (lo + hi) >> 1;
      if (log[mid][0] >= pos) hi = mid; else lo = mid + 1;
    }
    return log[lo][1];
  }

  noteLatency(msg) {
    const t = this.sentAt(msg.end);
    this.log.push({ type: msg.type, end: msg.end, sent: this.sent / RATE, ms: performance.now() - t });
    if (!Number.isFinite(t)) return;
    const ms = performance.now() - t;
    this.latencies.push(ms);
    const el = $("latency");
    el.textContent = `${fmtMs(ms)} · ${fmtMs(median(this.latencies))}`;
    el.dataset.lastMs = ms.toFixed(1);
    el.dataset.medianMs = median(this.latencies).toFixed(1);
  }

  onMessage(e) {
    if (typeof e.data !== "string") return;
    let msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    switch (msg.type) {
      case "ready": {
        this.ready = true;
        showModel({ protocol: msg.protocol, model_rate: `${msg.model_rate} Hz`, chunk_ms: `${msg.chunk_ms} ms`,
          max_stream_seconds: `${msg.max_stream_seconds} s`, idle_timeout: `${msg.idle_timeout} s`,
          max_frame_bytes: msg.max_frame_bytes });
        if (!this.ended) setState("streaming", "streaming — speak now" + (limitSamples < Infinity ? ` (stops after ${limitSeconds} s)` : ""));
        const q = this.queue;
        this.queue = [];
        for (const buf of q) this.send(buf);
        break;
      }
      case "partial":
        this.results++;
        this.partialSegment = msg.segment;
        $("partial-text").textContent = msg.text;
        this.noteLatency(msg);
        break;
      case "final": {
        this.results++;
        if (msg.text) {
          const div = document.createElement("div");
          div.className = "seg";
          const t = document.createElement("span");
          t.className = "t";
          t.textContent = `${msg.start.toFixed(1)}–${msg.end.toFixed(1)} s`;
          div.append(t, document.createTextNode(msg.text));
          $("segments").append(div);
        }
        if (msg.segment >= this.partialSegment) $("partial-text").textContent = "";
        this.noteLatency(msg);
        break;
      }
      case "done":
        this.doneMsg = msg;
        $("final-text").textContent = msg.text;
        $("partial-text").textContent = "";
        if (!this.failed) setState("done", `done — ${Number(msg.audio_seconds).toFixed(2)} s of audio decoded`);
        break;
      case "error":
        this.errorMsg = msg;
        this.fail(`server error ${msg.code}: ${msg.reason}`);
        break;
    }
    $("result-count").textContent = String(this.results);
  }

  onClose(e) {
    this.releaseAudio();
    const why = `connection closed (code ${e.code}${e.reason ? ": " + e.reason : ""})`;
    if (this.aborted) {
      setState("idle", `stopped before the server was ready — ${why}`);
    } else if (this.errorMsg || this.failed || (this.doneMsg && e.code === 1000)) {
      $("status-text").textContent += ` — ${why}`;
    } else {
      this.fail(this.ready ? why : `could not stream: ${why}`);
    }
    if (session === this) session = null;
    setState(document.body.dataset.state); // refresh the buttons
  }

  fail(text) {
    this.failed = true;
    setState("error", text);
    this.releaseAudio();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN && !this.errorMsg) {
      if (this.ws.readyState === WebSocket.OPEN && this.ready && !this.ended) {
        this.ended = true;
        this.ws.send(JSON.stringify({ type: "end" }));
      } else {
        this.ws.close();
      }
    }
  }

  // Stop: flush the worklet (when the user stopped; an automatic stop at ?seconds is exact),
  // stop the microphone, send `end`, wait for `done`.
  async stop(flush = true) {
    if (this.ended) return;
    if (!this.ready) { // nothing sent yet: give up the connection
      this.ended = this.aborted = true;
      this.releaseAudio();
      this.ws.close(1000);
      setState("idle", "stopped before the server was ready");
      return;
    }
    setState("finishing", "finishing — decoding the rest …");
    if (flush && this.node) {
      await Promise.race([new Promise((res) => { this.flushed = res; this.node.port.postMessage({ cmd: "flush" }); }),
        new Promise((res) => setTimeout(res, 500))]);
    }
    this.ended = true;
    this.releaseAudio();
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
    $("level").style.width = "0%";
  }

  releaseAudio() {
    if (this.stream) { for (const t of this.stream.getTracks()) t.stop(); this.stream = null; }
    if (this.node) { this.node.port.onmessage = null; this.node.disconnect(); this.node = null; }
    if (this.ctx) { this.ctx.close().catch(() => {}); this.ctx = null; }
  }
}

$("start").addEventListener("click", () => {
  if (session) return;
  session = new Session();
  window.speechkitSession = session; // for debugging and tests
  session.start();
});
$("stop").addEventListener("click", () => { if (session) session.stop(true); });

setState("idle");
loadHealth();
if (params.get("autostart") === "1") $("start").click();
