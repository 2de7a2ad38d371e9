// Jukebox Studio's page. It uses only the JSON API under /api (see /openapi.json). Every text that comes from
// the user or the server is set with textContent, never parsed as HTML.
"use strict";

const state = { info: null, project: null, jobs: new Map(), streams: new Map(), alignment: null };
const $ = (id) => document.getElementById(id);

// the token came in the address once; the server answered with a cookie, so it need not stay in the address bar
if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

// Runs an action, showing its error (if any) in the page; returns its result or undefined.
async function attempt(action) {
  try {
    const result = await action();
    showError("");
    return result;
  } catch (error) {
    showError(error.message);
    return undefined;
  }
}

const seconds = (s) => `${Number(s).toFixed(2)} s`;
const projectUrl = (...parts) => ["/api/projects", state.project.id, ...parts].join("/");
const modelInfo = (name) => state.info.models.find((m) => m.name === name);

// ---------------------------------------------------------------------------------------------- projects
async function loadProjects() {
  const projects = await api("GET", "/api/projects");
  const list = $("project-list");
  list.replaceChildren(...projects.map((p) => el("li", {},
    el("button", { class: "link", dataset: { project: p.id }, onclick: () => attempt(() => openProject(p.id)) },
      p.name), ` (${p.model}, ${p.nodes} nodes)`)));
}

async function openProject(id) {
  for (const stream of state.streams.values()) stream.close();
  state.streams.clear();
  state.jobs.clear();
  state.project = await api("GET", `/api/projects/${id}`);
  for (const job of await api("GET", `/api/projects/${id}/jobs`)) trackJob(job);
  render();
}

async function refreshProject() {
  if (state.project) state.project = await api("GET", projectUrl());
  render();
  await loadProjects();
}

function nodeById(id) {
  return state.project.nodes.find((n) => n.id === id);
}

// ------------------------------------------------------------------------------------------------- render
function render() {
  const p = state.project;
  $("project").hidden = !p;
  if (!p) return;
  $("project-name").textContent = p.name;
  const info = modelInfo(p.model);
  const labels = info && info.labels ? `, ${p.artist}, ${p.genre}` : "";
  $("project-meta").textContent = `${p.model}${labels}, song of ${seconds(p.total_seconds)}`;
  $("project-lyrics").textContent = p.lyrics;
  $("project-lyrics-box").hidden = !p.lyrics;
  const picked = nodeById(p.current);
  $("picked").textContent = `(${p.current}, ${seconds(picked.seconds)})`;
  renderTimeline(picked);
  renderTree();
  renderJobs();
}

function renderTimeline(picked) {
  const p = state.project;
  const audio = $("path-audio");
  const src = picked.preview ? projectUrl("nodes", picked.id, "preview.wav") : "";
  if (audio.dataset.node !== picked.id || audio.dataset.src !== src) {
    audio.dataset.node = picked.id;
    audio.dataset.src = src;
    if (src) audio.src = src; else audio.removeAttribute("src");
  }
  const total = Math.max(picked.seconds, 1e-9);
  const segments = p.path.map(nodeById).filter((n) => n.length > 0).map((n) => {
    const parent = n.parent ? nodeById(n.parent) : null;
    const start = parent ? parent.seconds : 0;
    return el("button", {
      class: "segment" + (n.id === p.current ? " current" : ""), title: `${n.id}: ${seconds(start)} to ${seconds(n.seconds)}`,
      style: null, dataset: { node: n.id, start: String(start / total), width: String((n.seconds - start) / total) },
      onclick: () => attempt(() => pick(n.id)),
    }, n.id);
  });
  const timeline = $("timeline");
  timeline.replaceChildren(...segments, $("playhead"));
  for (const s of segments) {
    s.style.left = `${Number(s.dataset.start) * 100}%`;
    s.style.width = `${Number(s.dataset.width) * 100}%`;
  }
  loadAlignment(picked);
}

