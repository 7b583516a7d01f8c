// Countersign UI helpers. No inline handlers anywhere: the CSP forbids them.
// Keyboard shortcuts, expiry countdowns, the typed confirmation of destructive approvals,
// and keeping the queue's selected row across the live refreshes.
"use strict";

(function () {
  function isTyping(element) {
    return Boolean(element) && (element.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(element.tagName));
  }

  // Enter on a focused link or button is the browser's: it follows or presses that one.
  function activatesOnEnter(element) {
    return Boolean(element && element.closest && element.closest("a[href], button, summary"));
  }

  function page() {
    const marker = document.querySelector("[data-shortcuts]");
    return marker ? marker.dataset.shortcuts : "";
  }

  // --- Countdowns ---------------------------------------------------------------------
  function pad(value) {
    return String(value).padStart(2, "0");
  }

  // How long a call has waited, in the words the server writes ("12 s", "3 min", "2 h").
  function waited(seconds) {
    if (seconds < 60) {
      return seconds + " s";
    }
    if (seconds < 3600) {
      return Math.floor(seconds / 60) + " min";
    }
    if (seconds < 48 * 3600) {
      return Math.floor(seconds / 3600) + " h";
    }
    return Math.floor(seconds / 86400) + " d";
  }

  function tick() {
    const now = Date.now();
    document.querySelectorAll("time[data-waited]").forEach(function (element) {
      const start = Date.parse(element.getAttribute("datetime"));
      if (!Number.isNaN(start)) {
        element.textContent = waited(Math.max(0, Math.round((now - start) / 1000)));
      }
    });
    document.querySelectorAll("time[data-countdown]").forEach(function (element) {
      const end = Date.parse(element.getAttribute("datetime"));
      if (Number.isNaN(end)) {
        return;
      }
      const left = Math.round((end - now) / 1000);
      if (left <= 0) {
        element.textContent = "expired";
        element.classList.add("overdue");
        return;
      }
      const hours = Math.floor(left / 3600);
      const minutes = Math.floor((left % 3600) / 60);
      const seconds = left % 60;
      element.textContent = "in " + (hours ? hours + "h " + pad(minutes) : minutes) + "m " + pad(seconds) + "s";
      element.classList.toggle("soon", left < 300);
    });
  }

  // --- Risky approvals: the approve button waits for the typed target or amount ---------
  function armConfirmations(root) {
    root.querySelectorAll("input[data-confirm-for]").forEach(function (input) {
      const approve = input.form && input.form.querySelector("button[value=approve]");
      if (!approve || input.dataset.armed) {
        return;
      }
      input.dataset.armed = "1";
      const sync = function () {
        approve.disabled = input.value.trim() !== input.dataset.confirmFor;
      };
      input.addEventListener("input", sync);
      sync();
    });
  }

  // --- Queue selection ----------------------------------------------------------------
  let selectedId = null;

  function queueRows() {
    return Array.from(document.querySelectorAll("#queue tr[data-href]"));
  }

  function showSelection() {
    const rows = queueRows();
    let found = false;
    rows.forEach(function (row) {
      const on = row.dataset.callId === selectedId;
      row.classList.toggle("selected", on);
      row.setAttribute("aria-selected", on ? "true" : "false");
      found = found || on;
    });
    return found;
  }

  function moveSelection(step) {
    const rows = queueRows();
    if (!rows.length) {
      return;
    }
    let index = rows.findIndex(function (row) {
      return row.dataset.callId === selectedId;
    });
    index = index < 0 ? (step > 0 ? 0 : rows.length - 1) : Math.min(rows.length - 1, Math.max(0, index + step));
    selectedId = rows[index].dataset.callId;
    showSelection();
    rows[index].scrollIntoView({ block: "nearest" });
  }

  function openSelected() {
    const row = queueRows().find(function (candidate) {
      return candidate.dataset.callId === selectedId;
    });
    if (row) {
      window.location.assign(row.dataset.href);
    }
  }

  // --- Shortcuts ----------------------------------------------------------------------
  function click(selector) {
    const element = document.querySelector(selector);
    if (element && !element.disabled) {
      element.click();
      return true;
    }
    return false;
  }

  function follow(selector) {
    const link = document.querySelector(selector);
    if (link) {
      window.location.assign(link.href);
    }
  }

  function approve() {
    const confirmation = document.getElementById("id_confirmation");
    const button = document.querySelector("#decision-form button[value=approve]");
    if (!button) {
      return;
    }
    if (confirmation && button.disabled) {
      confirmation.focus();
      return;
    }
    button.click();
  }

  function reject() {
    const comment = document.getElementById("id_comment");
    if (comment && !comment.value.trim()) {
      comment.focus();
      return;
    }
    click("#decision-form button[value=reject]");
  }

  function toggleHelp() {
    const help = document.getElementById("shortcut-help");
    if (help) {
      help.hidden = !help.hidden;
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.target && event.target.id === "id_comment" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      click("#decision-form button[value=reject]");
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    const help = document.getElementById("shortcut-help");
    if (event.key === "Escape" && help && !help.hidden) {
      // The help lies over the page: Escape puts it away, as it does any overlay.
      help.hidden = true;
      event.preventDefault();
      return;
    }
    if (isTyping(event.target)) {
      if (event.key === "Escape") {
        event.target.blur();
      }
      // Enter in a field of the decision form would submit it as an approval (the browser
      // presses the first button): only the typed confirmation is meant to approve that way.
      if (event.key === "Enter" && event.target.tagName === "INPUT" && event.target.id !== "id_confirmation" && event.target.closest("#decision-form")) {
        event.preventDefault();
      }
      return;
    }
    const where = page();
    const key = event.key;
    if (key === "Enter" && activatesOnEnter(event.target)) {
      return;
    }
    let handled = true;
    if (key === "?") {
      toggleHelp();
    } else if (key === "n" && (where === "queue" || where === "detail")) {
      if (where === "detail") {
        follow("#next-call");
      } else {
        window.location.assign("/approvals/next/");
      }
    } else if (where === "queue" && (key === "j" || key === "ArrowDown")) {
      moveSelection(1);
    } else if (where === "queue" && (key === "k" || key === "ArrowUp")) {
      moveSelection(-1);
    } else if (where === "queue" && (key === "Enter" || key === "o") && selectedId) {
      openSelected();
    } else if (where === "detail" && key === "a") {
      approve();
    } else if (where === "detail" && key === "r") {
      reject();
    } else if (where === "detail" && key === "u") {
      follow("#back-to-queue");
    } else {
      handled = false;
    }
    if (handled) {
      event.preventDefault();
    }
  });

  // Clicking anywhere on a queue row opens it, like its link.
  document.addEventListener("click", function (event) {
    const row = event.target.closest && event.target.closest("#queue tr[data-href]");
    if (row && !event.target.closest("a")) {
      window.location.assign(row.dataset.href);
    }
  });

  // --- Requests that failed -----------------------------------------------------------
  // htmx swaps nothing for an error answer (a 5xx while the database restarts, a 403) or
  // for none at all: a verdict or a note that was not saved showed nothing, as if it had
  // been, and a page whose refreshes failed went on showing the call as it was.
  function isRefresh(element) {
    return Boolean(element && element.getAttribute && /^every /.test(element.getAttribute("hx-trigger") || ""));
  }

  function sayProblem(event, answered) {
    const banner = document.getElementById("request-problem");
    if (!banner) {
      return;
    }
    const refresh = isRefresh(event.detail.elt);
    const how = answered && event.detail.xhr ? "answered HTTP " + event.detail.xhr.status : "did not answer";
    banner.textContent = refresh
      ? "Countersign " + how + " to this page's refresh: what it shows may be out of date."
      : "Countersign " + how + ": what you sent may not have been saved. Reload the page to see where things stand, and try again.";
    banner.dataset.refresh = refresh ? "1" : "";
    banner.hidden = false;
  }

  document.addEventListener("htmx:responseError", function (event) {
    sayProblem(event, true);
  });
  document.addEventListener("htmx:sendError", function (event) {
    sayProblem(event, false);
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    const banner = document.getElementById("request-problem");
    // A refresh that works again clears what a failed refresh said; only an action that
    // works clears what a failed action said.
    if (banner && !banner.hidden && event.detail.successful && (banner.dataset.refresh || !isRefresh(event.detail.elt))) {
      banner.hidden = true;
    }
  });

  // A refused form comes back with the field to fix marked (aria-invalid, described by what
  // is wrong). The swap took the focus away with the old form: the keyboard goes to that field.
  function focusInvalid(event) {
    const target = event.detail.target;
    const swapped = target && target.id ? document.getElementById(target.id) : null;
    const field = swapped && swapped.querySelector("[aria-invalid=true]");
    if (field) {
      field.focus();
    }
  }

  // A call decided elsewhere while the reviewer typed in its verdict form: the refresh puts
  // the note form in its place, their comment moved into the note's box. The keyboard goes
  // with it: left on nothing, the letters typed next were shortcuts ("n" opened the next
  // call, the words unsent).
  let typingIn = null;

  document.addEventListener("htmx:beforeSwap", function (event) {
    const active = document.activeElement;
    // Only the refresh's: after the reviewer's own verdict the keys are theirs to use again.
    const refresh = event.detail.elt && event.detail.elt.id === "live";
    typingIn = refresh && isTyping(active) && active.closest("#decision-form") ? active : null;
  });

  function keepTyping() {
    const was = typingIn;
    typingIn = null;
    const note = document.getElementById("id_note");
    if (!was || document.body.contains(was) || !note || isTyping(document.activeElement)) {
      return;
    }
    note.focus();
    note.setSelectionRange(note.value.length, note.value.length);
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    armConfirmations(document);
    keepTyping();
    focusInvalid(event);
    // The live refresh replaced the rows: keep the reviewer's place if the call is still there.
    if (selectedId && !showSelection()) {
      selectedId = null;
    }
    tick();
  });

  document.addEventListener("DOMContentLoaded", function () {
    armConfirmations(document);
    tick();
    window.setInterval(tick, 1000);
  });
})();
