// Toronto console: live updates. Listens to the console's server-sent events and, on
// each, re-fetches this page and swaps its live section (at most every 300 ms).
(function () {
  var base = document.body.getAttribute("data-base") || "";
  var state = document.getElementById("live-state");
  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    setTimeout(function () {
      fetch(location.href, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (text !== null) {
            var doc = new DOMParser().parseFromString(text, "text/html");
            var fresh = doc.getElementById("live"), live = document.getElementById("live");
            if (fresh && live) live.innerHTML = fresh.innerHTML;
          }
        })
        .catch(function () {})
        .then(function () { busy = false; if (again) { again = false; refresh(); } });
    }, 300);
  }
  var source = new EventSource(base + "/events");
  source.onopen = function () { if (state) state.textContent = "live: on"; };
  source.onerror = function () { if (state) state.textContent = "live: reconnecting"; };
  source.onmessage = refresh;
})();
