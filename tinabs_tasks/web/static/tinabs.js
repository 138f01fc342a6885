// tinabs web console: live job and action views, confirmations. No framework, no CDN:
// the page polls its JSON state every second and redraws; it works without this file too
// (reload the page), only less live.
"use strict";

function humanBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  n = Number(n) || 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function pct(value) {
  return Number(value).toFixed(1) + "%";  // as the server renders it: 37.5%, 100.0%
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function progress(value) {
  const p = el("progress", {max: "100"});
  p.value = value;
  return p;
}

function runRow(r) {
  const detail = el("td", {class: "detail"});
  if (r.error) detail.append(el("span", {class: "error-text"}, r.error)); else detail.append(r.path || "");
  if (r.flower) detail.append(" ", el("a", {href: r.flower, target: "_blank", rel: "noopener"}, "task ↗"));
  return el("tr", {class: "run"},
    el("td", {}, r.vm), el("td", {}, r.pool),
    el("td", {}, el("span", {class: "state " + r.state}, r.state)),
    el("td", {}, r.stage),
    el("td", {}, progress(r.progress), " " + pct(r.progress)),
    el("td", {}, humanBytes(r.bytes)),
    el("td", {}, r.rate ? humanBytes(r.rate) + "/s" : ""),
    el("td", {class: "kind " + (r.backup_kind || "")}, r.how || ""),
    detail);
}

function drawJob(job) {
  const state = document.getElementById("job-state");
  state.textContent = job.state;
  state.className = "state " + job.state;
  document.getElementById("total-bar").value = job.progress;
  document.getElementById("total-text").textContent = pct(job.progress);
  document.getElementById("total-counts").textContent = job.ok + "/" + job.total + " succeeded, " + job.failed + " failed";
  document.getElementById("total-bytes").textContent = humanBytes(job.bytes);
  document.getElementById("total-rate").textContent = job.rate ? " at " + humanBytes(job.rate) + "/s" : "";
  if (job.aborted) document.getElementById("aborted-by").textContent = "· aborted by " + job.aborted_by;
  const body = document.getElementById("runs");
  const rows = job.runs.map(runRow);
  if (!rows.length) rows.push(el("tr", {}, el("td", {colspan: "9", class: "muted"}, job.planned ? "no VM matched" : "planning…")));
  body.replaceChildren(...rows);
  document.getElementById("notes").replaceChildren(...job.notes.map(n => el("li", {}, n)));
  const abortForm = document.getElementById("abort-form");
  if (abortForm && (job.done || job.aborted)) abortForm.remove();
}

function drawAction(a) {
  document.getElementById("action-state").textContent = a.state;
  const prog = document.getElementById("action-progress");
  prog.textContent = a.progress ? (a.progress.stage || "") + (a.progress.progress != null ? " " + Math.round(a.progress.progress * 100) + "%" : "") : "";
  if (!a.done) return;
  const out = document.getElementById("action-result");
  if (a.error) { out.replaceChildren(el("p", {class: "error-text"}, a.error)); return; }
  const r = a.result;
  if (a.kind === "verify") {
    out.replaceChildren(r.ok
      ? el("p", {class: "ok-text"}, "OK: " + humanBytes(r.bytes) + ", " + r.disks + " disk(s), " + r.chunks + " chunk(s)")
      : el("p", {class: "error-text"}, "FAILED: " + r.problems.join("; ")));
  } else {
    out.replaceChildren(el("p", {class: "ok-text"}, "Restored as ", el("b", {}, r.name), " (" + r.uuid + "), " + r.power_state));
  }
}

function poll(container, draw, finished) {
  const url = container.dataset.stateUrl;
  const tick = async () => {
    try {
      const resp = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
      if (resp.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname); return; }
      if (resp.ok) {
        const data = await resp.json();
        draw(data);
        if (finished(data)) return;
      }
    } catch (e) { /* the console restarting: try again */ }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job");
  if (job) poll(job, drawJob, j => j.done);
  const action = document.getElementById("action");
  if (action) poll(action, drawAction, a => a.done);
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", e => { if (!confirm(button.dataset.confirm)) e.preventDefault(); });
  }
});
