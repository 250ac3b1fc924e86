// speechkit serve demo page: microphone -> AudioWorklet (resampled to 16 kHz, 16-bit PCM,
// 100 ms frames) -> WebSocket (protocol: docs/serve.md). Three modes: /asr -> live partial text,
// final segments, latency; /vc (the reference voice first: a preset, or an uploaded file decoded
// and resampled here, sent as one 16-bit frame) -> converted 16-bit frames, played as they come,
// first-audio time and latency, the whole conversion to replay at the end; /tts (no microphone:
// the prompt voice as /vc's reference, then the typed text) -> speech frames, played as they
// come, first-audio time, the whole speech to replay at the end. URL options: ?seconds=N stops
// after N s of audio were sent; ?autostart=1 starts without a click; ?mode=vc|tts;
// ?reference=NAME; ?prompt=NAME; ?text=... . document.body.dataset.state is idle | connecting |
// streaming | finishing | done | error, for tests to wait on; document.body.dataset.mode is
// asr | vc | tts.
"use strict";

const RATE = 16000; // what we send: the worklet resamples to this
const FRAME_SAMPLES = RATE / 10; // 100 ms per WebSocket frame
const MAX_REFERENCE_S = 8; // an uploaded reference is cut to its middle 8 s: one frame under max_frame_bytes
const PLAY_AHEAD_S = 0.05; // a frame that arrives late starts this far ahead: small gaps, no clicks

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const limitSeconds = parseFloat(params.get("seconds") || "");
const limitSamples = Number.isFinite(limitSeconds) && limitSeconds > 0 ? Math.round(limitSeconds * RATE) : Infinity;

let session = null; // the one running session, or null
let player = null; // the AudioContext converted audio plays on, made at the first Start (a user gesture)

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) $("status-text").textContent = text;
  const running = state === "connecting" || state === "streaming" || state === "finishing";
  $("start").disabled = running;
  $("stop").disabled = !(state === "connecting" || state === "streaming");
  for (const el of document.querySelectorAll('input[name="mode"], #vc-reference, #vc-file, #tts-prompt, #tts-file, #tts-text')) {
    el.disabled = running || (el.name === "mode" && el.dataset.unavailable === "1");
  }
}

function mode() {
  return document.body.dataset.mode;
}

function setMode(m) {
  document.body.dataset.mode = m;
  $(`mode-${m}`).checked = true;
  $("vc-file").hidden = !(m === "vc" && $("vc-reference").value === "upload");
  $("tts-file").hidden = !(m === "tts" && $("tts-prompt").value === "upload");
  $("start").textContent = m === "tts" ? "Speak" : "Start";
  if (document.body.dataset.state === "idle") {
    $("status-text").textContent = m === "tts" ? "idle — choose a voice, type, press Speak" : "idle — press Start and allow the microphone";
  }
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
  const u = new URL(mode(), location.href);
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
    const modes = h.modes || ["asr"];
    for (const m of ["asr", "vc", "tts"]) {
      const input = $(`mode-${m}`);
      input.dataset.unavailable = modes.includes(m) ? "0" : "1";
      input.disabled = !modes.includes(m);
      input.parentElement.title = modes.includes(m) ? "" : `this server does not serve /${m}`;
    }
    const select = $("vc-reference");
    for (const name of (h.vc && h.vc.references) || []) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      select.insertBefore(opt, select.querySelector('option[value="upload"]'));
    }
    const asked = params.get("reference");
    if (asked && [...select.options].some((o) => o.value === asked)) select.value = asked;
    else if (h.vc && h.vc.references && h.vc.references.length) select.value = h.vc.references[0];
    const prompts = $("tts-prompt");
    for (const name of (h.tts && h.tts.prompts) || []) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      prompts.insertBefore(opt, prompts.querySelector('option[value="upload"]'));
    }
    const prompt = params.get("prompt");
    if (prompt && [...prompts.options].some((o) => o.value === prompt)) prompts.value = prompt;
    else if (h.tts && h.tts.prompts && h.tts.prompts.length) prompts.value = h.tts.prompts[0];
    if (h.tts && h.tts.max_text_chars) $("tts-text").maxLength = h.tts.max_text_chars;
    const wanted = params.get("mode") || mode();
    setMode(modes.includes(wanted) ? wanted : modes[0]);
  } catch (e) {
    $("model-name").textContent = "(no /health)";
  }
}

