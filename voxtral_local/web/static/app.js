// The page's entry point: the API key field, the tabs, and the parts in models.js, upload.js and mic.js.

import { $, apiKey, clearError, saveApiKey } from "./api.js";
import { setUpMicrophone } from "./mic.js";
import { loadModels, preferLiveModel, setUpModels } from "./models.js";
import { setUpUpload } from "./upload.js";

function setUpTabs() {
  const tabs = [$("tab-file"), $("tab-mic")];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (tab.id === "tab-mic") preferLiveModel();
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
      const next = tabs[(tabs.indexOf(tab) + 1) % tabs.length];
      select(next);
      next.focus();
    });
  }
}

function setUpKey() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveApiKey($("api-key").value.trim());
    clearError();
    loadModels();
  });
  $("error-close").addEventListener("click", clearError);
}

$("server").textContent = location.origin;
setUpKey();
setUpTabs();
setUpModels();
setUpUpload();
setUpMicrophone();
loadModels();
