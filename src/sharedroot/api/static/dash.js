// The dashboard's own few lines around htmx: the CSRF header, JSON bodies, what to do
// with an action's answer (a job or rollout to follow, a token to show), and the live
// events of a job or a rollout.
"use strict";

// Every request htmx makes carries the session's CSRF value (the API checks it).
document.addEventListener("htmx:configRequest", (ev) => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) ev.detail.headers["X-CSRF-Token"] = meta.content;
});

// The API takes JSON bodies: a form's fields become one JSON object, each a string
// unless its field says otherwise (data-json: int, bool, words); an empty typed field
// is left out, so the API takes its default.
const typed = {
  int: (v) => Number(v),
  bool: () => true, // a ticked checkbox; an unticked one sends nothing
  words: (v) => v.split(/[\s,]+/).filter(Boolean),
};

function jsonFields(parameters, form) {
  const body = {};
  for (const [name, value] of parameters) {
    const kind = form && form.elements ? form.elements[name]?.dataset?.json : undefined;
    if (!kind) body[name] = value;
    else if (String(value).trim() !== "") body[name] = typed[kind](String(value).trim());
  }
  return body;
}

document.addEventListener("DOMContentLoaded", () => {
  htmx.defineExtension("json-body", {
    onEvent(name, ev) {
      if (name === "htmx:configRequest") ev.detail.headers["Content-Type"] = "application/json";
    },
    encodeParameters(xhr, parameters, elt) {
      return JSON.stringify(jsonFields(parameters, elt));
    },
  });
  htmx.process(document.body);
  bulkActions();
  liveJob();
  liveRollout();
});

function note(text, href, bad) {
  const box = document.getElementById("results");
  if (!box) return;
  const line = document.createElement("div");
  line.className = bad ? "note bad" : "note";
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    line.append(a);
  } else {
    line.textContent = text;
  }
  box.prepend(line);
}

function detail(xhr) {
  try {
    const d = JSON.parse(xhr.responseText).detail;
    return typeof d === "string" ? d : JSON.stringify(d);
  } catch (e) {
    return xhr.statusText || "no answer";
  }
}

document.addEventListener("htmx:afterRequest", (ev) => {
  const xhr = ev.detail.xhr;
  const elt = ev.detail.elt;
  if (!xhr || !xhr.status) {
    note("the server did not answer", null, true);
  } else if (xhr.status >= 400) {
    note(`${xhr.status}: ${detail(xhr)}`, null, true);
  } else if (xhr.status === 202) {
    // An action became a job (or a rollout): follow it to its page (the API's path
    // without /api/v1), or list it (bulk actions start many).
    const where = xhr.getResponseHeader("Location") || "";
    const id = where.split("/").pop();
    if ("follow" in elt.dataset) {
      window.location.assign(where.replace(/^\/api\/v1/, ""));
      return;
    }
    const job = JSON.parse(xhr.responseText);
    note(`job ${id}: ${job.type} ${job.targets.join(" ")} (${job.status})`, `/jobs/${id}`);
  } else if ("showToken" in elt.dataset) {
    const made = JSON.parse(xhr.responseText);
    document.getElementById("new-token-value").textContent = made.token;
    document.getElementById("new-token").hidden = false;
    htmx.ajax("GET", "/tokens", { target: "#token-table", select: "#token-table", swap: "outerHTML" });
    elt.reset();
  } else if ("removeRow" in elt.dataset) {
    elt.closest("tr").remove();
  } else if (elt.dataset.then) {
    window.location.assign(elt.dataset.then);
  }
});

// Guest list: one API request per ticked guest, each with its own checkbox as source
// (htmx drops a second request from an element whose first is still under way).
function bulkActions() {
  // delegated: the filters swap the table (and its "all" box) for a new one
  document.addEventListener("change", (ev) => {
    if (ev.target.id !== "all") return;
    for (const box of document.querySelectorAll("input.pick")) box.checked = ev.target.checked;
  });
  for (const button of document.querySelectorAll("[data-bulk]")) {
    button.addEventListener("click", () => {
      const picked = [...document.querySelectorAll("input.pick:checked")];
      if (!picked.length) {
        note("tick the guests first", null, true);
        return;
      }
      const action = button.dataset.bulk;
      if (!window.confirm(`${action} ${picked.length} guest(s)?`)) return;
      for (const box of picked) {
        htmx.ajax("POST", `/api/v1/guests/${encodeURIComponent(box.value)}/${action}`, {
          source: box,
          swap: "none",
        });
      }
    });
  }
}

// This page's part `id` drawn anew by the server (one request at a time; a redraw
// asked for meanwhile follows it).
const redrawing = {};
function redraw(id) {
  const state = (redrawing[id] ||= { busy: false, again: false });
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  htmx
    .ajax("GET", window.location.pathname, { target: `#${id}`, select: `#${id}`, swap: "outerHTML" })
    .finally(() => {
      state.busy = false;
      if (state.again) {
        state.again = false;
        redraw(id);
      }
    });
}

// An event stream shown in `live`: its `done` event closes it and calls ended(data).
function follow(path, live, ended) {
  const source = new EventSource(path);
  live.textContent = "live";
  source.addEventListener("done", (e) => {
    source.close();
    ended(JSON.parse(e.data));
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CONNECTING) live.textContent = "reconnecting…";
  };
  return source;
}

// Job page: its events as they arrive (steps, progress), then its final summary.
function liveJob() {
  const page = document.getElementById("job");
  if (!page) return;
  const list = document.getElementById("events");
  const bar = document.getElementById("bar");
  const label = document.getElementById("bar-label");
  const live = document.getElementById("live");
  const source = follow(`/api/v1/jobs/${page.dataset.job}/events`, live, ({ status }) => {
    live.textContent = `ended: ${status}`;
    live.dataset.status = status;
    if (status === "succeeded") bar.value = bar.max;
    redraw("job-summary");
  });
  const line = (cls) => (e) => {
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = JSON.parse(e.data).text;
    list.append(li);
  };
  source.addEventListener("step", line("step"));
  source.addEventListener("end", line("end"));
  source.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    bar.max = d.total || 1;
    bar.value = d.done || 0;
    const pct = d.total ? Math.floor((100 * d.done) / d.total) : 0;
    label.textContent = `${d.text}: ${pct}%`;
  });
}

// Rollout page: drawn anew each time the rollout changes, until it has ended.
function liveRollout() {
  const page = document.getElementById("rollout");
  if (!page) return;
  const live = document.getElementById("live");
  const source = follow(`/api/v1/rollouts/${page.dataset.rollout}/events`, live, ({ state }) => {
    live.textContent = `ended: ${state}`;
    live.dataset.state = state;
    redraw("rollout-body");
  });
  source.addEventListener("rollout", () => redraw("rollout-body"));
}
