// Keeps the page's live part up to date: the server streams it again, as HTML it
// has escaped, each time it changes (server-sent events, from the page's own address).
// EventSource reconnects by itself after an error; the server polls the database
// in any case, so a page misses nothing it would have seen with a reload.
"use strict";

(function () {
  const live = document.getElementById("live");
  const state = document.getElementById("live-state");
  const offline = document.getElementById("offline");
  // The page's own address: after an operation (a POST) the browser shows another.
  const address = live && live.dataset.liveUrl;
  if (!address || !window.EventSource) {
    return;
  }
  // A page that could not be read (no database, no tables yet) loads again once it can.
  const reloadWhenLive = "reloadWhenLive" in live.dataset;
  let source = null;
  let updatedAt = new Date();

  function show(text, name) {
    state.textContent = text;
    state.className = "live-state " + name;
  }

  // The part is replaced whole: the inputs and outputs a reader has opened stay open.
  function detailsKey(details) {
    const event = details.closest("[data-event]");
    const summary = details.querySelector("summary");
    return (event ? event.dataset.event : "") + "/" + (summary ? summary.textContent : "");
  }

  function update(html) {
    const opened = new Set(Array.from(live.querySelectorAll("details[open]"), detailsKey));
    live.innerHTML = html;
    live.querySelectorAll("details").forEach(function (details) {
      details.open = opened.has(detailsKey(details));
    });
    updatedAt = new Date();
  }

  function connect() {
    source = new EventSource(address);
    source.addEventListener("open", function () { show("live", "on"); });
    source.addEventListener("update", function (event) {
      if (reloadWhenLive) {
        window.location.reload();
        return;
      }
      update(event.data);
      offline.hidden = true;
      show("live", "on");
    });
    source.addEventListener("offline", function (event) {
      show("offline", "off");
      if (!reloadWhenLive) {
        offline.textContent =
          event.data + " (the page below is as it was at " + updatedAt.toLocaleTimeString() + ")";
        offline.hidden = false;
      }
    });
    source.addEventListener("error", function () { show("reconnecting", "off"); });
  }

  // A browser keeps at most six connections open to one server, and each live page
  // holds one: a seventh tab of the viewer would never load. So a hidden tab lets go
  // of its stream, and streams again (the part as it is by then) once shown.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden && source) {
      source.close();
      source = null;
      show("paused while hidden", "");
    } else if (!document.hidden && !source) {
      connect();
    }
  });
  if (!document.hidden) {
    connect();
  }
})();
