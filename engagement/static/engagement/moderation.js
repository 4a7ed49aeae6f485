/* Keyboard moderation for the queue (Post changelist), a post's page and the one-at-a-time view.
   j/k: next/previous, a: approve, r: reject (asks why), f: flag (asks why), o: open, x: tick, ?: help.
   Decisions are POSTed to /admin/engagement/post/<id>/moderate/ (engagement.moderation does the rest). */
(function () {
  "use strict";

  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function say(text) {
    var status = document.querySelector(".moderation-status");
    if (status) { status.textContent = text; }
  }

  function askReason(state, label) {
    var dialog = document.getElementById("reason-dialog");
    return new Promise(function (resolve) {
      if (!dialog || typeof dialog.showModal !== "function") { resolve(null); return; }
      var form = dialog.querySelector("form");
      dialog.querySelector(".reason-target").textContent = "(" + state + " " + label + ")";
      dialog.querySelector("#reason-note").value = "";
      function onKey(event) {
        if (event.target && event.target.id === "reason-note") { return; }
        var n = parseInt(event.key, 10);
        var radios = dialog.querySelectorAll("input[name=reason]");
        if (n >= 1 && n <= radios.length) {
          radios[n - 1].checked = true;
          event.preventDefault();
        }
      }
      dialog.addEventListener("keydown", onKey);
      dialog.addEventListener("close", function onClose() {
        dialog.removeEventListener("close", onClose);
        dialog.removeEventListener("keydown", onKey);
        if (dialog.returnValue !== "ok") { resolve(null); return; }
        var chosen = form.querySelector("input[name=reason]:checked");
        resolve({ reason: chosen ? chosen.value : "other", note: dialog.querySelector("#reason-note").value });
      });
      dialog.returnValue = "";
      dialog.showModal();
      var first = dialog.querySelector("input[name=reason]:checked");
      if (first) { first.focus(); }
    });
  }

  function decide(keys, postId, state, label) {
    var ask = state === "approved" ? Promise.resolve({ reason: "ok", note: "" }) : askReason(state, label);
    return ask.then(function (choice) {
      if (!choice) { return null; }
      var body = new FormData();
      body.append("state", state);
      body.append("reason", choice.reason);
      body.append("note", choice.note);
      var url = keys.dataset.moderateUrl.replace("/0/", "/" + postId + "/");
      return fetch(url, { method: "POST", body: body, credentials: "same-origin",
                          headers: { "X-CSRFToken": csrfToken(), "Accept": "application/json" } })
        .then(function (response) {
          return response.json().then(function (data) {
            if (!response.ok) { throw new Error(data.error ? JSON.stringify(data.error) : response.statusText); }
            return data;
          });
        })
        .then(function (data) {
          say("#" + data.id + " is " + data.status + (data.changed ? "" : " (unchanged)"));
          return data;
        })
        .catch(function (error) { say("Not changed: " + error.message); return null; });
    });
  }

  function showState(container, state) {
    var badge = container.querySelector("[data-post-state]");
    if (badge) {
      badge.textContent = state;
      badge.dataset.postState = state;
      badge.className = "state-badge state-" + state;
    }
  }

  function editing(event) {
    var tag = (event.target && event.target.tagName) || "";
    return /INPUT|TEXTAREA|SELECT/.test(tag) && event.target.type !== "checkbox" || event.ctrlKey || event.metaKey ||
      event.altKey || document.querySelector("dialog[open]");
  }

  var STATES = { a: "approved", r: "rejected", f: "flagged" };

  function setUpQueue(keys) {
    var rows = Array.prototype.slice.call(document.querySelectorAll("#result_list tbody tr"));
    if (!rows.length) { return; }
    var current = 0;
    function postId(row) {
      var box = row.querySelector("input.action-select");
      return box ? box.value : null;
    }
    function focus(index) {
      rows[current].classList.remove("kb-current");
      current = Math.max(0, Math.min(rows.length - 1, index));
      rows[current].classList.add("kb-current");
      rows[current].scrollIntoView({ block: "nearest" });
    }
    focus(0);
    document.addEventListener("keydown", function (event) {
      if (editing(event)) { return; }
      var row = rows[current];
      if (event.key === "j") { focus(current + 1); }
      else if (event.key === "k") { focus(current - 1); }
      else if (event.key === "x") { var box = row.querySelector("input.action-select"); if (box) { box.click(); } }
      else if (event.key === "o" || event.key === "Enter") {
        var link = row.querySelector("th a, td a");
        if (link) { window.location.href = link.href; }
      } else if (event.key === "?") { keys.querySelector(".keys-help").scrollIntoView(); }
      else if (STATES[event.key] && keys.dataset.canModerate === "1" && postId(row)) {
        event.preventDefault();
        var id = postId(row);
        decide(keys, id, STATES[event.key], "#" + id).then(function (data) {
          if (data) { showState(row, data.status); focus(current + 1); }
        });
        return;
      } else { return; }
      event.preventDefault();
    });
  }

  function setUpSingle(keys, panel) {
    var id = panel.dataset.postId;
    function act(state) {
      decide(keys, id, state, "#" + id).then(function (data) {
        if (!data) { return; }
        showState(panel, data.status);
        if (panel.dataset.nextUrl) { window.location.href = panel.dataset.nextUrl; }
      });
    }
    Array.prototype.forEach.call(panel.querySelectorAll("[data-decide]"), function (button) {
      button.addEventListener("click", function () { act(button.dataset.decide); });
    });
    document.addEventListener("keydown", function (event) {
      if (editing(event)) { return; }
      if (STATES[event.key] && keys.dataset.canModerate === "1") { event.preventDefault(); act(STATES[event.key]); }
      else if (event.key === "j" && panel.dataset.nextUrl) { window.location.href = panel.dataset.nextUrl; }
      else if (event.key === "k") { window.history.back(); }
    });
  }

  function setUpJob(panel) {
    if (panel.dataset.state !== "queued" && panel.dataset.state !== "running") { return; }
    var timer = window.setInterval(function () {
      fetch(panel.dataset.progressUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) { return response.json(); })
        .then(function (job) {
          document.getElementById("job-progress").value = job.progress;
          document.getElementById("job-progress-text").textContent =
            job.state + ": " + job.done + " of " + job.total + " processed, " + job.changed + " changed";
          if (job.state === "done" || job.state === "failed") {
            window.clearInterval(timer);
            window.location.reload();
          }
        });
    }, 1000);
  }

  ready(function () {
    var keys = document.getElementById("moderation-keys");
    var panel = document.getElementById("moderation-panel");
    var job = document.getElementById("job-panel");
    if (job) { setUpJob(job); }
    if (keys) {
      if (panel) { setUpSingle(keys, panel); } else { setUpQueue(keys); }
    }
    // The keys work from here on (tests wait for this before pressing any).
    document.documentElement.dataset.moderationReady = "1";
  });
})();
