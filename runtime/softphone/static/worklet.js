// AudioWorklet processors of the voxline softphone (no build step; runs in Chromium and Firefox).
//   voxline-capture:  microphone (already low-passed below 4 kHz by the page) → 8 kHz μ-law, 160-byte (20 ms) frames
//   voxline-playback: 8 kHz PCM from the agent → the context's rate, through a small jitter buffer, with marks
"use strict";

const LINE_RATE = 8000;
const FRAME_SAMPLES = 160; // 20 ms at 8 kHz

function linearToUlaw(sample) {
  // G.711 μ-law, as Twilio's media payloads are.
  const BIAS = 0x84;
  const CLIP = 32635;
  const sign = sample < 0 ? 0x80 : 0;
  if (sign) sample = -sample;
  if (sample > CLIP) sample = CLIP;
  sample += BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (sample & mask) === 0 && exponent > 0; exponent--, mask >>= 1) { /* find the segment */ }
  const mantissa = (sample >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / LINE_RATE; // input samples per output sample
    this.t = 0; // position of the next output sample, in input samples from the start of the current block
    this.last = 0; // the previous block's last sample (position -1)
    this.frame = new Uint8Array(FRAME_SAMPLES);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (e) => { if (e.data === "stop") this.running = false; };
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0] && inputs[0][0];
    if (!input || input.length === 0) return true;
    const n = input.length;
    let t = this.t;
    while (t < n - 1) {
      const i = Math.floor(t);
      const frac = t - i;
      const a = i < 0 ? this.last : input[i];
      const b = input[i + 1];
      let s = a + (b - a) * frac;
      s = s > 1 ? 1 : s < -1 ? -1 : s;
      this.frame[this.filled++] = linearToUlaw(Math.round(s * 32767));
      if (this.filled === FRAME_SAMPLES) {
        this.port.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Uint8Array(FRAME_SAMPLES);
        this.filled = 0;
      }
      t += this.step;
    }
    this.t = t - n;
    this.last = input[n - 1];
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.prebuffer = Math.round(((opts.jitterMs || 60) / 1000) * LINE_RATE); // 8 kHz samples held before playing
    this.queue = []; // Float32Array chunks (8 kHz) and {mark: name} entries, in order
    this.head = 0; // read position in queue[0] when it is audio
    this.queued = 0; // 8 kHz samples queued
    this.buffering = true;
    this.waitingSince = null;
    this.step = LINE_RATE / sampleRate;
    this.frac = 0;
    this.a = 0;
    this.b = 0;
    this.played = 0; // output samples made from agent audio (not fill)
    this.sinceStats = 0;
    this.running = true;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "audio") {
      this.queue.push(msg.pcm);
      this.queued += msg.pcm.length;
    } else if (msg.type === "mark") {
      this.queue.push({ mark: msg.name });
      if (this.queued === 0) this.drainDue(); // nothing left to play before it: due now
    } else if (msg.type === "clear") {
      // Drop everything unplayed at once (barge-in); every pending mark is echoed, as Twilio does on clear.
      for (const item of this.queue) if (!(item instanceof Float32Array)) this.port.postMessage({ type: "mark", name: item.mark });
      this.queue = [];
      this.head = 0;
      this.queued = 0;
      this.a = this.b = 0;
      this.buffering = true;
    } else if (msg.type === "stop") {
      this.running = false;
    }
  }

  // Echo the marks at the head of the queue that no unplayed audio precedes.
  drainDue() {
    while (this.queue.length) {
      const item = this.queue[0];
      if (item instanceof Float32Array) {
        if (this.head < item.length) return;
        this.queue.shift();
        this.head = 0;
      } else {
        this.queue.shift();
        this.port.postMessage({ type: "mark", name: item.mark });
      }
    }
  }

  // The next 8 kHz sample, or null when the buffer has run dry. Marks reached on the way are echoed.
  pull() {
    while (this.queue.length) {
      const item = this.queue[0];
      if (!(item instanceof Float32Array)) {
        this.queue.shift();
        this.port.postMessage({ type: "mark", name: item.mark });
        continue;
      }
      if (this.head < item.length) {
        this.queued--;
        return item[this.head++];
      }
      this.queue.shift();
      this.head = 0;
    }
    return null;
  }

  process(_inputs, outputs) {
    if (!this.running) return false;
    const out = outputs[0][0];
    if (this.buffering) {
      this.drainDue();
      // Play once the buffer holds its target, or once the audio in it has waited that long (a short last word).
      if (this.queued === 0) this.waitingSince = null;
      else if (this.waitingSince === null) this.waitingSince = currentTime;
      if (this.queued > 0 && (this.queued >= this.prebuffer || currentTime - this.waitingSince >= this.prebuffer / LINE_RATE)) {
        this.buffering = false;
        this.waitingSince = null;
      }
    }
    for (let k = 0; k < out.length; k++) {
      if (this.buffering) { out[k] = 0; continue; }
      out[k] = this.a + (this.b - this.a) * this.frac;
      this.played++;
      this.frac += this.step;
      while (this.frac >= 1) {
        this.frac -= 1;
        const next = this.pull();
        if (next === null) { this.buffering = true; this.a = this.b = 0; this.frac = 0; break; }
        this.a = this.b;
        this.b = next;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceStats += out.length;
    if (this.sinceStats >= sampleRate / 10) {
      this.sinceStats = 0;
      this.port.postMessage({ type: "stats", played: this.played, queuedMs: Math.round((this.queued / LINE_RATE) * 1000) });
    }
    return true;
  }
}

registerProcessor("voxline-capture", Capture);
registerProcessor("voxline-playback", Playback);
