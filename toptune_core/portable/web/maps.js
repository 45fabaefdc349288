// Where on the leaf (toptune_core/explain.py, the same arithmetic): for a linear top classifier on L2-normalised
// pooled features, each cell of the backbone's map before pooling adds w_c . cell / |f| to class c's logit; the
// class-versus-others map subtracts the rivals' maps weighed by their probabilities in that view; every view's map
// is turned back to the photo's orientation and the views are averaged.

import { viewToPhoto } from "./views.js";

function probabilities(head, scores) {
  const n = scores.length, p = new Float64Array(n);
  if (head.post_transform === "LOGISTIC") {
    for (let c = 0; c < n; c++) p[c] = head.known[c] ? 1 / (1 + Math.exp(-scores[c])) : 0;
  } else {
    let max = -Infinity;
    for (let c = 0; c < n; c++) if (head.known[c]) max = Math.max(max, scores[c]);
    for (let c = 0; c < n; c++) p[c] = head.known[c] ? Math.exp(scores[c] - max) : 0;
  }
  const total = p.reduce((a, b) => a + b, 0);
  return p.map((v) => v / total);
}

// features: Float32Array (V * D); featureMap: Float32Array (V * D * rows * cols), NCHW per view.
// Returns one Float64Array(rows * cols) per class: its class-versus-others map in the photo's orientation.
export function contrastMaps(head, features, featureMap, steps, D, rows, cols) {
  const C = head.weights.length, cells = rows * cols, V = steps.length;
  const sum = Array.from({ length: C }, () => new Float64Array(cells));
  for (let v = 0; v < V; v++) {
    let norm = 0;
    for (let d = 0; d < D; d++) norm += features[v * D + d] ** 2;
    const scale = head.normalise ? 1 / Math.max(Math.sqrt(norm), 1e-12) : 1;
    const M = [], scores = new Float64Array(C);
    for (let c = 0; c < C; c++) {
      const w = head.weights[c], m = new Float64Array(cells);
      let s = 0;
      for (let d = 0; d < D; d++) {
        const wd = w[d];
        if (wd === 0) continue;
        s += wd * features[v * D + d];
        const base = (v * D + d) * cells;
        for (let q = 0; q < cells; q++) m[q] += wd * featureMap[base + q];
      }
      for (let q = 0; q < cells; q++) m[q] *= scale;
      M.push(m);
      scores[c] = s * scale + head.intercepts[c];
    }
    const p = probabilities(head, scores);
    for (let c = 0; c < C; c++) {
      if (!head.known[c]) continue;
      let others = 0;
      for (let k = 0; k < C; k++) if (k !== c) others += p[k];
      const diff = new Float64Array(M[c]);
      for (let k = 0; k < C; k++) {
        if (k === c || !head.known[k]) continue;
        const r = others > 1e-12 ? p[k] / others : 1 / (C - 1);
        for (let q = 0; q < cells; q++) diff[q] -= r * M[k][q];
      }
      const [turns, mirror] = steps[v];
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          const [pi, pj] = viewToPhoto(i, j, rows, turns, mirror);
          sum[c][pi * cols + pj] += diff[i * cols + j] / V;
        }
      }
    }
  }
  return sum;
}

// The crop with the map over it on the fixed diverging scale (red: for the class, blue: against), as
// explain.overlay draws it: centred bilinear upsampling, opacity 0.55 x |value / scale|.
export function drawOverlay(canvas, crop, size, map, rows, cols, scale) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(size, size);
  const red = [215, 25, 28], blue = [44, 123, 182];
  for (let y = 0; y < size; y++) {
    const fy = Math.min(Math.max((y + 0.5) * rows / size - 0.5, 0), rows - 1);
    const y0 = Math.floor(fy), y1 = Math.min(y0 + 1, rows - 1), ty = fy - y0;
    for (let x = 0; x < size; x++) {
      const fx = Math.min(Math.max((x + 0.5) * cols / size - 0.5, 0), cols - 1);
      const x0 = Math.floor(fx), x1 = Math.min(x0 + 1, cols - 1), tx = fx - x0;
      const value = (map[y0 * cols + x0] * (1 - tx) + map[y0 * cols + x1] * tx) * (1 - ty)
        + (map[y1 * cols + x0] * (1 - tx) + map[y1 * cols + x1] * tx) * ty;
      const v = Math.max(-1, Math.min(1, value / scale)), a = 0.55 * Math.abs(v), colour = v >= 0 ? red : blue;
      const p = (y * size + x) * 3, q = (y * size + x) * 4;
      for (let k = 0; k < 3; k++) image.data[q + k] = Math.round(crop[p + k] * (1 - a) + colour[k] * a);
      image.data[q + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

export function drawCrop(canvas, crop, size) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(size, size);
  for (let i = 0, j = 0; j < crop.length; i += 4, j += 3) {
    image.data[i] = crop[j]; image.data[i + 1] = crop[j + 1]; image.data[i + 2] = crop[j + 2]; image.data[i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}
