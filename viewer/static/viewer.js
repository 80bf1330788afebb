// Keeps the page's live part up to date: the server streams it again, as HTML it
// has escaped, each time it changes (server-sent events, from the page's own address).
// EventSource reconnects by itself after an error; the server polls the database
// in any case, so a page misses nothing it would have seen with a reload.
"use strict";

(function () {
  const live = document.getElementById("live");
  const state = document.getElementById("live-state");
  // The page's own address: after an operation (a POST) the browser shows another.
  const address = live && live.dataset.liveUrl;
  if (!address || !window.EventSource) {
    return;
  }
  const source = new EventSource(address);
  function show(text, name) {
    state.textContent = text;
    state.className = "live-state " + name;
  }
  source.addEventListener("open", function () { show("live", "on"); });
  source.addEventListener("update", function (event) {
    live.innerHTML = event.data;
    show("live", "on");
  });
  source.addEventListener("offline", function (event) { show(event.data, "off"); });
  source.addEventListener("error", function () { show("reconnecting", "off"); });
})();
