// What every part of the page shares: the API key, requests with it, the error banner, and a reader of
// server-sent events.

const KEY_STORAGE = "voxtral-local.api-key";

export const $ = (id) => document.getElementById(id);

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function saveApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** Headers carrying the key as `Authorization: Bearer`, when one is set. */
export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/** The message of an OpenAI error envelope in `text`, else a line naming the HTTP status. */
export function errorMessage(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) {
    // not JSON: fall through
  }
  if (status === 0) return "The server cannot be reached.";
  return `The server answered ${status}${text ? `: ${text.slice(0, 200)}` : ""}`;
}

/** Shows `message` in the error banner; for a 401 (no key, or a wrong one) it points at the key field. */
export function showError(message, status = 0) {
  $("error-text").textContent =
    status === 401 ? `${message} Enter the server's API key in the field at the top and save it.` : message;
  if (status === 401) $("api-key").focus();
  $("error").hidden = false;
}

export function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

/** fetch with the key; resolves to the parsed JSON body, or throws an Error with the server's message. */
export async function requestJson(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: authHeaders(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (_) {
    throw new Error("The server cannot be reached.");
  }
  const text = await response.text();
  if (!response.ok) {
    const error = new Error(errorMessage(response.status, text));
    error.status = response.status;
    throw error;
  }
  return text ? JSON.parse(text) : null;
}

/**
 * Splits server-sent events text, fed in pieces as it arrives, into events: `onData(payload)` for each
 * `data:` event (the text after "data: "), `onComment(text)` for each comment line (": progress 30.00 ?").
 */
export class SseReader {
  constructor(onData, onComment = () => {}) {
    this.buffer = "";
    this.onData = onData;
    this.onComment = onComment;
  }

  feed(text) {
    this.buffer += text.replace(/\r\n?/g, "\n");
    let end;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) this.onComment(line.slice(1).trim());
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) this.onData(data.join("\n"));
    }
  }
}

/** Offers `text` as a file download named `name`. */
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Copies `text` to the clipboard; falls back to a selected textarea where the Clipboard API is missing. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit > 0 ? 1 : 0)} ${units[unit]}`;
}