// an uploaded recording -> 16 kHz mono 16-bit PCM (its middle MAX_REFERENCE_S seconds)
async function referencePcm(file) {
  const ctx = new OfflineAudioContext(1, 1, RATE); // decodeAudioData resamples to the context's rate
  const audio = await ctx.decodeAudioData(await file.arrayBuffer());
  const n = Math.min(audio.length, MAX_REFERENCE_S * RATE);
  const at = (audio.length - n) >> 1;
  const pcm = new Int16Array(n);
  for (let i = 0; i < n; i++) {
    let v = 0;
    for (let c = 0; c < audio.numberOfChannels; c++) v += audio.getChannelData(c)[at + i];
    v = Math.max(-1, Math.min(1, v / audio.numberOfChannels));
    pcm[i] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
  }
  return { pcm, seconds: audio.duration };
}

// 16-bit PCM -> played on `player` right after what was scheduled before it (`at`: the player
// time the previous frame ends; a frame that comes late starts PLAY_AHEAD_S from now); returns
// the player time this one ends
// an audio frame from the server (/vc or /tts): time the first one from `sentAt` (when given),
// count it on the `receivedId` element, and play it right after the previous one
function receiveFrame(player, pcm, firstId, receivedId, sentAt) {
  if (!player.outChunks.length && sentAt !== undefined) {
    const ms = performance.now() - sentAt;
    $(firstId).textContent = fmtMs(ms);
    $(firstId).dataset.ms = ms.toFixed(1);
  }
  player.outChunks.push(pcm);
  player.outSamples += pcm.length;
  const el = $(receivedId);
  el.textContent = (player.outSamples / player.outRate).toFixed(1) + " s";
  el.dataset.samples = String(player.outSamples);
  el.dataset.frames = String(player.outChunks.length);
  player.playAt = schedule(pcm, player.outRate, player.playAt);
  el.dataset.scheduled = String(Number(el.dataset.scheduled || 0) + 1);
}

function schedule(pcm, rate, at) {
  const audio = player.createBuffer(1, pcm.length, rate);
  const ch = audio.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = player.createBufferSource();
  src.buffer = audio;
  src.connect(player.destination);
  const start = Math.max(at, player.currentTime + PLAY_AHEAD_S);
  src.start(start);
  return start + audio.duration;
}

// 16-bit mono PCM chunks -> a WAV file
function wavBlob(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * n, true);
  let at = 44;
  for (const c of chunks) for (let i = 0; i < c.length; i++, at += 2) view.setInt16(at, c[i], true);
  return new Blob([view], { type: "audio/wav" });
}

class Session {
  constructor(mode) {
    this.mode = mode; // "asr" | "vc"
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
    this.outRate = RATE; // vc: the converted audio's rate (from `ready`)
    this.outChunks = []; // vc: every converted frame, Int16Array
    this.outSamples = 0;
    this.playAt = 0; // vc: when (player time) the next converted frame starts
  }

  async start() {
    setState("connecting", `connecting to ${wsUrl()} …`);
    for (const id of ["segments", "partial-text", "final-text"]) $(id).textContent = "";
    $("latency").textContent = "–";
    $("result-count").textContent = "0";
    $("audio-sent").textContent = "0.0 s";
    $("clock").textContent = "0.0 s";
    for (const [id, text] of [["first-audio", "–"], ["audio-received", "0.0 s"],
      ["vc-summary", "(the whole conversion appears here when it is done)"]]) $(id).textContent = text;
    delete $("first-audio").dataset.ms;
    for (const k of ["samples", "frames", "scheduled"]) $("audio-received").dataset[k] = "0";
    $("vc-audio").hidden = true;
    $("vc-audio").removeAttribute("src");

    const start = { type: "start", sample_rate: RATE, format: "pcm16" };
    let reference = null; // vc: the uploaded reference's PCM
    if (this.mode === "vc") {
      start.mode = "vc";
      start.reference = $("vc-reference").value;
      if (start.reference === "upload") {
        const file = $("vc-file").files[0];
        if (!file) return this.fail("choose a recording of the target voice (or a preset)");
        try {
          reference = await referencePcm(file);
        } catch (err) {
          return this.fail(`${file.name}: cannot decode this audio file (${err && err.message ? err.message : err})`);
        }
        if (this !== session) return;
        showModel({ reference: `${file.name} (${reference.seconds.toFixed(1)} s)` });
      } else {
        showModel({ reference: start.reference });
      }
      if (player.state !== "running") player.resume().catch(() => {});
    }

    const ws = new WebSocket(wsUrl());
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      ws.send(JSON.stringify(start));
      if (reference) ws.send(reference.pcm.buffer);
    };
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

