// Transcribing a file: one streamed POST /v1/audio/transcriptions over XMLHttpRequest (upload progress, the
// transcript as it streams, the `: progress` comments), whose done event carries the segments
// (timestamp_granularities[]=segment), so .srt and .vtt are written here without transcribing again.

import { $, SseReader, authHeaders, clearError, copyText, download, errorMessage, showError } from "./api.js";
import { loadModels, selectedLanguage, selectedModel } from "./models.js";

let request = null; // the XMLHttpRequest in flight
let result = null; // { text, segments } of the last finished transcription
let baseName = "transcript";

// Subtitle cues as the server writes them (responses/transcription.py): each line stripped, blank lines
// dropped, NUL as U+FFFD, "-->" as "->"; in WebVTT "&", "<", ">" as character references.
function cueLines(text) {
  return text
    .split(/\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/)
    .map((line) => line.replaceAll("\0", "\ufffd").trim())
    .filter((line) => line)
    .map((line) => line.replace(/-{2,}>/g, "->"));
}

function timestamp(seconds, separator) {
  let millis = Math.round(seconds * 1000);
  const hours = Math.floor(millis / 3_600_000);
  millis -= hours * 3_600_000;
  const minutes = Math.floor(millis / 60_000);
  millis -= minutes * 60_000;
  const secs = Math.floor(millis / 1000);
  millis -= secs * 1000;
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(hours)}:${pad(minutes)}:${pad(secs)}${separator}${pad(millis, 3)}`;
}

export function toSrt(segments) {
  const cues = segments.map((s) => [s, cueLines(s.text)]).filter(([, lines]) => lines.length);
  return cues
    .map(([s, lines], i) => `${i + 1}\n${timestamp(s.start, ",")} --> ${timestamp(s.end, ",")}\n${lines.join("\n")}\n\n`)
    .join("");
}

export function toVtt(segments) {
  const escape = (line) => line.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
  const cues = segments
    .map((s) => [s, cueLines(s.text)])
    .filter(([, lines]) => lines.length)
    .map(([s, lines]) => `${timestamp(s.start, ".")} --> ${timestamp(s.end, ".")}\n${lines.map(escape).join("\n")}\n\n`);
  return `WEBVTT\n\n${cues.join("")}`;
}

function setBar(id, textId, fraction, text) {
  const bar = $(id);
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = Math.round(Math.min(1, fraction) * 100);
  $(textId).textContent = text;
}

function setResultButtons(enabled) {
  for (const id of ["copy", "download-txt", "download-srt", "download-vtt"]) $(id).disabled = !enabled;
}

function setBusy(busy) {
  $("transcribe").disabled = busy || !$("file").files.length;
  $("cancel-upload").hidden = !busy;
  $("file").disabled = busy;
  $("transcript").setAttribute("aria-busy", String(busy)); // read out once complete, not token by token
}

function transcribe(file) {
  clearError();
  result = null;
  setResultButtons(false);
  $("transcript").textContent = "";
  $("copy-text").textContent = "";
  baseName = file.name.replace(/\.[^.]*$/, "") || "transcript";
  setBar("upload-progress", "upload-text", 0, "0%");
  setBar("work-progress", "work-text", 0, "waiting for the upload");
  setBusy(true);

  const form = new FormData();
  form.append("file", file);
  form.append("model", selectedModel());
  if (selectedLanguage()) form.append("language", selectedLanguage());
  form.append("stream", "true");
  form.append("timestamp_granularities[]", "segment");

  const xhr = (request = new XMLHttpRequest());
  let seen = 0;
  let failure = null;
  const parts = [];
  const sse = new SseReader(
    (data) => {
      const event = JSON.parse(data);
      if (event.error) failure = event.error.message;
      else if (event.type === "transcript.text.delta") {
        parts.push(event.delta);
        $("transcript").textContent = parts.join("");
      } else if (event.type === "transcript.text.done") {
        result = { text: event.text, segments: event.segments || [] };
        $("transcript").textContent = event.text;
      }
    },
    (comment) => {
      const match = /^progress ([\d.]+) ([\d.]+|\?)$/.exec(comment);
      if (!match) return;
      const done = Number(match[1]);
      const total = match[2] === "?" ? null : Number(match[2]);
      if (total) setBar("work-progress", "work-text", done / total, `${done.toFixed(0)} of ${total.toFixed(0)} s`);
      else setBar("work-progress", "work-text", null, `${done.toFixed(0)} s done`);
    },
  );
  const readNew = () => {
    if (xhr.status !== 200) return;
    const text = xhr.responseText;
    sse.feed(text.slice(seen));
    seen = text.length;
  };
  xhr.open("POST", "/v1/audio/transcriptions");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    const fraction = event.loaded / event.total;
    setBar("upload-progress", "upload-text", fraction, `${Math.round(fraction * 100)}%`);
  });
  xhr.upload.addEventListener("load", () => {
    setBar("upload-progress", "upload-text", 1, "100%");
    setBar("work-progress", "work-text", null, "transcribing…");
  });
  xhr.addEventListener("progress", readNew);
  xhr.addEventListener("loadend", () => {
    request = null;
    setBusy(false);
    loadModels(); // the model is loaded now (or failed to be)
    if (xhr.status === 0) {
      if (!xhr.aborted) showError("The server cannot be reached.");
      setBar("work-progress", "work-text", 0, xhr.aborted ? "stopped" : "failed");
      return;
    }
    if (xhr.status !== 200) {
      setBar("work-progress", "work-text", 0, "failed");
      showError(errorMessage(xhr.status, xhr.responseText), xhr.status);
      return;
    }
    readNew();
    if (failure || !result) {
      setBar("work-progress", "work-text", 0, "failed");
      showError(failure || "The transcription ended before it finished.");
      return;
    }
    setBar("work-progress", "work-text", 1, "done");
    setResultButtons(true);
  });
  xhr.send(form);
}

function chooseFile(file) {
  $("drop-text").textContent = file ? `${file.name} (${Math.round(file.size / 1024)} KB)` : "Choose a file";
  setBusy(false);
}

export function setUpUpload() {
  const input = $("file");
  input.addEventListener("change", () => chooseFile(input.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (!event.dataTransfer.files.length) return;
    input.files = event.dataTransfer.files;
    chooseFile(input.files[0]);
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.files.length) transcribe(input.files[0]);
  });
  $("cancel-upload").addEventListener("click", () => {
    if (!request) return;
    request.aborted = true;
    request.abort(); // the server stops generating for a client that leaves
  });
  $("copy").addEventListener("click", async () => {
    try {
      await copyText(result.text);
      $("copy-text").textContent = "Copied.";
    } catch (error) {
      showError(`Copying failed: ${error.message}`);
    }
  });
  const plain = "text/plain;charset=utf-8";
  $("download-txt").addEventListener("click", () => download(`${baseName}.txt`, `${result.text}\n`, plain));
  $("download-srt").addEventListener("click", () => download(`${baseName}.srt`, toSrt(result.segments), plain));
  $("download-vtt").addEventListener("click", () =>
    download(`${baseName}.vtt`, toVtt(result.segments), "text/vtt;charset=utf-8"),
  );
}
