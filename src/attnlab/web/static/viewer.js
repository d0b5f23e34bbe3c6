// attnlab viewer: fetches models and attention maps from the JSON API and draws them on canvases
// and SVG. Maps arrive as 8-bit weights with a scale per map (see attnlab/web/payload.py).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], model: null, result: null, maps: [], query: 0 };

function decode(payload) {
  const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
  const values = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) values[i] = bytes[i] * payload.scale;
  return { shape: payload.shape, values };
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function loadModels() {
  const body = await api("/api/models");
  state.models = body.models;
  $("model").replaceChildren(...body.models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
  $("model").addEventListener("change", selectModel);
  selectModel();
}

function selectModel() {
  state.model = state.models.find((m) => m.name === $("model").value);
  state.result = null;
  const task = state.model ? state.model.task : "";
  $("task").textContent = state.model ? `${Object.keys(state.model.layers).join(", ")}; ${state.model.heads} heads` : "";
  $("text-panel").hidden = !(task === "translation" || task === "encoding");
  $("beam-label").hidden = task !== "translation";
  $("image-panel").hidden = task !== "classification";
  $("controls").hidden = $("views").hidden = true;
  $("output").textContent = "";
  $("prediction").replaceChildren();
  setStatus("");
}

// ---- requests ---------------------------------------------------------------------------------
async function runText(event) {
  event.preventDefault();
  const model = state.model;
  const verb = model.task === "translation" ? "translate" : "encode";
  const body = { text: $("text").value };
  if (verb === "translate") body.beam = Number($("beam").value);
  setStatus("running...");
  try {
    const result = await api(`/api/models/${encodeURIComponent(model.name)}/${verb}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("output").textContent = verb === "translate" ? result.translation : result.labels.tokens.join(" ");
    $("output").lang = /[\u3040-\u30ff\u4e00-\u9fff]/.test($("output").textContent) ? "ja" : "";
    show(result);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function runImage() {
  const file = $("image-file").files[0];
  if (!file) return;
  setStatus("classifying...");
  state.image = await createImageBitmap(file).catch(() => null);
  try {
    const result = await api(`/api/models/${encodeURIComponent(state.model.name)}/classify?top_k=3`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    $("prediction").replaceChildren(
      ...result.top.map(([label, p]) => Object.assign(document.createElement("li"), { textContent: `${label} ${(100 * p).toFixed(1)}%` })),
    );
    state.query = 0;
    show(result);
  } catch (error) {
    setStatus(error.message, true);
  }
}

// ---- selectors ----------------------------------------------------------------------------------
function show(result) {
  state.result = result;
  // attention (H, Lq, Lk) and CNN spatial masks (1, h, w); SE gates (C,) are not drawn
  state.maps = result.maps.filter((m) => m.shape.length === 3).map((m) => ({ ...m, heads: m.heads || [0], ...decode(m) }));
  state.rollout = result.rollout ? { fused: decode(result.rollout.fused), heads: decode(result.rollout.heads) } : null;
  const kinds = [...new Set(state.maps.map((m) => m.kind))];
  $("kind").replaceChildren(...kinds.map((k) => new Option(k, k)));
  fillLayers();
  $("controls").hidden = $("views").hidden = kinds.length === 0;
  $("headview-figure").hidden = state.model.task === "classification";
  $("overlay").parentElement.hidden = !result.grid;
  setStatus("ready");
}

function fillLayers() {
  const maps = state.maps.filter((m) => m.kind === $("kind").value);
  const layer = $("layer").value;
  $("layer").replaceChildren(...maps.map((m) => new Option(`${m.layer}`, `${m.layer}`)));
  if (maps.some((m) => `${m.layer}` === layer)) $("layer").value = layer;
  const heads = maps.length ? maps[0].heads : [];
  const head = $("head").value;
  $("head").replaceChildren(new Option("mean of heads", "mean"), ...heads.map((h, i) => new Option(`${h}`, `${i}`)));
  if ([...$("head").options].some((o) => o.value === head)) $("head").value = head;
  draw();
}

function currentMap() {
  return state.maps.find((m) => m.kind === $("kind").value && `${m.layer}` === $("layer").value);
}

// (Lq, Lk) weights of the chosen head, or their mean over the heads
function matrix(map) {
  const [heads, rows, cols] = map.shape;
  const size = rows * cols;
  const out = new Float32Array(size);
  const chosen = $("head").value === "mean" ? [...Array(heads).keys()] : [Number($("head").value)];
  for (const h of chosen) for (let i = 0; i < size; i++) out[i] += map.values[h * size + i] / chosen.length;
  return { rows, cols, values: out };
}

function labelsOf(kind) {
  const labels = state.result.labels || {};
  const axes = { encoder_self: ["source", "source"], decoder_self: ["target", "target_in"], cross: ["target", "source"],
    rnn_source: ["target", "source"], bert: ["tokens", "tokens"], vit: ["patches", "patches"] };
  const [q, k] = axes[kind] || [];
  return [labels[q], labels[k]];
}

// ---- drawing --------------------------------------------------------------------------------------
function draw() {
  const map = currentMap();
  if (!map) return;
  const m = matrix(map);
  let [rowLabels, colLabels] = labelsOf(map.kind);
  if (map.kind === "vit") rowLabels = colLabels = [...Array(m.rows).keys()].map((i) => (i === 0 ? "[CLS]" : `${i - 1}`));
  drawHeatmap($("heatmap"), m, rowLabels || [], colLabels || []);
  if (state.model.task === "classification") drawImage(map, m);
  else drawHeadView($("headview"), m, rowLabels || [], colLabels || []);
}

function color(v) {
  const t = Math.max(0, Math.min(1, v));
  return `rgb(${Math.round(255 - 210 * t)}, ${Math.round(255 - 160 * t)}, ${Math.round(255 - 40 * t)})`;
}

function drawHeatmap(canvas, m, rowLabels, colLabels) {
  const cell = Math.max(6, Math.min(28, Math.floor(420 / Math.max(m.rows, m.cols))));
  const ctx = canvas.getContext("2d");
  ctx.font = "12px system-ui, 'Noto Sans CJK JP', sans-serif";
  const pad = Math.ceil(Math.max(20, ...rowLabels.map((l) => ctx.measureText(l).width), ...colLabels.map((l) => ctx.measureText(l).width))) + 8;
  canvas.width = pad + m.cols * cell + 4;
  canvas.height = pad + m.rows * cell + 4;
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px system-ui, 'Noto Sans CJK JP', sans-serif";
  const peak = Math.max(...m.values, 1e-9);
  for (let i = 0; i < m.rows; i++) {
    for (let j = 0; j < m.cols; j++) {
      ctx.fillStyle = color(m.values[i * m.cols + j] / peak);
      ctx.fillRect(pad + j * cell, pad + i * cell, cell, cell);
    }
  }
  ctx.fillStyle = "#1d2330";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  rowLabels.forEach((l, i) => ctx.fillText(l, pad - 4, pad + (i + 0.5) * cell));
  colLabels.forEach((l, j) => {
    ctx.save();
    ctx.translate(pad + (j + 0.5) * cell, pad - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(l, 0, 0);
    ctx.restore();
  });
}

function drawHeadView(svg, m, rowLabels, colLabels) {
  const ns = "http://www.w3.org/2000/svg";
  const step = 22, width = 360, left = 150, right = width - 150;
  const height = step * Math.max(m.rows, m.cols) + 10;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const nodes = [];
  const peak = Math.max(...m.values, 1e-9);
  for (let i = 0; i < m.rows; i++) {
    for (let j = 0; j < m.cols; j++) {
      const w = m.values[i * m.cols + j] / peak;
      if (w < 0.02) continue;
      const line = document.createElementNS(ns, "line");
      Object.entries({ x1: left, y1: step * (i + 0.5), x2: right, y2: step * (j + 0.5), stroke: "#2d5fd3",
        "stroke-width": 2, "stroke-opacity": w.toFixed(3) }).forEach(([k, v]) => line.setAttribute(k, v));
      nodes.push(line);
    }
  }
  const label = (text, x, y, anchor) => {
    const t = document.createElementNS(ns, "text");
    Object.entries({ x, y, "text-anchor": anchor, "dominant-baseline": "middle" }).forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = text;
    return t;
  };
  rowLabels.forEach((l, i) => nodes.push(label(l, left - 6, step * (i + 0.5), "end")));
  colLabels.forEach((l, j) => nodes.push(label(l, right + 6, step * (j + 0.5), "start")));
  svg.replaceChildren(...nodes);
}

// the overlay of an image model: a ViT's class-token map, one query patch's map or rollout on the patch
// grid, or a CNN block's spatial mask
function overlayGrid(map, m) {
  if (map.kind === "spatial_mask") return { gh: m.rows, gw: m.cols, values: m.values };
  const grid = state.result.grid;
  if (!grid) return null;
  const [gh, gw] = grid, prefix = state.result.prefix_tokens;
  const mode = $("overlay").value;
  if (mode === "rollout" && state.rollout) {
    const head = $("head").value;
    if (head === "mean") return { gh, gw, values: state.rollout.fused.values };
    const size = gh * gw, h = map.heads[Number(head)];
    return { gh, gw, values: state.rollout.heads.values.slice(h * size, (h + 1) * size) };
  }
  const row = mode === "query" ? prefix + state.query : 0;
  return { gh, gw, values: m.values.slice(row * m.cols + prefix, (row + 1) * m.cols) };
}

function drawImage(map, m) {
  const canvas = $("image-canvas"), ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (state.image) ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  const o = overlayGrid(map, m);
  if (!o) return;
  const peak = Math.max(...o.values, 1e-9), cw = canvas.width / o.gw, ch = canvas.height / o.gh;
  for (let r = 0; r < o.gh; r++) {
    for (let c = 0; c < o.gw; c++) {
      ctx.fillStyle = `rgba(230, 60, 30, ${(0.6 * o.values[r * o.gw + c]) / peak})`;
      ctx.fillRect(c * cw, r * ch, cw, ch);
    }
  }
  if ($("overlay").value === "query") {
    ctx.strokeStyle = "#00d0ff";
    ctx.lineWidth = 3;
    ctx.strokeRect((state.query % o.gw) * cw, Math.floor(state.query / o.gw) * ch, cw, ch);
  }
}

function clickPatch(event) {
  if (!state.result || !state.result.grid) return;
  const [gh, gw] = state.result.grid, rect = event.target.getBoundingClientRect();
  const c = Math.min(gw - 1, Math.floor(((event.clientX - rect.left) / rect.width) * gw));
  const r = Math.min(gh - 1, Math.floor(((event.clientY - rect.top) / rect.height) * gh));
  state.query = r * gw + c;
  $("overlay").value = "query";
  draw();
}

$("text-form").addEventListener("submit", runText);
$("image-file").addEventListener("change", runImage);
$("kind").addEventListener("change", fillLayers);
$("layer").addEventListener("change", draw);
$("head").addEventListener("change", draw);
$("overlay").addEventListener("change", draw);
$("image-canvas").addEventListener("click", clickPatch);
loadModels().catch((error) => setStatus(error.message, true));