  // vc: one converted frame: play it right after the previous one, count it, note its latency
  onAudio(buf) {
    const pcm = new Int16Array(buf);
    if (!pcm.length) return;
    receiveFrame(this, pcm, "first-audio", "audio-received", this.sendLog.length ? this.sendLog[0][1] : undefined);
    this.noteLatency({ type: "audio", end: this.outSamples / this.outRate }); // output sample k is input sample k
  }

  onMessage(e) {
    if (typeof e.data !== "string") return this.onAudio(e.data);
    let msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    switch (msg.type) {
      case "ready": {
        this.ready = true;
        if (msg.output_rate) this.outRate = msg.output_rate;
        showModel({ protocol: msg.protocol, model_rate: `${msg.model_rate} Hz`, chunk_ms: `${msg.chunk_ms} ms`,
          latency_ms: msg.latency_ms === undefined ? undefined : `${msg.latency_ms} ms`,
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
        if (this.mode === "vc") {
          const summary = `${Number(msg.audio_seconds).toFixed(2)} s in → ${Number(msg.output_seconds).toFixed(2)} s converted`;
          $("vc-summary").textContent = summary;
          $("vc-summary").dataset.outputSeconds = String(msg.output_seconds);
          $("vc-summary").dataset.audioSeconds = String(msg.audio_seconds);
          $("vc-audio").src = URL.createObjectURL(wavBlob(this.outChunks, this.outRate));
          $("vc-audio").hidden = false;
          if (!this.failed) setState("done", `done — ${summary}`);
          break;
        }
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
    if (!this.ws && session === this) session = null; // failed before connecting: no close event will come
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
    setState("finishing", this.mode === "vc" ? "finishing — converting the rest …" : "finishing — decoding the rest …");
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

// /tts: the prompt voice, the typed text as one message, `end`; speech frames played as they come
class TtsSession {
  constructor() {
    this.mode = "tts";
    this.ws = null;
    this.ready = false;
    this.doneMsg = null;
    this.errorMsg = null;
    this.failed = false;
    this.aborted = false;
    this.tSent = NaN; // performance.now() when the text was sent
    this.outRate = RATE; // from `ready`
    this.outChunks = []; // every speech frame, Int16Array
    this.outSamples = 0;
    this.playAt = 0;
  }

  async start() {
    for (const [id, text] of [["tts-first-audio", "–"], ["tts-received", "0.0 s"], ["tts-rtf", "–"],
      ["tts-summary", "(the whole speech appears here when it is done)"]]) $(id).textContent = text;
    delete $("tts-first-audio").dataset.ms;
    for (const k of ["samples", "frames", "scheduled"]) $("tts-received").dataset[k] = "0";
    for (const k of ["audioSeconds", "firstAudioMs"]) delete $("tts-summary").dataset[k];
    $("tts-audio").hidden = true;
    $("tts-audio").removeAttribute("src");
    const text = $("tts-text").value.trim();
    if (!text) return this.fail("type some text to speak");
    const start = { type: "start", mode: "tts", prompt: $("tts-prompt").value };
    let prompt = null;
    if (start.prompt === "upload") {
      const file = $("tts-file").files[0];
      if (!file) return this.fail("choose a recording of the prompt voice (or a preset)");
      setState("connecting", `reading ${file.name} …`);
      try {
        prompt = await referencePcm(file);
      } catch (err) {
        return this.fail(`${file.name}: cannot decode this audio file (${err && err.message ? err.message : err})`);
      }
      if (this !== session) return;
      Object.assign(start, { sample_rate: RATE, format: "pcm16" });
      showModel({ prompt: `${file.name} (${prompt.seconds.toFixed(1)} s)` });
    } else {
      showModel({ prompt: start.prompt });
    }
    if (player.state !== "running") player.resume().catch(() => {});

    setState("connecting", `connecting to ${wsUrl()} …`);
    const ws = new WebSocket(wsUrl());
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      ws.send(JSON.stringify(start));
      if (prompt) ws.send(prompt.pcm.buffer);
      ws.send(JSON.stringify({ type: "text", text }));
      this.tSent = performance.now();
      ws.send(JSON.stringify({ type: "end" }));
    };
    ws.onmessage = (e) => this.onMessage(e);
    ws.onclose = (e) => this.onClose(e);
    ws.onerror = () => {}; // the close event that follows says more
  }

  onAudio(buf) {
    const pcm = new Int16Array(buf);
    if (!pcm.length) return;
    receiveFrame(this, pcm, "tts-first-audio", "tts-received", this.tSent);
  }

  onMessage(e) {
    if (typeof e.data !== "string") return this.onAudio(e.data);
    let msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    if (msg.type === "ready") {
      this.ready = true;
      this.outRate = msg.output_rate || RATE;
      showModel({ protocol: msg.protocol, model_rate: `${msg.model_rate} Hz`, max_text_chars: msg.max_text_chars,
        max_stream_seconds: `${msg.max_stream_seconds} s` });
      setState("streaming", "speaking — the speech plays as it is made");
    } else if (msg.type === "done") {
      this.doneMsg = msg;
      const secs = Number(msg.audio_seconds);
      const summary = `${secs.toFixed(2)} s of speech, first audio after ${fmtMs(msg.first_audio_ms || 0)} (server)`;
      $("tts-summary").textContent = summary;
      $("tts-summary").dataset.audioSeconds = String(msg.audio_seconds);
      $("tts-summary").dataset.firstAudioMs = String(msg.first_audio_ms);
      if (secs > 0) $("tts-rtf").textContent = (Number(msg.compute_seconds) / secs).toFixed(2);
      $("tts-audio").src = URL.createObjectURL(wavBlob(this.outChunks, this.outRate));
      $("tts-audio").hidden = false;
      if (!this.failed) setState("done", `done — ${summary}`);
    } else if (msg.type === "error") {
      this.errorMsg = msg;
      this.fail(`server error ${msg.code}: ${msg.reason}`);
    }
  }

  onClose(e) {
    const why = `connection closed (code ${e.code}${e.reason ? ": " + e.reason : ""})`;
    if (this.aborted) {
      setState("idle", `stopped — ${why}`);
    } else if (this.errorMsg || this.failed || (this.doneMsg && e.code === 1000)) {
      $("status-text").textContent += ` — ${why}`;
    } else {
      this.fail(this.ready ? why : `could not speak: ${why}`);
    }
    if (session === this) session = null;
    setState(document.body.dataset.state); // refresh the buttons
  }

  fail(text) {
    this.failed = true;
    setState("error", text);
    if (!this.ws && session === this) session = null; // failed before connecting: no close event will come
    if (this.ws && this.ws.readyState <= WebSocket.OPEN && !this.errorMsg) this.ws.close();
  }

  // Stop: hang up; the server stops synthesising for this connection
  stop() {
    this.aborted = true;
    if (this.ws) this.ws.close(1000);
    else if (session === this) session = null;
  }
}

$("start").addEventListener("click", () => {
  if (session) return;
  if (mode() !== "asr" && !player) player = new AudioContext(); // made inside the click: allowed to play
  session = mode() === "tts" ? new TtsSession() : new Session(mode());
  window.speechkitPlayer = player;
  window.speechkitSession = session; // for debugging and tests
  session.start();
});
$("stop").addEventListener("click", () => { if (session) session.stop(true); });
for (const m of ["asr", "vc", "tts"]) $(`mode-${m}`).addEventListener("change", () => setMode(m));
$("vc-reference").addEventListener("change", () => setMode(mode()));
$("tts-prompt").addEventListener("change", () => setMode(mode()));
if (params.get("text")) $("tts-text").value = params.get("text");

setState("idle");
loadHealth().then(() => { if (params.get("autostart") === "1") $("start").click(); });
