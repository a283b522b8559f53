// The model and language pickers, and pulling a model that is not downloaded (POST /v1/models/pull).

import { $, SseReader, authHeaders, errorMessage, formatBytes, requestJson, showError } from "./api.js";

// ISO 639-1 codes the server takes as `language`; the first nine are those Mistral validated Voxtral on.
const LANGUAGES = [
  ["en", "English"], ["es", "Spanish"], ["fr", "French"], ["pt", "Portuguese"], ["hi", "Hindi"],
  ["de", "German"], ["nl", "Dutch"], ["it", "Italian"], ["ar", "Arabic"],
  ["zh", "Chinese"], ["ja", "Japanese"], ["ko", "Korean"], ["ru", "Russian"], ["pl", "Polish"],
  ["sv", "Swedish"], ["tr", "Turkish"], ["uk", "Ukrainian"],
];
const MODEL_STORAGE = "voxtral-local.model";
const LANGUAGE_STORAGE = "voxtral-local.language";

let models = new Map(); // id -> the model object of GET /v1/models
let pulled = null; // the model this page just pulled: its download box stays shown, saying so

export function selectedModel() {
  return $("model").value;
}

/** The selected language code, or "" for the model's own detection. */
export function selectedLanguage() {
  return $("language").value;
}

function describe(model) {
  const parts = [model.downloaded ? "downloaded" : "not downloaded", model.loaded ? "loaded" : "not loaded"];
  if (model.realtime) parts.push("live");
  if (model.backend === "vllm") parts.push("on the vLLM upstreams");
  return parts.join(", ");
}

function showState() {
  const model = models.get(selectedModel());
  if (!model) {
    $("model-state").textContent = "";
    $("pull-box").hidden = true;
    return;
  }
  const size = model.size_bytes ? ` · ${formatBytes(model.size_bytes)} on disk` : "";
  const memory = model.memory_bytes ? ` · needs ${formatBytes(model.memory_bytes)} of memory` : "";
  $("model-state").textContent = `${model.id}: ${describe(model)}${size}${memory}`;
  $("pull-box").hidden = (model.downloaded && model.id !== pulled) || model.backend === "vllm";
  $("pull").hidden = model.downloaded;
}

/** On the Microphone tab: select a realtime model (its text streams while you speak) when the selected one
 * is not, and one is served; the picker still takes any model (which then transcribes at each pause). */
export function preferLiveModel() {
  if (models.get(selectedModel())?.realtime) return;
  const live = [...models.values()].find((model) => model.realtime && !model.alias_of);
  if (live) {
    $("model").value = live.id;
    showState();
  }
}

/** Reads GET /v1/models into the picker (served models first, then aliases, each saying its state). */
export async function loadModels() {
  let list;
  try {
    list = await requestJson("GET", "/v1/models");
  } catch (error) {
    $("model-state").textContent = "The model list could not be read.";
    showError(error.message, error.status);
    return;
  }
  const select = $("model");
  const previous = select.value || localStorage.getItem(MODEL_STORAGE);
  models = new Map(list.data.map((model) => [model.id, model]));
  select.replaceChildren();
  const served = list.data.filter((model) => !model.alias_of);
  const aliases = list.data.filter((model) => model.alias_of);
  for (const [label, group] of [["Models", served], ["Aliases", aliases]]) {
    if (!group.length) continue;
    const optgroup = document.createElement("optgroup");
    optgroup.label = label;
    for (const model of group) {
      const option = new Option(`${model.id} (${describe(model)})`, model.id);
      optgroup.append(option);
    }
    select.append(optgroup);
  }
  if (previous && models.has(previous)) select.value = previous;
  showState();
}

function setPullProgress(event) {
  const bar = $("pull-progress");
  if (event.total) {
    bar.max = event.total;
    bar.value = event.completed;
    $("pull-text").textContent =
      `${formatBytes(event.completed)} of ${formatBytes(event.total)} (${event.files_completed}/${event.files_total} files)`;
  } else {
    bar.removeAttribute("value"); // indeterminate until the sizes are known
    $("pull-text").textContent = event.status === "pulling" ? "Starting…" : "Downloading…";
  }
}

/** POST /v1/models/pull for the selected model, its streamed progress on the bar. */
async function pull() {
  const model = selectedModel();
  const button = $("pull");
  button.disabled = true;
  $("pull-text").textContent = "Starting…";
  let failed = null;
  let succeeded = false;
  const reader = new SseReader((data) => {
    if (data === "[DONE]") return;
    const event = JSON.parse(data);
    if (event.error) failed = event.error.message;
    else {
      setPullProgress(event);
      if (event.status === "success") succeeded = true;
    }
  });
  try {
    const response = await fetch("/v1/models/pull", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ model, stream: true }),
    });
    if (!response.ok) throw new Error(errorMessage(response.status, await response.text()));
    const body = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await body.read();
      if (done) break;
      reader.feed(value);
    }
    if (failed) throw new Error(failed);
    if (!succeeded) throw new Error("The download stopped before it finished.");
    $("pull-text").textContent = "Downloaded.";
    pulled = model;
  } catch (error) {
    $("pull-text").textContent = "The download failed.";
    showError(error.message === "Failed to fetch" ? "The server cannot be reached." : error.message);
  } finally {
    button.disabled = false;
    await loadModels();
  }
}

export function setUpModels() {
  const language = $("language");
  language.append(new Option("Detect automatically", ""));
  for (const [code, name] of LANGUAGES) language.append(new Option(`${name} (${code})`, code));
  language.value = localStorage.getItem(LANGUAGE_STORAGE) || "";
  language.addEventListener("change", () => localStorage.setItem(LANGUAGE_STORAGE, language.value));
  $("model").addEventListener("change", () => {
    localStorage.setItem(MODEL_STORAGE, selectedModel());
    pulled = null;
    $("pull-text").textContent = "";
    $("pull-progress").value = 0;
    showState();
  });
  $("refresh").addEventListener("click", loadModels);
  $("pull").addEventListener("click", pull);
}
