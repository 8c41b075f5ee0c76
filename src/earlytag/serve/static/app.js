// earlytag page: tag text, highlight entity spans, shade each token by the layer it exited at.
"use strict";

let info = null;

function layerColor(layer, numLayers) {
  const t = numLayers > 1 ? (layer - 1) / (numLayers - 1) : 1;  // 0 = first layer, 1 = last
  const light = 92 - t * 50;
  return { bg: `hsl(210, 75%, ${light}%)`, fg: light < 60 ? "#fff" : "#1d232b" };
}

function speedMode() {
  const policy = document.getElementById("policy").value;
  if (policy === "static") return { key: "layer", min: 1, max: info.num_layers, step: 1, value: Math.max(1, info.num_layers - 2) };
  if (policy === "patience") return { key: "patience", min: 1, max: Math.max(1, info.num_layers - 1), step: 1, value: 2 };
  if (policy === "none") return null;
  if (policy === "token" && info.max_target_speedup) {
    return { key: "target_speedup", min: 1, max: info.max_target_speedup, step: 0.1, value: Math.min(2, info.max_target_speedup) };
  }
  return { key: "threshold", min: 0, max: 0.6, step: 0.01, value: 0.1 };
}

function configureSlider() {
  const mode = speedMode();
  const slider = document.getElementById("speed");
  const label = document.getElementById("speed-label");
  label.style.visibility = mode ? "visible" : "hidden";
  if (!mode) return;
  slider.min = mode.min; slider.max = mode.max; slider.step = mode.step; slider.value = mode.value;
  slider.dataset.key = mode.key;
  label.firstChild.textContent = { target_speedup: "Target speed-up ", threshold: "Threshold τ ", layer: "Layers ", patience: "Patience " }[mode.key];
  showSliderValue();
}

function showSliderValue() {
  const slider = document.getElementById("speed");
  const v = Number(slider.value);
  document.getElementById("speed-value").textContent = slider.dataset.key === "target_speedup" ? `${v.toFixed(1)}x` : (Number.isInteger(v) ? String(v) : v.toFixed(2));
}

function exitSettings() {
  const policy = document.getElementById("policy").value;
  const mode = speedMode();
  const exit = { policy };
  if (mode) exit[mode.key] = Number(document.getElementById("speed").value);
  if (exit.target_speedup) delete exit.policy;
  return exit;
}

function renderLegend() {
  const legend = document.getElementById("legend");
  legend.replaceChildren(document.createTextNode("exit layer: "));
  for (let l = 1; l <= info.num_layers; l++) {
    const span = document.createElement("span");
    const c = layerColor(l, info.num_layers);
    span.style.background = c.bg; span.style.color = c.fg; span.textContent = l;
    legend.appendChild(span);
  }
}

// The service's offsets count Unicode code points (as Python does); JavaScript strings index UTF-16 units,
// where a character outside the BMP (an emoji, a rare CJK character) takes two. Map one to the other.
function utf16Offsets(text) {
  const at = [0];
  let units = 0;
  for (const ch of text) { units += ch.length; at.push(units); }
  return at;
}

function renderDocument(doc) {
  const at = utf16Offsets(doc.text);
  const slice = (start, end) => doc.text.slice(at[start], end === undefined ? undefined : at[end]);
  const out = document.createElement("p");
  out.className = "document";
  const spanAt = new Map(doc.spans.map((s) => [s.start, s]));
  // a segmenter's words (Chinese): each word after the first starts with a thin rule
  const wordStarts = new Set((doc.words || []).slice(1).map((w) => w.start));
  let pos = 0;
  let group = null;  // the entity element that tokens are currently added to
  const closeGroup = () => {
    if (!group) return;
    const label = document.createElement("span");
    label.className = "label"; label.textContent = group.dataset.label;
    group.appendChild(label);
    group = null;
  };
  for (const tok of doc.tokens) {
    if (group && tok.start >= group.end) closeGroup();
    const gap = document.createTextNode(slice(pos, tok.start));
    const span = spanAt.get(tok.start);
    if (span) {
      closeGroup();
      out.appendChild(gap);
      group = document.createElement("span");
      group.className = "entity"; group.dataset.label = span.label; group.end = span.end;
      group.title = `${span.label} (${(span.score * 100).toFixed(1)}%)`;
      out.appendChild(group);
    } else {
      (group || out).appendChild(gap);
    }
    const el = document.createElement("span");
    el.className = wordStarts.has(tok.start) ? "token word-start" : "token";
    el.dataset.exitLayer = tok.exit_layer; el.dataset.tag = tok.tag;
    const c = layerColor(tok.exit_layer, info.num_layers);
    el.style.background = c.bg; el.style.color = c.fg;
    el.title = `${tok.tag}, exited at layer ${tok.exit_layer}, p=${tok.score.toFixed(3)}`;
    el.textContent = slice(tok.start, tok.end);
    (group || out).appendChild(el);
    pos = tok.end;
  }
  closeGroup();
  out.appendChild(document.createTextNode(slice(pos)));
  return out;
}

async function tag() {
  const error = document.getElementById("error");
  error.textContent = "";
  const texts = document.getElementById("text").value.split(/\n+/).filter((t) => t.trim());
  const started = performance.now();
  const response = await fetch("/predict", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ texts, exit: exitSettings() }),
  });
  const body = await response.json();
  if (!response.ok) { error.textContent = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); return; }
  const ms = performance.now() - started;
  document.getElementById("output").replaceChildren(...body.results.map(renderDocument));
  document.getElementById("stats").textContent =
    `mean exit layer ${body.stats.mean_exit_layer.toFixed(2)} of ${info.num_layers} · ` +
    `FLOPs speed-up ${body.stats.flops_speedup.toFixed(2)}x · ${ms.toFixed(0)} ms`;
}

async function init() {
  for (let i = 0; i < 600; i++) {  // wait for the model (up to a minute)
    const r = await fetch("/info");
    if (r.ok) { info = await r.json(); break; }
    await new Promise((res) => setTimeout(res, 100));
  }
  if (!info) { document.getElementById("error").textContent = "the model did not load"; return; }
  document.getElementById("model-info").textContent =
    `${info.task.toUpperCase()} model, ${info.num_layers} layers, ${info.labels.length} labels` + (info.encoder ? ` (${info.encoder})` : "");
  const select = document.getElementById("policy");
  for (const p of info.policies) {  // the service's policy registry
    const option = document.createElement("option");
    option.value = p.name; option.textContent = p.name; option.title = p.summary;
    option.selected = p.name === "token";
    select.appendChild(option);
  }
  renderLegend();
  configureSlider();
  document.getElementById("policy").addEventListener("change", configureSlider);
  document.getElementById("speed").addEventListener("input", showSliderValue);
  document.getElementById("tag-button").addEventListener("click", tag);
  document.body.dataset.ready = "true";
}

init();