async function loadAlignment(node) {
  const box = $("lyrics");
  if (!node.alignment) {
    state.alignment = null;
    box.hidden = true;
    return;
  }
  if (state.alignment && state.alignment.node === node.id) return;
  const record = await api("GET", projectUrl("nodes", node.id, "alignment"));
  state.alignment = { node: node.id, sung: record.sung, spans: Array.from(record.lyrics, (c) => el("span", {}, c)) };
  box.replaceChildren(...state.alignment.spans);
  box.hidden = false;
}

function onTime() {
  const audio = $("path-audio");
  if (!(audio.duration > 0)) return;
  $("playhead").style.left = `${(audio.currentTime / audio.duration) * 100}%`;
  const a = state.alignment;
  if (!a || !a.sung.length) return;
  const frame = Math.min(a.sung.length - 1, Math.floor((audio.currentTime / audio.duration) * a.sung.length));
  a.spans.forEach((span, i) => span.classList.toggle("sung", i === a.sung[frame]));
}

function renderTree() {
  const p = state.project;
  const children = new Map();
  for (const n of p.nodes) {
    if (!children.has(n.parent)) children.set(n.parent, []);
    children.get(n.parent).push(n);
  }
  const onPath = new Set(p.path);
  const item = (n) => {
    const parts = [seconds(n.seconds)];
    if (n.prompt) parts.push("prompt");
    if (n.trimmed_from) parts.push(`trimmed from ${n.trimmed_from}`);
    if (n.seed !== null) parts.push(`seed ${n.seed}${n.item !== null ? ` #${n.item}` : ""}`);
    if (n.temperature !== null) parts.push(`temperature ${n.temperature}`);
    const row = el("div", { class: "node" + (n.id === p.current ? " current" : "") + (onPath.has(n.id) ? " on-path" : "") },
      el("strong", {}, n.parent ? n.id : "start"), ` ${parts.join(", ")} `,
      el("button", { dataset: { action: "pick" }, onclick: () => attempt(() => pick(n.id)) }, "Pick"));
    if (n.preview) row.append(el("audio", { controls: true, preload: "none", src: projectUrl("nodes", n.id, "preview.wav") }));
    if (n.parent) {
      row.append(el("a", { href: projectUrl("nodes", n.id, "codes.pth.tar"), download: "" }, "codes"),
        el("button", { class: "danger", dataset: { action: "delete" }, onclick: () => attempt(() => deleteBranch(n.id)) }, "Delete"));
    }
    const kids = children.get(n.id) || [];
    return el("li", { dataset: { node: n.id } }, row, kids.length ? el("ul", {}, ...kids.map(item)) : "");
  };
  $("tree").replaceChildren(...(children.get(null) || []).map(item));
}

function renderJobs() {
  const jobs = [...state.jobs.values()].filter((j) => j.project === state.project.id).reverse();
  $("jobs").replaceChildren(...jobs.map((j) => {
    const eta = j.eta_seconds !== null && j.status === "running" ? `, about ${Math.ceil(j.eta_seconds)} s left` : "";
    const li = el("li", { dataset: { job: j.id, status: j.status, kind: j.kind } },
      `${j.kind} ${j.node || ""}: ${j.status}${eta} `,
      el("progress", { max: "1", value: String(j.progress) }));
    if (j.error) li.append(el("div", { class: "job-error" }, j.error));
    for (const file of j.files) {
      const name = file.split("/").pop();
      const attrs = name.endsWith(".html") ? { target: "_blank", rel: "noopener" } : { download: "" };
      li.append(" ", el("a", { href: projectUrl("jobs", j.id, "files", file), ...attrs, dataset: { file: name } },
        name === "item_0.wav" ? "wav" : name));
    }
    return li;
  }));
}

// ---------------------------------------------------------------------------------------------------- jobs
function trackJob(job) {
  state.jobs.set(job.id, job);
  if (job.status === "done" || job.status === "failed" || state.streams.has(job.id)) return;
  const stream = new EventSource(`/api/projects/${job.project}/jobs/${job.id}/events`);
  state.streams.set(job.id, stream);
  stream.onmessage = (event) => {
    const update = JSON.parse(event.data);
    state.jobs.set(update.id, update);
    if (update.status === "done" || update.status === "failed") {
      stream.close();
      state.streams.delete(update.id);
      if (update.status === "failed") showError(`${update.kind} failed: ${update.error}`);
      if (state.project && update.project === state.project.id) attempt(refreshProject);
    } else if (state.project && update.project === state.project.id) renderJobs();
  };
  stream.onerror = () => {
    // the stream ends when the job finishes; anything else: ask once more for the job's state
    stream.close();
    state.streams.delete(job.id);
    attempt(async () => trackJob(await api("GET", `/api/projects/${job.project}/jobs/${job.id}`)))
      .then(() => state.project && render());
  };
}

async function submitJob(path, body) {
  const job = await api("POST", path, body);
  trackJob(job);
  render();
  return job;
}

// ------------------------------------------------------------------------------------------------- actions
async function pick(id) {
  state.project = await api("POST", projectUrl("nodes", id, "pick"));
  render();
}

async function deleteBranch(id) {
  if (!confirm("Delete this node and everything that continues it?")) return;
  state.project = await api("DELETE", projectUrl("nodes", id));
  render();
}

const numberOrNull = (value) => (value === "" ? null : Number(value));

function wire() {
  const audio = $("path-audio");
  audio.addEventListener("timeupdate", onTime);
  audio.addEventListener("seeked", onTime);

  const newForm = $("new-project");
  const modelSelect = newForm.elements.model;
  const showLabels = () => {
    const info = modelInfo(modelSelect.value);
    for (const e of newForm.querySelectorAll(".labels-only")) e.hidden = !(info && info.labels);
    for (const e of newForm.querySelectorAll(".lyrics-only")) e.hidden = !(info && info.lyrics);
  };
  modelSelect.addEventListener("change", showLabels);
  modelSelect.replaceChildren(...state.info.models.map((m) => el("option", { value: m.name, selected: m.name === state.info.model }, m.name)));
  showLabels();

  newForm.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const f = newForm.elements;
      const fields = { name: f.name.value, model: f.model.value, artist: f.artist.value, genre: f.genre.value,
        lyrics: f.lyrics.value, total_seconds: Number(f.total_seconds.value) };
      let id;
      if (f.prompt.files.length) {
        const form = new FormData();
        for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
        form.append("prompt_seconds", f.prompt_seconds.value);
        form.append("file", f.prompt.files[0]);
        const job = await api("POST", "/api/projects/primed", form);
        id = job.project;
        await openProject(id);
      } else {
        id = (await api("POST", "/api/projects", fields)).id;
        await openProject(id);
      }
      await loadProjects();
    });
  });

  const importForm = $("import-project");
  importForm.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const form = new FormData(importForm);
      const job = await api("POST", "/api/projects/import", form);
      await openProject(job.project);
      await loadProjects();
    });
  });

  $("rename").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      state.project = await api("PATCH", projectUrl(), { name: event.target.elements.name.value });
      render();
      await loadProjects();
    });
  });
  $("delete-project").addEventListener("click", () => attempt(async () => {
    if (!confirm(`Delete the project "${state.project.name}" and everything in it?`)) return;
    await api("DELETE", projectUrl());
    state.project = null;
    render();
    await loadProjects();
  }));

  $("continue").addEventListener("submit", (event) => {
    event.preventDefault();
    const f = event.target.elements;
    attempt(() => submitJob(projectUrl("nodes", state.project.current, "continue"), {
      count: Number(f.count.value), seconds: Number(f.seconds.value), temperature: Number(f.temperature.value),
      seed: numberOrNull(f.seed.value),
    }));
  });
  $("trim").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      await submitJob(projectUrl("nodes", state.project.current, "trim"), { seconds: Number(event.target.elements.seconds.value) });
      await refreshProject();
    });
  });
  $("upsample").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(() => submitJob(projectUrl("nodes", state.project.current, "upsample"), { seed: numberOrNull(event.target.elements.seed.value) }));
  });
}

async function start() {
  state.info = await api("GET", "/api/info");
  $("server-info").textContent = `default model ${state.info.model} on ${state.info.device}`;
  wire();
  await loadProjects();
}

attempt(start);
