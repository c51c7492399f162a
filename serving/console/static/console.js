// The console's only script: keep the customer's live part (basket, journeys, activity) fresh
// by asking the server every 700 ms; swap it only when it changed and never while the person
// is typing or tabbing inside it, so focus is not lost.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.liveUrl) { return; }
  var url = live.dataset.liveUrl;
  var last = null;
  var busy = false;
  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        if (html !== last && !live.contains(document.activeElement)) {
          live.innerHTML = html;
          last = html;
        }
      })
      .catch(function () { /* the server restarting: the next tick retries */ })
      .then(function () { busy = false; });
  }
  setInterval(tick, 700);
  tick();
})();
