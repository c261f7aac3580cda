/* The live calls page: rows from the page's data, then kept current by the console socket.
   Messages (docs/console.md, "Live calls"): snapshot, call, gone, transcript, stream. */
(function () {
  "use strict";

  var table = document.getElementById("live-calls");
  if (!table) { return; }
  var body = document.getElementById("live-calls-body");
  var empty = document.getElementById("live-empty");
  var status = document.getElementById("live-status");
  var canAct = table.dataset.canAct === "true";
  var columns = table.querySelectorAll("thead th").length;
  var rows = {};  // call id -> {row, transcript, call}
  var clockOffset = 0;  // server time less browser time, so durations do not depend on the browser's clock
  var ENDED_SHOWN_MS = 3000;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function updateEmpty() {
    empty.hidden = Object.keys(rows).length > 0;
  }

  function duration(call) {
    var since = Date.parse(call.answeredAt || call.startedAt);
    if (isNaN(since)) { return ""; }
    var seconds = Math.max(0, Math.floor((Date.now() + clockOffset - since) / 1000));
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
    var mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
  }

  function health(entry) {
    if (!entry.call.stream) { return "—"; }
    var stats = entry.stats;
    if (!stats) { return "open"; }
    return "in " + stats.framesIn + " · out " + stats.framesOut + " · drops " + stats.dropped +
      " · lag " + stats.lagP50Ms + " / " + stats.lagP99Ms + " ms";
  }

  function fill(entry) {
    var call = entry.call, cells = entry.cells;
    cells.number.textContent = call.number || "—";
    cells.direction.textContent = call.direction;
    cells.route.textContent = [call.route || "default route", call.agent || "default agent"].join(" / ");
    cells.state.textContent = call.state;
    cells.carrier.textContent = call.carrier;
    cells.duration.textContent = duration(call);
    cells.duration.title = call.answeredAt ? "since answered" : "since started (not answered yet)";
    cells.health.textContent = health(entry);
  }

  function add(call) {
    var row = el("tr", "call-row");
    row.dataset.callId = call.callId;
    var cells = {};
    ["number", "direction", "route", "state", "carrier", "duration", "health"].forEach(function (name) {
      cells[name] = row.appendChild(el("td", name));
    });
    if (canAct) {
      var actions = row.appendChild(el("td", "actions"));
      if (window.callActions) { window.callActions.render(actions, call.callId); }
    }
    var transcriptRow = el("tr", "call-transcript");
    transcriptRow.dataset.callId = call.callId;
    var cell = transcriptRow.appendChild(el("td"));
    cell.colSpan = columns;
    var list = cell.appendChild(el("ol", "transcript"));
    list.setAttribute("aria-label", "Transcript of the call with " + (call.number || call.callId));
    list.appendChild(el("li", "empty", "Nothing said yet."));
    var entry = {row: row, transcriptRow: transcriptRow, list: list, cells: cells, call: call, stats: null, lines: {}};
    rows[call.callId] = entry;
    // Oldest first, as the server sends them: a new call goes after the ones it started after.
    var before = null;
    Object.keys(rows).forEach(function (id) {
      var other = rows[id];
      if (other !== entry && other.call.startedAt > call.startedAt &&
          (!before || other.call.startedAt < before.call.startedAt)) { before = other; }
    });
    body.insertBefore(row, before ? before.row : null);
    body.insertBefore(transcriptRow, before ? before.row : null);
    return entry;
  }

  function upsert(call) {
    var entry = rows[call.callId];
    if (entry && entry.removing) { clearTimeout(entry.removing); entry.removing = null; entry.row.classList.remove("ended"); }
    if (!entry) { entry = add(call); }
    entry.call = call;
    if (!call.stream) { entry.stats = null; }
    fill(entry);
    updateEmpty();
  }

  function remove(id) {
    var entry = rows[id];
    if (!entry) { return; }
    entry.row.remove();
    entry.transcriptRow.remove();
    delete rows[id];
    updateEmpty();
  }

  function gone(message) {
    var entry = rows[message.callId];
    if (!entry || entry.removing) { return; }
    entry.call.state = message.state;
    entry.call.stream = false;
    fill(entry);
    entry.cells.state.textContent = message.state + (message.endReason && message.endReason !== message.state ? " (" + message.endReason + ")" : "");
    entry.row.classList.add("ended");
    entry.removing = setTimeout(function () { remove(message.callId); }, ENDED_SHOWN_MS);
  }

  function transcript(message) {
    var entry = rows[message.callId];
    if (!entry) { return; }
    var placeholder = entry.list.querySelector("li.empty");
    if (placeholder && message.lines.length) { placeholder.remove(); }
    message.lines.forEach(function (line) {
      if (entry.lines[line.id]) { return; }
      entry.lines[line.id] = true;
      var item = el("li", "line speaker-" + line.speaker);
      item.dataset.lineId = line.id;
      if (line.at) { item.title = new Date(line.at).toLocaleTimeString(); }
      item.appendChild(el("span", "speaker", line.speaker === "bot" ? "Bot" : "Caller"));
      item.appendChild(el("span", "text", line.text));
      entry.list.appendChild(item);
    });
    entry.list.scrollTop = entry.list.scrollHeight;
  }

  function stream(message) {
    var entry = rows[message.callId];
    if (!entry) { return; }
    entry.stats = message.stats;
    entry.call.stream = true;
    entry.cells.health.textContent = health(entry);
  }

  function snapshot(message) {
    if (message.serverTime) { clockOffset = Date.parse(message.serverTime) - Date.now(); }
    var present = {};
    message.calls.forEach(function (call) { present[call.callId] = true; upsert(call); });
    Object.keys(rows).forEach(function (id) { if (!present[id]) { remove(id); } });
    updateEmpty();
  }

  var handlers = {snapshot: snapshot, call: function (m) { upsert(m.call); }, gone: gone, transcript: transcript, stream: stream};
  var retry = 1000;

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + table.dataset.socket);
    socket.onopen = function () { retry = 1000; setStatus("live", "Live: updated as calls change."); };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      var handler = handlers[message.type];
      if (handler) { handler(message); }
    };
    socket.onclose = function (event) {
      if (event.code === 4401) { setStatus("closed", "Your session has ended: log in again to see live calls."); return; }
      if (event.code === 4403) { setStatus("closed", "You may not view calls (calls.view_call)."); return; }
      setStatus("reconnecting", "Connection lost; reconnecting…");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }

  var initial = JSON.parse(document.getElementById("live-calls-data").textContent);
  initial.forEach(upsert);
  updateEmpty();
  setInterval(function () {
    Object.keys(rows).forEach(function (id) {
      var entry = rows[id];
      if (!entry.removing) { entry.cells.duration.textContent = duration(entry.call); }
    });
  }, 1000);
  connect();
}());
