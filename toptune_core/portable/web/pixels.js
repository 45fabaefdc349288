// The photo as the model sees it, computed as toptune's Python does (toptune_core/backbones/pixels.py):
// upright RGB, the shorter side resized to `resize_side` with Pillow's resampling (ported below operation for
// operation, in Pillow's fixed-point arithmetic, so the same decoded pixels give the same crop byte for byte),
// then the centre crop of `input_size` (the views are cut in views.js).
//
// Decoding is the browser's (createImageBitmap, EXIF orientation applied like Pillow's exif_transpose). For a
// JPEG at least twice the resize side, Pillow decodes at a reduced scale (draft mode: libjpeg's scaled inverse DCT);
// a browser cannot, so a box average of the same reduction stands in for it (the README gives the measured gap).

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

const FILTERS = {
  bicubic: { support: 2.0, f: (x) => {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
  } },
  bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  lanczos: { support: 3.0, f: (x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0) },
};

function sinc(x) {
  if (x === 0.0) return 1.0;
  x *= Math.PI;
  return Math.sin(x) / x;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc (src/libImaging/Resample.c) for the whole input range.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let ww = 0.0;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      const v = x < xmax ? (ww !== 0.0 ? k[x] / ww : k[x]) : 0.0;
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { kk, bounds, ksize };
}

function clip8(v) {
  if (v >= ONE * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / ONE);
}

// Image.resize(size, filter) of an RGB image held as {width, height, data: Uint8Array RGB}: horizontal pass over the
// rows the vertical pass needs, then the vertical pass, each rounded to 8 bits (Pillow's ImagingResampleInner).
export function resize(img, width, height, interpolation) {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`the ${interpolation} filter is not supported by this page`);
  let src = img;
  const horiz = coefficients(img.width, width, filter);
  const vert = coefficients(img.height, height, filter);
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1];
  let shift = 0;
  if (width !== img.width) {
    const rows = yLast - yFirst;
    const out = new Uint8Array(width * rows * 3);
    for (let yy = 0; yy < rows; yy++) {
      const row = (yy + yFirst) * img.width * 3;
      for (let xx = 0; xx < width; xx++) {
        const xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1], off = xx * horiz.ksize;
        let s0 = ONE / 2, s1 = ONE / 2, s2 = ONE / 2;
        for (let x = 0; x < xmax; x++) {
          const c = horiz.kk[off + x], p = row + (x + xmin) * 3;
          s0 += src.data[p] * c; s1 += src.data[p + 1] * c; s2 += src.data[p + 2] * c;
        }
        const q = (yy * width + xx) * 3;
        out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2);
      }
    }
    src = { width, height: rows, data: out };
    shift = yFirst;
  }
  if (height === img.height) return src;
  const out = new Uint8Array(width * height * 3);
  for (let yy = 0; yy < height; yy++) {
    const ymin = vert.bounds[yy * 2] - shift, ymax = vert.bounds[yy * 2 + 1], off = yy * vert.ksize;
    for (let xx = 0; xx < width; xx++) {
      let s0 = ONE / 2, s1 = ONE / 2, s2 = ONE / 2;
      for (let y = 0; y < ymax; y++) {
        const c = vert.kk[off + y], p = ((y + ymin) * width + xx) * 3;
        s0 += src.data[p] * c; s1 += src.data[p + 1] * c; s2 += src.data[p + 2] * c;
      }
      const q = (yy * width + xx) * 3;
      out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2);
    }
  }
  return { width, height, data: out };
}

// Python's round(): halves to even.
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// timm's eval resize and centre crop (backbones/pixels.py eval_resize_crop): (size, size) RGB bytes.
export function resizeCrop(img, pre) {
  const side = pre.resize_side, size = pre.input_size;
  const { width: w, height: h } = img;
  const [short, long] = w <= h ? [w, h] : [h, w];
  const newLong = Math.trunc((side * long) / short);
  const [nw, nh] = w <= h ? [side, newLong] : [newLong, side];
  const resized = nw === w && nh === h ? img : resize(img, nw, nh, pre.interpolation);
  const top = roundHalfEven((nh - size) / 2.0), left = roundHalfEven((nw - size) / 2.0);
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    const from = ((y + top) * nw + left) * 3;
    out.set(resized.data.subarray(from, from + size * 3), y * size * 3);
  }
  return out;
}

// Pillow's draft(): the largest of 1/2, 1/4, 1/8 that keeps the image at least the requested size.
export function draftScale(w, h, side) {
  const scale = Math.min(w, h) / side;
  if (scale < 2) return 1;
  const reqW = Math.ceil(w / scale), reqH = Math.ceil(h / scale);
  const fit = Math.min(Math.floor(w / reqW), Math.floor(h / reqH));
  for (const s of [8, 4, 2]) if (fit >= s) return s;
  return 1;
}

// A stand-in for libjpeg's 1/s decode: the mean of each s x s block (edge blocks: of the pixels they have).
export function boxReduce(img, s) {
  const W = Math.ceil(img.width / s), H = Math.ceil(img.height / s);
  const out = new Uint8Array(W * H * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let n = 0, r = 0, g = 0, b = 0;
      for (let dy = 0; dy < s && y * s + dy < img.height; dy++) {
        for (let dx = 0; dx < s && x * s + dx < img.width; dx++) {
          const p = ((y * s + dy) * img.width + x * s + dx) * 3;
          r += img.data[p]; g += img.data[p + 1]; b += img.data[p + 2]; n++;
        }
      }
      const q = (y * W + x) * 3;
      out[q] = Math.round(r / n); out[q + 1] = Math.round(g / n); out[q + 2] = Math.round(b / n);
    }
  }
  return { width: W, height: H, data: out };
}

// The photo file as upright RGB bytes: the browser decodes (EXIF orientation applied, no colour conversion,
// transparent pixels over white as Pillow's _to_rgb does), draft-reduced like Pillow for large JPEGs.
export async function decodePhoto(file, side) {
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none",
                                                 premultiplyAlpha: "none" });
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  let img = { width, height, data: rgb };
  const isJpeg = file.type === "image/jpeg" || /\.jpe?g$/i.test(file.name || "");
  const s = isJpeg ? draftScale(width, height, side) : 1;
  if (s > 1) img = boxReduce(img, s);
  return img;
}
