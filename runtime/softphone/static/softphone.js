// The voxline softphone: a Twilio Media Streams client in the browser (no build step, no CDN).
// Microphone → AudioWorklet → 8 kHz μ-law `media` every 20 ms; agent `media` → jitter buffer → speakers; `clear`
// empties the buffer at once; `mark`s are echoed once the audio before them has played. The live panel reads the
// call's event socket (transcript, who is speaking, latency, the end).
"use strict";

(() => {
  const KEY_STORAGE = "voxline.softphone.apiKey";
  const JITTER_MS = 60;
  const RESUME_TIMEOUT_MS = 5000;
  const REASONS = {
    caller_hangup: "you hung up",
    agent_hangup: "the agent hung up",
    transfer: "the call was transferred",
    max_duration: "the call reached its time limit",
    silence_timeout: "no one spoke for too long",
    server_shutdown: "the server shut down",
    error_carrier: "the connection was lost",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    key: $("api-key"), load: $("load-agents"), agent: $("agent"), call: $("call"), hangup: $("hangup"),
    status: $("status"), error: $("error"), transcript: $("transcript"), keypad: $("keypad"),
    caller: $("speaking-caller"), agentPill: $("speaking-agent"),
  };

  // What tests and curious users can read: window.softphone.
  const softphone = (window.softphone = {
    state: "idle", callId: null, endedReason: null,
    stats: { framesSent: 0, mediaReceived: 0, samplesPlayed: 0, marksEchoed: 0, clears: 0, dtmfSent: 0 },
    eventCounts: { transcript: 0, speaking: 0, ended: 0 },
  });

  let call = null; // the live call: {ws, events, ctx, mic, capture, playback, streamSid, seq, chunk, hangingUp, ended}

  // --- μ-law -------------------------------------------------------------------------------------------------

  const ULAW_TABLE = new Float32Array(256);
  for (let i = 0; i < 256; i++) {
    const u = ~i & 0xff;
    const exponent = (u >> 4) & 0x07;
    let sample = (((u & 0x0f) << 3) + 0x84) << exponent;
    sample -= 0x84;
    ULAW_TABLE[i] = ((u & 0x80) ? -sample : sample) / 32768;
  }

  function base64Encode(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s);
  }

  function decodePayload(payload) {
    const raw = atob(payload);
    const pcm = new Float32Array(raw.length);
    for (let i = 0; i < raw.length; i++) pcm[i] = ULAW_TABLE[raw.charCodeAt(i)];
    return pcm;
  }

  // --- page state --------------------------------------------------------------------------------------------

  function setState(state, text) {
    softphone.state = state;
    ui.status.textContent = text;
    const live = state === "live" || state === "connecting";
    ui.call.disabled = live || state === "starting" || !ui.agent.value;
    ui.hangup.disabled = !live;
    ui.agent.disabled = live || state === "starting" || ui.agent.options.length === 0 || !ui.agent.options[0].value;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.textContent = "";
    ui.error.hidden = true;
  }

  function note(text) {
    const row = document.createElement("div");
    row.className = "turn note";
    row.textContent = text;
    ui.transcript.appendChild(row);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function addTurn(ev) {
    const row = document.createElement("div");
    row.className = `turn ${ev.role}${ev.interrupted ? " interrupted" : ""}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = ev.role === "user" ? "You" : ev.role === "assistant" ? "Agent" : "Tool";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = ev.role === "tool" ? `${ev.text}${ev.error ? " (failed)" : ""}` : ev.text || "…";
    row.append(who, text);
    if (ev.interrupted) row.title = "interrupted";
    if (typeof ev.latency_ms === "number") {
      const lat = document.createElement("span");
      lat.className = "latency";
      lat.textContent = `${ev.latency_ms} ms`;
      const parts = ["stt", "llm", "tts"].filter((k) => typeof ev[`${k}_ms`] === "number").map((k) => `${k.toUpperCase()} ${ev[`${k}_ms`]} ms`);
      lat.title = `reply latency${parts.length ? ": " + parts.join(", ") : ""}`;
      row.appendChild(lat);
    }
    ui.transcript.appendChild(row);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function speaking(who, on) {
    (who === "caller" ? ui.caller : ui.agentPill).classList.toggle("on", !!on);
  }

  // --- API ---------------------------------------------------------------------------------------------------

  function apiKey() {
    return ui.key.value.trim();
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ "x-api-key": apiKey() }, options.headers || {});
    let r;
    try {
      r = await fetch(path, Object.assign({}, options, { headers }));
    } catch (err) {
      throw new Error(`Cannot reach the server (${err.message}).`);
    }
    let body = null;
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    if (!r.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${r.status}`;
      if (r.status === 401) throw new Error(`The API key was refused: ${message}.`);
      throw new Error(message);
    }
    return body;
  }

  async function loadAgents() {
    clearError();
    if (!apiKey()) return showError("Enter an API key first.");
    sessionStorage.setItem(KEY_STORAGE, apiKey());
    ui.agent.replaceChildren();
    try {
      const agents = [];
      for (let page = 1; page <= 10; page++) {
        const body = await api(`/api/v1/agents?limit=100&page=${page}`);
        agents.push(...body.data);
        if (!body.pagination || !body.pagination.has_next) break;
      }
      for (const a of agents) {
        const opt = document.createElement("option");
        opt.value = a.id;
        opt.textContent = a.architecture === "text" ? `${a.name} (text agent: cannot take calls)` : a.name;
        opt.disabled = a.architecture === "text";
        ui.agent.appendChild(opt);
      }
      const first = agents.find((a) => a.architecture !== "text");
      if (!first) {
        ui.agent.appendChild(new Option("— no agent can take calls —", ""));
      } else {
        ui.agent.value = (agents.find((a) => a.name === "demo" && a.architecture !== "text") || first).id;
      }
    } catch (err) {
      ui.agent.appendChild(new Option("— load agents first —", ""));
      showError(err.message);
    }
    setState(softphone.state === "live" ? "live" : "idle", ui.status.textContent);
  }

  // --- the call ----------------------------------------------------------------------------------------------

  function micMessage(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError")
      return "Microphone access was refused. Allow this page to use the microphone (the icon in the address bar), then press Call again.";
    if (name === "NotFoundError" || name === "DevicesNotFoundError")
      return "No microphone was found. Connect one and press Call again.";
    if (name === "NotReadableError" || name === "TrackStartError")
      return "The microphone is in use by another application or could not be started.";
    return `The microphone could not be opened: ${(err && err.message) || err}.`;
  }

  async function startCall() {
    clearError();
    if (!apiKey()) return showError("Enter an API key first.");
    const agentId = ui.agent.value;
    if (!agentId) return showError("Pick an agent first (press Load agents).");
    sessionStorage.setItem(KEY_STORAGE, apiKey());
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia)
      return showError("This page cannot use a microphone: open it over https:// (or on http://localhost).");
    setState("starting", "Opening the microphone…");

    // The microphone first: a refusal leaves no call behind.
    let mic;
    try {
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true }, video: false,
      });
    } catch (err) {
      setState("idle", "Idle");
      return showError(micMessage(err));
    }

    const c = (call = { mic, seq: 0, chunk: 0, hangingUp: false, ended: false, streamSid: null });
    try {
      c.ctx = new AudioContext({ latencyHint: "interactive" });
      await c.ctx.audioWorklet.addModule("/softphone/worklet.js");
      // A browser with no audio output (Firefox without a sound device) never resumes: say so, do not hang.
      if (c.ctx.state === "suspended") {
        const stalled = new Promise((_, reject) => setTimeout(() => reject(new Error(
          "no audio output device answered (is a speaker or headset connected?)")), RESUME_TIMEOUT_MS));
        await Promise.race([c.ctx.resume(), stalled]);
      }
      const source = c.ctx.createMediaStreamSource(mic);
      // Below 4 kHz before taking every n-th sample: two low-passes (the worklet interpolates to 8 kHz).
      let node = source;
      for (let i = 0; i < 2; i++) {
        const lp = c.ctx.createBiquadFilter();
        lp.type = "lowpass";
        lp.frequency.value = 3400;
        node.connect(lp);
        node = lp;
      }
      c.capture = new AudioWorkletNode(c.ctx, "voxline-capture", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit" });
      node.connect(c.capture);
      const mute = c.ctx.createGain(); // keeps the capture node pulled, silently
      mute.gain.value = 0;
      c.capture.connect(mute).connect(c.ctx.destination);
      c.playback = new AudioWorkletNode(c.ctx, "voxline-playback", { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { jitterMs: JITTER_MS } });
      c.playback.connect(c.ctx.destination);
      c.playback.port.onmessage = (e) => onPlayback(c, e.data);
      c.capture.port.onmessage = (e) => sendMedia(c, e.data);
    } catch (err) {
      teardown(c);
      setState("idle", "Idle");
      return showError(`Audio could not start in this browser: ${err.message}`);
    }

    setState("starting", "Placing the call…");
    let placed;
    try {
      placed = await api("/api/v1/softphone/calls", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ agent_id: agentId }),
      });
    } catch (err) {
      teardown(c);
      setState("idle", "Idle");
      return showError(`The call could not be placed: ${err.message}`);
    }
    softphone.callId = placed.call_id;
    softphone.endedReason = null;
    ui.transcript.replaceChildren();
    openEvents(c, placed.events_url);
    openStream(c, placed);
  }

  function send(c, message) {
    if (c.ws && c.ws.readyState === WebSocket.OPEN) {
      c.seq += 1;
      c.ws.send(JSON.stringify(Object.assign({ sequenceNumber: String(c.seq) }, message)));
      return true;
    }
    return false;
  }

  function openStream(c, placed) {
    setState("connecting", "Connecting…");
    c.streamSid = "MZ" + Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
    const ws = (c.ws = new WebSocket(placed.stream_url));
    ws.onopen = () => {
      send(c, { event: "connected", protocol: "Call", version: "1.0.0" });
      // No callSid: this leg has none at Twilio, so the server never asks Twilio to hang it up.
      send(c, {
        event: "start", streamSid: c.streamSid,
        start: {
          streamSid: c.streamSid, tracks: ["inbound"],
          mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
          customParameters: placed.parameters,
        },
      });
      c.startedAt = performance.now();
      setState("live", "In call");
    };
    ws.onmessage = (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch (_) { return; }
      if (m.event === "media" && m.media && m.media.payload) {
        softphone.stats.mediaReceived += 1;
        const pcm = decodePayload(m.media.payload);
        c.playback.port.postMessage({ type: "audio", pcm }, [pcm.buffer]);
      } else if (m.event === "clear") {
        softphone.stats.clears += 1;
        c.playback.port.postMessage({ type: "clear" });
      } else if (m.event === "mark" && m.mark && typeof m.mark.name === "string") {
        c.playback.port.postMessage({ type: "mark", name: m.mark.name });
      }
    };
    ws.onclose = (e) => {
      if (c.ended) return;
      if (c.hangingUp) {
        finish(c, "Call ended: you hung up.");
      } else if (softphone.endedReason) {
        finish(c, `Call ended: ${REASONS[softphone.endedReason] || softphone.endedReason}.`);
      } else if (e.code === 1000) {
        // The server ended the call; its reason arrives on the event socket (shown when it does).
        finish(c, "Call ended.");
      } else if (e.code === 1008) {
        finish(c, "Call refused.");
        showError(`The server refused the media stream: ${e.reason || "policy violation"}.`);
      } else {
        finish(c, "Disconnected.");
        showError(`The connection to the server was lost (WebSocket closed with code ${e.code}${e.reason ? ": " + e.reason : ""}). The call has ended.`);
      }
    };
  }

  function openEvents(c, url) {
    let events;
    try {
      events = c.events = new WebSocket(url);
    } catch (err) {
      note(`The live panel could not connect: ${err.message}`);
      return;
    }
    events.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (_) { return; }
      if (ev.type in softphone.eventCounts) softphone.eventCounts[ev.type] += 1;
      if (ev.type === "transcript") addTurn(ev);
      else if (ev.type === "speaking") speaking(ev.who, ev.speaking);
      else if (ev.type === "ended") {
        softphone.endedReason = ev.reason;
        speaking("caller", false);
        speaking("agent", false);
        const text = `Call ended: ${REASONS[ev.reason] || ev.reason}${ev.detail && ev.reason && ev.reason.startsWith("error_") ? ` (${ev.detail})` : ""}.`;
        if (c.ended) setState("ended", text);
        else if (c.ws && c.ws.readyState !== WebSocket.OPEN && c.ws.readyState !== WebSocket.CONNECTING) finish(c, text);
        else c.endText = text;
      }
    };
    events.onclose = (e) => {
      if (!c.ended && !softphone.endedReason && e.code !== 1000)
        note(`The live panel lost its connection (code ${e.code}); the call itself goes on.`);
    };
  }

  function sendMedia(c, frame) {
    if (c.ended || !c.streamSid || !c.ws || c.ws.readyState !== WebSocket.OPEN || softphone.state !== "live") return;
    c.chunk += 1;
    const ok = send(c, {
      event: "media", streamSid: c.streamSid,
      media: { track: "inbound", chunk: String(c.chunk), timestamp: String(Math.round(performance.now() - c.startedAt)), payload: base64Encode(frame) },
    });
    if (ok) softphone.stats.framesSent += 1;
  }

  function onPlayback(c, msg) {
    if (msg.type === "stats") {
      softphone.stats.samplesPlayed = msg.played;
      softphone.stats.bufferedMs = msg.queuedMs;
    } else if (msg.type === "mark") {
      if (send(c, { event: "mark", streamSid: c.streamSid, mark: { name: msg.name } })) softphone.stats.marksEchoed += 1;
    }
  }

  function sendDigit(digit) {
    if (!call || softphone.state !== "live") return;
    if (send(call, { event: "dtmf", streamSid: call.streamSid, dtmf: { track: "inbound_track", digit } })) {
      softphone.stats.dtmfSent += 1;
      note(`You pressed ${digit}`);
    }
  }

  function hangUp() {
    const c = call;
    if (!c || c.ended) return;
    c.hangingUp = true;
    setState("ending", "Hanging up…");
    send(c, { event: "stop", streamSid: c.streamSid, stop: { accountSid: "", callSid: "" } });
    try { c.ws.close(1000, "hang up"); } catch (_) { finish(c, "Call ended: you hung up."); }
  }

  function finish(c, text) {
    if (c.ended) return;
    c.ended = true;
    speaking("caller", false);
    speaking("agent", false);
    setState("ended", c.endText && !c.hangingUp ? c.endText : text);
    teardown(c);
    // The event socket closes itself after `ended`; do not wait on it for long.
    setTimeout(() => { if (c.events && c.events.readyState <= WebSocket.OPEN) c.events.close(1000); }, 5000);
  }

  function teardown(c) {
    if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
    if (c.capture) c.capture.port.postMessage("stop");
    if (c.playback) c.playback.port.postMessage({ type: "stop" });
    if (c.ws && c.ws.readyState <= WebSocket.OPEN) { try { c.ws.close(1000); } catch (_) { /* closed */ } }
    if (c.ctx && c.ctx.state !== "closed") c.ctx.close().catch(() => {});
  }

  // --- wiring ------------------------------------------------------------------------------------------------

  ui.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  ui.key.addEventListener("change", () => sessionStorage.setItem(KEY_STORAGE, apiKey()));
  ui.key.addEventListener("keydown", (e) => { if (e.key === "Enter") loadAgents(); });
  ui.load.addEventListener("click", loadAgents);
  ui.agent.addEventListener("change", () => setState(softphone.state, ui.status.textContent));
  ui.call.addEventListener("click", startCall);
  ui.hangup.addEventListener("click", hangUp);
  ui.keypad.addEventListener("click", (e) => { const d = e.target.dataset && e.target.dataset.digit; if (d) sendDigit(d); });
  document.addEventListener("keydown", (e) => {
    if (softphone.state === "live" && /^[0-9*#]$/.test(e.key) && !(e.target instanceof HTMLInputElement)) sendDigit(e.key);
  });
  window.addEventListener("pagehide", () => hangUp());
  setState("idle", "Idle");
  if (ui.key.value) loadAgents();
})();
