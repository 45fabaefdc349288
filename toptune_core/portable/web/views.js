// The views of a photo (toptune_core/features/views.py): numpy's rot90(x, turns) (counter-clockwise), then a
// left-right mirror x[:, ::-1]. One index rule serves the pixels (cutViews) and the maps (viewToPhoto).

// The photo's (row, column) seen at (i, j) of a view of an n x n square.
export function viewToPhoto(i, j, n, turns, mirror) {
  const last = n - 1;
  if (mirror) j = last - j;
  switch (((turns % 4) + 4) % 4) {
    case 0: return [i, j];
    case 1: return [j, last - i];
    case 2: return [last - i, last - j];
    default: return [last - j, i];
  }
}

// Every view of a (size, size, 3) crop, in the order of the steps: one (n_views, size, size, 3) uint8 batch.
export function cutViews(crop, size, steps) {
  const out = new Uint8Array(steps.length * size * size * 3);
  steps.forEach(([turns, mirror], v) => {
    const base = v * size * size * 3;
    for (let i = 0; i < size; i++) {
      for (let j = 0; j < size; j++) {
        const [si, sj] = viewToPhoto(i, j, size, turns, mirror);
        const p = (si * size + sj) * 3, q = base + (i * size + j) * 3;
        out[q] = crop[p]; out[q + 1] = crop[p + 1]; out[q + 2] = crop[p + 2];
      }
    }
  });
  return out;
}
