// The offline diagnosis page: the run's backbone graph and top classifier run by onnxruntime-web (WebAssembly,
// one thread), the same preprocessing, views and familiarity check as `python -m toptune_core predict`.
// Everything it needs is in this folder (model/, ort/); the service worker (sw.js) keeps a copy for offline use.

import * as ort from "./ort/ort.wasm.bundle.min.mjs";
import { decodePhoto, resizeCrop } from "./pixels.js";
import { cutViews } from "./views.js";
import { contrastMaps, drawCrop, drawOverlay } from "./maps.js";

ort.env.wasm.numThreads = 1; // one thread: what every phone page gets without cross-origin isolation
const $ = (id) => document.getElementById(id);
const state = { model: null, backbone: null, classifier: null, reference: null, lastCrop: null };

function float16ToFloat32(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i], sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    out[i] = exp === 0 ? sign * 2 ** -14 * (frac / 1024)
      : exp === 31 ? (frac ? NaN : sign * Infinity) : sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  return out;
}

async function load() {
  const model = state.model = await (await fetch("model/model.json")).json();
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  state.backbone = await ort.InferenceSession.create("model/backbone.onnx", options);
  state.classifier = await ort.InferenceSession.create("model/classifier.onnx", options);
  if (model.familiarity) {
    const bytes = await (await fetch(model.familiarity.file)).arrayBuffer();
    state.reference = float16ToFloat32(new Uint16Array(bytes));
  }
  const acc = model.accuracy == null ? "" : ` Held-out accuracy when trained: ${(100 * model.accuracy).toFixed(1)} %.`;
  $("about").textContent = `${model.classes.join(", ")} · ${model.backbone} · run ${model.run_id}.${acc}`;
  const choice = $("views-choice");
  model.view_choices.forEach((c, i) => {
    const label = document.createElement("label");
    label.innerHTML = `<input type="radio" name="views" value="${c.name}"${i === 0 ? " checked" : ""}> ${c.label}`;
    choice.insertBefore(label, $("views-help"));
  });
  const help = () => {
    const c = chosenViews();
    $("views-help").textContent = c.note;
  };
  choice.addEventListener("change", help);
  help();
  $("photo").disabled = false;
  $("photo").addEventListener("change", () => { if ($("photo").files[0]) diagnose($("photo").files[0]); });
}

function chosenViews() {
  const name = document.querySelector("input[name=views]:checked").value;
  return state.model.view_choices.find((c) => c.name === name);
}

// The familiarity check (toptune_core/trust/familiarity.py): the photo's embedding (mean of its L2-normalised
// views, normalised), its distance to the k-th nearest training photo, compared with the calibration.
function familiarity(features, V, D) {
  const fam = state.model.familiarity, e = new Float64Array(D);
  for (let v = 0; v < V; v++) {
    let n = 0;
    for (let d = 0; d < D; d++) n += features[v * D + d] ** 2;
    n = Math.max(Math.sqrt(n), 1e-12);
    for (let d = 0; d < D; d++) e[d] += features[v * D + d] / n / V;
  }
  const en = Math.max(Math.hypot(...e), 1e-12);
  const ref = state.reference, n = ref.length / D, sq = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let dot = 0;
    for (let d = 0; d < D; d++) dot += (e[d] / en) * ref[i * D + d];
    sq[i] = Math.max(2 - 2 * dot, 0);
  }
  const k = Math.max(1, Math.min(fam.k, n));
  const distance = Math.sqrt(Array.from(sq).sort((a, b) => a - b)[k - 1]);
  const cal = fam.calibration;
  let below = 0;
  while (below < cal.length && cal[below] < distance) below++;
  return { familiarity: 1 - below / cal.length, recognised: distance <= fam.thresholds[fam.strictness] };
}

async function diagnose(file) {
  const model = state.model, pre = model.preprocessing, S = pre.input_size, D = model.n_features;
  $("error").hidden = true;
  try {
    const start = performance.now();
    const views = chosenViews(), V = views.steps.length;
    const crop = resizeCrop(await decodePhoto(file, pre.resize_side), pre);
    const pixels = new ort.Tensor("uint8", cutViews(crop, S, views.steps), [V, S, S, 3]);
    const wantMap = Boolean(model.head);
    const out = await state.backbone.run({ pixels }, wantMap ? ["features", "feature_map"] : ["features"]);
    const features = out.features.data;
    const probs = (await state.classifier.run({ features: new ort.Tensor("float32", features, [V, D]) },
                                              ["probabilities"])).probabilities.data;
    const p = new Float64Array(model.classes.length), known = model.class_index.length;
    for (let v = 0; v < V; v++) model.class_index.forEach((c, j) => { p[c] += probs[v * known + j] / V; });
    const fam = state.reference ? familiarity(features, V, D) : { familiarity: null, recognised: true };
    const milliseconds = Math.round(performance.now() - start);
    const top = model.classes.map((c, i) => [c, p[i]]).sort((a, b) => b[1] - a[1]);
    show({ top, unknown: !fam.recognised, milliseconds, familiarity: fam.familiarity, views: V }, crop, S);
    if (wantMap) showMap(out, views.steps, top, fam.recognised, crop, S);
  } catch (e) {
    $("error").textContent = `This photo could not be diagnosed: ${e.message || e}`;
    $("error").hidden = false;
    console.error(e);
  }
}

function show(result, crop, S) {
  $("answer").hidden = false;
  $("verdict").textContent = result.unknown ? "Not recognised: this does not look like the photos the model was"
    + " trained on" : `${result.top[0][0]} (${(100 * result.top[0][1]).toFixed(1)} %)`;
  $("verdict").className = result.unknown ? "unknown" : "";
  $("timing").textContent = `Diagnosed in ${result.milliseconds} ms on this device (${result.views} view`
    + `${result.views > 1 ? "s" : ""}).`;
  $("classes").innerHTML = "";
  $("classes").hidden = result.unknown;
  $("advice").hidden = !result.unknown;
  for (const [c, prob] of result.top) {
    const li = document.createElement("li");
    li.textContent = `${c}: ${(100 * prob).toFixed(1)} %`;
    $("classes").appendChild(li);
  }
  drawCrop($("crop"), crop, S);
  $("result").textContent = JSON.stringify(result);
}

function showMap(out, steps, top, recognised, crop, S) {
  const model = state.model, [, D, rows, cols] = out.feature_map.dims;
  $("map-figure").hidden = !recognised;
  if (!recognised) {
    $("map-note").textContent = "No map for a photo the model does not recognise.";
    return;
  }
  const maps = contrastMaps(model.head, out.features.data, out.feature_map.data, steps, D, rows, cols);
  const best = model.classes.indexOf(top[0][0]);
  drawOverlay($("map"), crop, S, maps[best], rows, cols, model.colour_scale);
  $("map-caption").textContent = `Where it sees ${top[0][0]} (red) rather than the other classes (blue)`;
  $("map-note").textContent = "Where the model looked, not proof: one fixed colour scale for every photo.";
}

async function offline() {
  if (!("serviceWorker" in navigator)) {
    $("offline").textContent = "Offline use needs HTTPS (or localhost): this page works only while connected.";
    $("offline").dataset.state = "unavailable";
    return;
  }
  await navigator.serviceWorker.register(`sw.js?v=${state.model.version}`);
  await navigator.serviceWorker.ready;
  $("offline").textContent = "Ready for offline use: add this page to the home screen.";
  $("offline").dataset.state = "ready";
}

load().then(offline).catch((e) => {
  $("error").textContent = `The model could not be loaded: ${e.message || e}`;
  $("error").hidden = false;
  console.error(e);
});
