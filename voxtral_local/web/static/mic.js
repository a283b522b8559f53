// Live transcription from the microphone: getUserMedia -> an AudioWorklet at 24 kHz -> PCM16 mono, base64,
// in `input_audio_buffer.append` events over the WebSocket /v1/realtime?intent=transcription (OpenAI's
// realtime transcription events; the server's voice activity detection cuts utterances at pauses).

import { $, apiKey, clearError, copyText, showError } from "./api.js";
import { loadModels, selectedLanguage, selectedModel } from "./models.js";

const SAMPLE_RATE = 24_000;
const SEND_EVERY = SAMPLE_RATE / 10; // samples: one append per 100 ms
const STOP_WAIT_MS = 10_000; // how long a stopped recording waits for its last utterance's text

let session = null;

/** Linear-interpolation resampling of a stream of blocks from `from` Hz to `to` Hz (used only where the
 * browser cannot capture at 24 kHz itself: Firefox connects a microphone only to a context at its own rate). */
class Resampler {
  constructor(from, to) {
    this.step = from / to;
    this.t = 0; // position of the next output sample, in input samples from the current block's start
    this.last = 0; // the previous block's last sample (position -1)
  }

  push(input) {
    if (this.step === 1) return input;
    const out = [];
    let t = this.t;
    while (t < input.length - 1) {
      const i = Math.floor(t);
      const a = i < 0 ? this.last : input[i];
      out.push(a + (input[i + 1] - a) * (t - i));
      t += this.step;
    }
    this.t = t - input.length;
    this.last = input[input.length - 1];
    return Float32Array.from(out);
  }
}

function setState(text) {
  $("mic-state").textContent = text;
}

