// AudioWorklet of the speechkit serve demo: microphone samples at the AudioContext's rate (any
// rate: 44.1 kHz, 48 kHz, 96 kHz, ...) -> band-limited resampling to 16 kHz -> 16-bit PCM frames
// of `frameSamples` samples (100 ms), posted to the main thread as transferable ArrayBuffers.
//
// The resampler is a windowed-sinc interpolator (Kaiser window, beta 8) whose cutoff sits below
// the output Nyquist (-6 dB at 0.46 x 16 kHz = 7.36 kHz, stopband from ~8 kHz), so it is the anti-aliasing
// low-pass and the fractional-delay interpolator in one: for every output sample at input
// position t it sums x[k] * h(t - k) over the 2*half input samples around t. The kernel is
// tabulated once (TABLE_RES points per input sample, linear interpolation between them).
//
// Messages from the main thread: {cmd: "flush"} -> pads with zeros, emits what is left (a last,
// shorter frame) and answers {type: "flushed"}.
// Messages to the main thread: {type: "frame", pcm: ArrayBuffer, peak, rms} and {type: "flushed"}.

const TABLE_RES = 256;
const ZERO_CROSSINGS = 32; // per side, in output-rate samples
const KAISER_BETA = 8.0;

function besselI0(x) {
  let sum = 1, term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 50; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < 1e-12 * sum) break;
  }
  return sum;
}

class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate; // input samples per output sample
    const down = Math.max(1, this.step);
    this.cutoff = 0.46 / down; // cycles per input sample: 0.92 x the lower of the two Nyquists
    this.half = Math.ceil(ZERO_CROSSINGS * down); // kernel half-width in input samples
    const n = this.half * TABLE_RES + 2;
    this.table = new Float32Array(n);
    const i0b = besselI0(KAISER_BETA);
    for (let i = 0; i < n; i++) {
      const d = i / TABLE_RES; // distance in input samples
      const r = d / this.half;
      const win = r >= 1 ? 0 : besselI0(KAISER_BETA * Math.sqrt(1 - r * r)) / i0b;
      const a = 2 * this.cutoff * d;
      const sinc = d === 0 ? 1 : Math.sin(Math.PI * a) / (Math.PI * a);
      this.table[i] = 2 * this.cutoff * sinc * win;
    }
    // history: `half` zeros before the first sample, so the first output is at input position 0
    this.buf = new Float32Array(4096);
    this.len = this.half;
    this.pos = this.half; // input position (in this.buf) of the next output sample
  }

  kernel(d) {
    const x = Math.abs(d) * TABLE_RES;
    const i = x | 0;
    if (i >= this.table.length - 1) return 0;
    const f = x - i;
    return this.table[i] * (1 - f) + this.table[i + 1] * f;
  }

  push(input, out) {
    // append input
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    // every output whose kernel support lies inside what we have
    const half = this.half, buf = this.buf;
    while (Math.floor(this.pos) + half < this.len) {
      const c = Math.floor(this.pos);
      let acc = 0;
      for (let k = c - half + 1; k <= c + half; k++) acc += buf[k] * this.kernel(this.pos - k);
      out.push(acc);
      this.pos += this.step;
    }
    // drop input no output needs any more
    const keep = Math.floor(this.pos) - half + 1;
    if (keep > 0) {
      buf.copyWithin(0, keep, this.len);
      this.len -= keep;
      this.pos -= keep;
    }
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.targetRate || 16000;
    this.frameSamples = opts.frameSamples || Math.round(this.outRate / 10);
    this.resampler = new Resampler(sampleRate, this.outRate);
    this.inputSamples = 0;
    this.outputSamples = 0;
    this.pending = [];
    this.scratch = [];
    this.port.onmessage = (e) => {
      if (e.data && e.data.cmd === "flush") this.flush();
    };
  }

  // samples of output owed for the input so far (rounded down)
  owed() {
    return Math.floor((this.inputSamples * this.outRate) / sampleRate);
  }

  emit(samples) {
    const pcm = new Int16Array(samples.length);
    let peak = 0, sq = 0;
    for (let i = 0; i < samples.length; i++) {
      const v = Math.max(-1, Math.min(1, samples[i]));
      const a = Math.abs(v);
      if (a > peak) peak = a;
      sq += v * v;
      pcm[i] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
    }
    this.outputSamples += samples.length;
    const rms = samples.length ? Math.sqrt(sq / samples.length) : 0;
    this.port.postMessage({ type: "frame", pcm: pcm.buffer, peak, rms }, [pcm.buffer]);
  }

  drain(final) {
    while (this.pending.length >= this.frameSamples) {
      this.emit(this.pending.splice(0, this.frameSamples));
    }
    if (final && this.pending.length) this.emit(this.pending.splice(0));
  }

  flush() {
    const out = [];
    this.resampler.push(new Float32Array(this.resampler.half + 2), out);
    // keep exactly as many outputs as the real input owes
    const room = this.owed() - (this.outputSamples + this.pending.length);
    for (let i = 0; i < Math.min(room, out.length); i++) this.pending.push(out[i]);
    this.drain(true);
    this.port.postMessage({ type: "flushed", samples: this.outputSamples });
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0 && input[0].length > 0) {
      let mono = input[0];
      if (input.length > 1) { // mix down, should the browser give us more than one channel
        mono = new Float32Array(input[0].length);
        for (const ch of input) for (let i = 0; i < mono.length; i++) mono[i] += ch[i] / input.length;
      }
      this.inputSamples += mono.length;
      const out = this.scratch;
      out.length = 0;
      this.resampler.push(mono, out);
      for (let i = 0; i < out.length; i++) this.pending.push(out[i]);
      this.drain(false);
    }
    return true;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
