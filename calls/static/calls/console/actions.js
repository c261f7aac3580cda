/* Operator actions on a live call: speak, send DTMF, transfer and end (each of the last two after a
   confirmation), posted to the console's endpoint.

   window.callActions.render(container, callId) builds the widget inside `container`;
   window.callActions.enhance(container) takes over the plain forms a page rendered (they work without
   JavaScript too). Pages that render [data-call-actions] forms are enhanced when they load.
   The endpoint's URL comes from the nearest [data-action-url-template] ("…/{call}/{action}/"), else
   window.callActionsConfig.urlTemplate, else the console's default path.
   After each answer the container gets a "call-action" event: detail {action, ok, status, message}. */
(function () {
  "use strict";

  var DEFAULT_URL_TEMPLATE = "/admin/console/calls/{call}/{action}/";
  var ACTIONS = {
    speak: {field: "text", label: "Message", button: "Speak", busy: "Speaking…", placeholder: "What to say to the caller"},
    dtmf: {field: "digits", label: "Digits", button: "Send DTMF", busy: "Sending digits…", placeholder: "e.g. 1 or 12#",
           pattern: "[0-9*#wWpP,]+", title: "digits, *, #, comma, w, p"},
    transfer: {field: "to", label: "Transfer to", button: "Transfer", busy: "Handing the call over…", optional: true,
               placeholder: "+15550001234 or sip:desk@example.com (empty: the call's transferTo)"},
    end: {field: null, button: "End call", busy: "Ending the call…"}
  };
  var CONFIRM = {
    end: "End this call now? The caller is hung up.",
    transfer: "Hand this call over now? The gateway leaves the call."
  };
  // Actions after which nothing more can be done on the call: the buttons stay off once they succeed.
  var FINAL = {end: true, transfer: true};

  function urlTemplate(container) {
    var holder = container.closest("[data-action-url-template]") || document.querySelector("[data-action-url-template]");
    if (holder) return holder.getAttribute("data-action-url-template");
    if (window.callActionsConfig && window.callActionsConfig.urlTemplate) return window.callActionsConfig.urlTemplate;
    return DEFAULT_URL_TEMPLATE;
  }

  function actionUrl(container, callId, action) {
    return urlTemplate(container).replace("{call}", encodeURIComponent(callId)).replace("{action}", action);
  }

  function csrfToken() {
    var input = document.querySelector("[name=csrfmiddlewaretoken]");
    if (input && input.value) return input.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) {
      if (attributes[name] !== undefined && attributes[name] !== null) node.setAttribute(name, attributes[name]);
    });
    if (text) node.textContent = text;
    return node;
  }

  // The same forms the record page renders on the server, so both look and behave alike.
  function buildForm(container, callId, action) {
    var spec = ACTIONS[action];
    var form = element("form", {method: "post", action: actionUrl(container, callId, action), "class": "call-action-form",
                                "data-call-action-form": action});
    if (spec.field) {
      var id = "call-action-" + action + "-" + callId;
      form.appendChild(element("label", {"for": id}, spec.label));
      form.appendChild(element("input", {type: "text", name: spec.field, id: id, required: spec.optional ? null : "",
                                         autocomplete: "off", placeholder: spec.placeholder, pattern: spec.pattern,
                                         title: spec.title}));
    }
    if (action === "transfer") {
      var mode = element("select", {name: "mode", id: "call-action-transfer-mode-" + callId});
      mode.appendChild(element("option", {value: "cold"}, "Cold: connect now"));
      mode.appendChild(element("option", {value: "warm"}, "Warm: say the summary first"));
      form.appendChild(element("label", {"for": mode.id}, "Mode"));
      form.appendChild(mode);
      var summaryId = "call-action-transfer-summary-" + callId;
      form.appendChild(element("label", {"for": summaryId}, "Summary"));
      form.appendChild(element("input", {type: "text", name: "summary", id: summaryId, autocomplete: "off",
                                         placeholder: "Warm: what the person answering hears first"}));
    }
    form.appendChild(element("button", {type: "submit", "class": "button" + (action === "end" ? " call-action-end" : ""),
                                         "data-call-action": action}, spec.button));
    return form;
  }

  function render(container, callId) {
    callId = String(callId);
    if (container.callActions && container.getAttribute("data-call-id") === callId) return container.callActions;
    container.textContent = "";
    container.classList.add("call-actions");
    container.setAttribute("data-call-actions", "");
    container.setAttribute("data-call-id", callId);
    Object.keys(ACTIONS).forEach(function (action) { container.appendChild(buildForm(container, callId, action)); });
    container.appendChild(element("p", {"class": "action-result", role: "status", "aria-live": "polite"}));
    return enhance(container);
  }

  function enhance(container) {
    if (container.callActions) return container.callActions;
    var result = container.querySelector(".action-result");
    if (!result) {
      result = element("p", {"class": "action-result", role: "status", "aria-live": "polite"});
      container.appendChild(result);
    }
    // The plain forms ask for a ticked box before ending; here window.confirm asks instead.
    container.querySelectorAll("[data-confirm-box]").forEach(function (box) {
      var label = box.closest("label") || box;
      box.required = false;
      label.hidden = true;
    });
    container.classList.add("call-actions-enhanced");
    var state = {container: container, result: result, busy: false, over: false};
    container.querySelectorAll("form[data-call-action-form]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        submit(state, form, form.getAttribute("data-call-action-form"));
      });
    });
    container.callActions = {container: container};
    return container.callActions;
  }

  function setBusy(state, busy) {
    state.busy = busy;
    state.container.classList.toggle("call-actions-busy", busy);
    state.container.querySelectorAll("button, input, select").forEach(function (control) {
      control.disabled = busy || state.over;
    });
  }

  function show(state, message, kind) {
    state.result.textContent = message;
    state.result.className = "action-result action-result-" + kind;
  }

  function submit(state, form, action) {
    if (state.busy || state.over) return;
    if (CONFIRM[action] && !window.confirm(CONFIRM[action])) return;
    var body = new FormData(form);
    body.delete("confirm");
    show(state, ACTIONS[action].busy, "pending");
    setBusy(state, true);
    var status = 0;
    fetch(form.action, {
      method: "POST", body: body, credentials: "same-origin",
      headers: {"Accept": "application/json", "X-CSRFToken": csrfToken(), "X-Requested-With": "XMLHttpRequest"}
    }).then(function (response) {
      status = response.status;
      var type = response.headers.get("Content-Type") || "";
      return type.indexOf("application/json") >= 0 ? response.json() : null;
    }).then(function (answer) {
      var ok = Boolean(answer && answer.ok);
      var message = answer && typeof answer.message === "string" ? answer.message
        : "The gateway answered HTTP " + status + "; reload the page (the session may have expired).";
      // Nothing more can be done on a call that is over: the buttons stay off.
      // A 409 says the call is over, unless it names something the carrier cannot do (callLive).
      if ((ok && FINAL[action]) || (status === 409 && !(answer && answer.callLive))) state.over = true;
      if (ok && form.elements.namedItem(ACTIONS[action].field || "")) form.elements.namedItem(ACTIONS[action].field).value = "";
      show(state, message, ok ? "ok" : "error");
      report(state, action, ok, status, message);
    }).catch(function (error) {
      var message = "The request did not reach the gateway: " + error.message;
      show(state, message, "error");
      report(state, action, false, status, message);
    }).then(function () {
      setBusy(state, false);
    });
  }

  function report(state, action, ok, status, message) {
    state.container.dispatchEvent(new CustomEvent("call-action", {
      bubbles: true, detail: {action: action, ok: ok, status: status, message: message}
    }));
  }

  window.callActions = {render: render, enhance: enhance};

  function enhanceAll() {
    document.querySelectorAll("[data-call-actions]").forEach(function (container) {
      if (container.querySelector("form[data-call-action-form]")) enhance(container);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", enhanceAll);
  else enhanceAll();
})();
