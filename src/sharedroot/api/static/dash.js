// The dashboard's own few lines around htmx: the CSRF header, JSON bodies, what to do
// with an action's answer (a job to follow, a token to show), and a job's live events.
"use strict";

// Every request htmx makes carries the session's CSRF value (the API checks it).
document.addEventListener("htmx:configRequest", (ev) => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) ev.detail.headers["X-CSRF-Token"] = meta.content;
});

// The API takes JSON bodies: a form's fields become one JSON object.
document.addEventListener("DOMContentLoaded", () => {
  htmx.defineExtension("json-body", {
    onEvent(name, ev) {
      if (name === "htmx:configRequest") ev.detail.headers["Content-Type"] = "application/json";
    },
    encodeParameters(xhr, parameters) {
      return JSON.stringify(Object.fromEntries(parameters));
    },
  });
  htmx.process(document.body);
  bulkActions();
  liveJob();
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
    // An action became a job: follow it, or list it (bulk actions start many).
    const id = (xhr.getResponseHeader("Location") || "").split("/").pop();
    if ("follow" in elt.dataset) {
      window.location.assign(`/jobs/${id}`);
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

// Job page: its events as they arrive (steps, progress), then its final summary.
function liveJob() {
  const page = document.getElementById("job");
  if (!page) return;
  const list = document.getElementById("events");
  const bar = document.getElementById("bar");
  const label = document.getElementById("bar-label");
  const live = document.getElementById("live");
  const source = new EventSource(`/api/v1/jobs/${page.dataset.job}/events`);
  live.textContent = "live";
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
  source.addEventListener("done", (e) => {
    source.close();
    const status = JSON.parse(e.data).status;
    live.textContent = `ended: ${status}`;
    live.dataset.status = status;
    if (status === "succeeded") bar.value = bar.max;
    htmx.ajax("GET", window.location.pathname, {
      target: "#job-summary",
      select: "#job-summary",
      swap: "outerHTML",
    });
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CONNECTING) live.textContent = "reconnecting…";
  };
}
