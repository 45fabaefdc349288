"""Classify leaf photos with a model exported by toptune. Needs only onnxruntime, numpy and pillow.

    python predict.py PHOTO... [--strictness strict|normal|lenient]

Prints one JSON object per photo and line: path, label (null when the photo does not look like the photos
the model was trained on), unknown, familiarity, and top (every class with its probability, most probable
first); an unreadable photo gets {"path", "error"}.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
MODEL = json.loads((HERE / "model.json").read_text())
PRE = MODEL["preprocessing"]
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def pixels(path):
    """The photo as the model sees it: upright RGB, shorter side resized to resize_side, centre crop."""
    side, size = PRE["resize_side"], PRE["input_size"]
    with Image.open(path) as im:
        w, h = im.size
        if im.format in ("JPEG", "MPO") and min(w, h) / side >= 2:  # decode at a reduced size, as toptune does
            scale = min(w, h) / side
            im.draft("RGB", (int(np.ceil(w / scale)), int(np.ceil(h / scale))))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        im = im.convert("RGB")
    w, h = im.size
    short, long = min(w, h), max(w, h)
    new = (side, int(side * long / short)) if w <= h else (int(side * long / short), side)
    if new != (w, h):
        im = im.resize(new, RESAMPLE[PRE["interpolation"]])
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def views(x):
    """(1, S, S, 3) pixels -> every view the model was trained with: (quarter turns, mirror) steps of model.json."""
    out = []
    for turns, mirror in PRE.get("views", [[0, False]]):
        view = np.rot90(x, turns, axes=(1, 2)) if turns else x
        out.append(view[:, :, ::-1] if mirror else view)
    return np.ascontiguousarray(np.concatenate(out))


def photo_embedding(features):
    """One vector per photo for the familiarity check: the mean of its L2-normalised views."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return f.mean(axis=0, keepdims=True)


def familiarity(features, strictness):
    """(familiarity, recognised): distance to the k-th nearest training photo on L2-normalised features."""
    with np.load(HERE / "familiarity.npz", allow_pickle=False) as z:
        reference, calibration, k = z["reference"], z["calibration"], int(z["params"][0])
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = np.clip(2.0 - 2.0 * (x @ reference.T), 0.0, None)
    k = max(1, min(k, len(reference)))
    dist = np.sqrt(np.partition(sq, k - 1, axis=1)[:, k - 1])
    threshold = float(np.quantile(calibration, MODEL["familiarity"]["strictness"][strictness]))
    share = 1.0 - np.searchsorted(calibration, dist, side="left") / len(calibration)
    return share, dist <= threshold


def main(argv):
    strictness = "normal"
    if "--strictness" in argv:
        i = argv.index("--strictness")
        strictness, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    backbone = ort.InferenceSession(str(HERE / "backbone.onnx"), providers=["CPUExecutionProvider"])
    classifier = ort.InferenceSession(str(HERE / "classifier.onnx"), providers=["CPUExecutionProvider"])
    classes, index = MODEL["classes"], np.asarray(MODEL["class_index"])
    has_familiarity = (HERE / "familiarity.npz").exists()
    for path in argv:
        try:
            x = pixels(path)[None]
        except Exception as e:  # one unreadable photo does not stop the others
            print(json.dumps({"path": path, "error": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        features = backbone.run(["features"], {"pixels": views(x)})[0]  # one row per view
        proba = np.zeros(len(classes))
        proba[index] = classifier.run(["probabilities"], {"features": features})[0].mean(axis=0)
        share, recognised = familiarity(photo_embedding(features), strictness) if has_familiarity else ([None], [True])
        order = np.argsort(-proba)
        print(json.dumps({"path": path, "label": classes[order[0]] if recognised[0] else None,
                          "unknown": not bool(recognised[0]),
                          "familiarity": None if share[0] is None else float(share[0]),
                          "top": [[classes[i], float(proba[i])] for i in order]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