function base64Pcm16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i += 1) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    pcm[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  const bytes = new Uint8Array(pcm.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/** The utterance element for a conversation item, made on its first delta. */
function utterance(itemId) {
  let element = document.querySelector(`#utterances li[data-item="${CSS.escape(itemId)}"]`);
  if (!element) {
    element = document.createElement("li");
    element.dataset.item = itemId;
    element.className = "pending";
    $("utterances").append(element);
  }
  return element;
}

function liveText() {
  return [...$("utterances").children].map((li) => li.textContent).join("\n");
}

class Session {
  constructor() {
    this.pending = new Set(); // items committed whose `.completed` has not come yet
    this.speaking = false;
    this.stopping = false;
    this.queued = [];
    this.queuedLength = 0;
  }

  async start() {
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      throw new Error("The microphone needs a secure page: open it as http://localhost or over https.");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    let source;
    try {
      this.context = new AudioContext({ sampleRate: SAMPLE_RATE });
      source = this.context.createMediaStreamSource(this.stream);
    } catch (_) {
      if (this.context) this.context.close();
      this.context = new AudioContext(); // the device's rate: resampled to 24 kHz here
      source = this.context.createMediaStreamSource(this.stream);
    }
    this.resampler = new Resampler(this.context.sampleRate, SAMPLE_RATE);
    await this.context.audioWorklet.addModule("/web/mic-worklet.js");
    this.socket = await this.connect();
    this.node = new AudioWorkletNode(this.context, "mic-capture");
    this.node.port.onmessage = (event) => this.capture(event.data);
    source.connect(this.node);
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/realtime?intent=transcription`;
    const key = apiKey();
    // A browser cannot set Authorization on a WebSocket: the key goes as a subprotocol, OpenAI's convention.
    const socket = key ? new WebSocket(url, ["realtime", `openai-insecure-api-key.${key}`]) : new WebSocket(url);
    socket.onmessage = (event) => this.receive(JSON.parse(event.data));
    return new Promise((resolve, reject) => {
      socket.onopen = () => {
        const transcription = { model: selectedModel() };
        if (selectedLanguage()) transcription.language = selectedLanguage();
        socket.send(
          JSON.stringify({
            type: "transcription_session.update",
            session: {
              input_audio_format: "pcm16",
              input_audio_transcription: transcription,
              turn_detection: { type: "server_vad" },
            },
          }),
        );
        socket.onclose = (event) => this.closed(event);
        resolve(socket);
      };
      socket.onerror = () => {};
      socket.onclose = (event) =>
        reject(new Error(event.reason || "The live transcription connection was refused (check the API key)."));
    });
  }

  capture(block) {
    const samples = this.resampler.push(block);
    if (!samples.length) return;
    let sum = 0;
    for (const s of samples) sum += s * s;
    $("mic-level").value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
    if (this.stopping || this.socket.readyState !== WebSocket.OPEN) return;
    this.queued.push(samples);
    this.queuedLength += samples.length;
    if (this.queuedLength < SEND_EVERY) return;
    const chunk = new Float32Array(this.queuedLength);
    let offset = 0;
    for (const part of this.queued) {
      chunk.set(part, offset);
      offset += part.length;
    }
    this.queued = [];
    this.queuedLength = 0;
    this.socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64Pcm16(chunk) }));
  }

  receive(event) {
    switch (event.type) {
      case "transcription_session.created":
      case "transcription_session.updated":
      case "session.created":
      case "session.updated":
        if (!this.stopping) setState("Listening");
        break;
      case "input_audio_buffer.speech_started":
        this.speaking = true;
        setState("Hearing speech");
        break;
      case "input_audio_buffer.speech_stopped":
        this.speaking = false;
        if (!this.stopping) setState("Listening");
        break;
      case "input_audio_buffer.committed":
        this.pending.add(event.item_id);
        break;
      case "conversation.item.input_audio_transcription.delta": {
        const element = utterance(event.item_id);
        element.textContent += event.delta;
        $("copy-live").disabled = false;
        break;
      }
      case "conversation.item.input_audio_transcription.completed": {
        const element = utterance(event.item_id);
        element.textContent = event.transcript;
        element.className = "done";
        $("copy-live").disabled = false;
        this.pending.delete(event.item_id);
        if (!this.heard) loadModels(); // the model is loaded by now
        this.heard = true;
        if (this.stopping && !this.pending.size) this.socket.close(1000);
        break;
      }
      case "error":
        this.failed = true;
        showError(event.error && event.error.message ? event.error.message : "The server reported an error.");
        break;
      default:
        break;
    }
  }

  closed(event) {
    if (event.code !== 1000 && !this.stopping && !this.failed) {  // else the error event said why
      showError(event.reason || `The live transcription connection closed (code ${event.code}).`);
    }
    this.release();
    finish();
  }

  /** Stops capturing; the last utterance (if speech was going on) is committed and its text awaited. */
  stop() {
    this.stopping = true;
    this.release();
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return finish();
    if (this.speaking) this.socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
    if (!this.speaking && !this.pending.size) return this.socket.close(1000);
    setState("Finishing the last utterance…");
    setTimeout(() => this.socket.readyState === WebSocket.OPEN && this.socket.close(1000), STOP_WAIT_MS);
  }

  release() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.context && this.context.state !== "closed") this.context.close();
    $("mic-level").value = 0;
  }
}

function finish() {
  if (session && session.heard) loadModels();
  session = null;
  setState("Not recording");
  const button = $("record");
  button.textContent = "Start recording";
  button.setAttribute("aria-pressed", "false");
  button.disabled = false;
}

async function toggle() {
  const button = $("record");
  if (session) {
    button.disabled = true;
    session.stop();
    return;
  }
  clearError();
  session = new Session();
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
  setState("Connecting…");
  try {
    await session.start();
  } catch (error) {
    const denied = error.name === "NotAllowedError";
    showError(denied ? "Microphone access was denied." : error.message);
    session.release();
    finish();
  }
}

export function setUpMicrophone() {
  $("record").addEventListener("click", toggle);
  $("copy-live").addEventListener("click", () => copyText(liveText()).catch((e) => showError(e.message)));
  $("clear-live").addEventListener("click", () => {
    $("utterances").replaceChildren();
    $("copy-live").disabled = true;
  });
}
