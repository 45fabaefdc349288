"""The offline diagnosis page of a top-tuned run: a folder of static files a phone keeps for use with no network.

The page's own files are static files in ``portable/web/`` (``index.html``,
``app.js`` and its modules, ``sw.js``, the manifest, icons); onnxruntime-web
comes from npm (``portable/web/package.json`` pins it, ``npm ci`` there installs
it: ``make install`` does) and its two runtime files are copied beside the
page. This module only adds the run's data:

* ``model/backbone.onnx`` (the checked backbone graph, both outputs) and
  ``model/classifier.onnx``;
* ``model/model.json``: class names, preprocessing, the view choices offered
  (1, 2 or 8 views), the familiarity check's calibration and thresholds, the
  linear head's weights for the class map (``explain``; none for kernel ridge
  or Random Forest), the map's fixed colour scale;
* ``model/familiarity.bin``: the training photos' normalised features, float16;
* ``files.json``: every file, for the service worker to keep, and the version.

``offline_files`` gives the folder as {relative path: bytes}: ``export_run``
puts it in the zip under ``offline/``; ``publish`` writes it where the
dashboard serves it (``static/field/<run id>-<token>/``, Streamlit's static serving).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from toptune_core.errors import ToptuneError

WEB = Path(__file__).with_name("web")
PAGE_FILES = ("index.html", "page.css", "app.js", "pixels.js", "views.js", "maps.js", "sw.js",
              "manifest.webmanifest", "icon-192.png", "icon-512.png")
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
#: Where the dashboard publishes pages: Streamlit serves ``static/`` beside app.py at ``/app/static/``.
STATIC_ROOT = Path(__file__).resolve().parents[2] / "static"
PUBLISHED = "field"
#: The most run pages kept published (Streamlit stops all static serving when static/ passes 1 GB at start).
MAX_PUBLISHED = 8

#: (view set, label, what it costs). Measured on the full iBean set's 292 held-out photos (seed 0) with an 8-view
#: tf_efficientnet_lite0 288 px logistic regression predicting from the first 1, 2 or 8 views (README, "In the field").
VIEW_CHOICES = (("dihedral", "8 views (most accurate)",
                 "8 views: the dashboard's answer (iBean held out: 0.945 right, 95.5 % of leaves recognised)."),
                ("flip", "2 views (faster)",
                 "2 views: faster; more leaves come out \"Not recognised\" (iBean held out: 85.6 % "
                 "recognised vs 95.5 % with 8 views; 0.949 right). May differ from the dashboard's answer."),
                ("1", "1 view (fastest)",
                 "1 view: fastest; more leaves come out \"Not recognised\" (iBean held out: 82.2 % "
                 "recognised vs 95.5 % with 8 views; 0.938 right). May differ from the dashboard's answer."))


def ort_available() -> bool:
    return all((ORT_DIST / name).is_file() for name in ORT_FILES)


def require_ort() -> None:
    if not ort_available():
        raise ToptuneError(f"The offline page needs onnxruntime-web: run `npm ci` in {WEB} (make install does it "
                           "where npm is installed).")


def page_model(model: dict, familiarity, head, head_note: str) -> dict:
    """``model/model.json`` of the page from the export's ``model.json``, the run's familiarity check and head."""
    from toptune_core.explain import COLOUR_SCALE
    from toptune_core.features.views import VIEW_SETS
    from toptune_core.trust.familiarity import DEFAULT_STRICTNESS, STRICTNESS

    pre = model["preprocessing"]
    trained = pre["view_set"]
    choices = [{"name": name, "label": label, "note": note, "steps": [list(s) for s in VIEW_SETS[name]]}
               for name, label, note in VIEW_CHOICES
               if set(VIEW_SETS[name]) <= set(VIEW_SETS[trained])]
    page = {"run_id": model["run_id"], "backbone": model["backbone"], "classes": model["classes"],
            "class_index": model["class_index"], "accuracy": model.get("accuracy"),
            "preprocessing": {k: pre[k] for k in ("input_size", "resize_side", "interpolation", "views", "view_set")},
            "view_choices": choices, "head": None if head is None else head.as_dict(), "map_note": head_note,
            "colour_scale": COLOUR_SCALE, "familiarity": None}
    if familiarity is not None:
        page["familiarity"] = {"file": "model/familiarity.bin", "dtype": "float16", "k": int(familiarity.k_),
                               "calibration": [float(v) for v in familiarity.calibration_],
                               "thresholds": {name: familiarity.threshold(a) for name, a in STRICTNESS.items()},
                               "strictness": DEFAULT_STRICTNESS}
    return page


def offline_files(backbone: bytes, classifier: bytes, model: dict, familiarity=None, head=None,
                  head_note: str = "") -> dict[str, bytes]:
    """The offline page's folder as {relative path: bytes}. ``model``: the export's ``model.json`` dict."""
    require_ort()
    files = {name: (WEB / name).read_bytes() for name in PAGE_FILES}
    files.update({f"ort/{name}": (ORT_DIST / name).read_bytes() for name in ORT_FILES})
    page = page_model(model, familiarity, head, head_note)
    page["n_features"] = int(familiarity.reference_.shape[1]) if familiarity is not None else _n_features(head)
    files["model/backbone.onnx"], files["model/classifier.onnx"] = backbone, classifier
    if familiarity is not None:
        files["model/familiarity.bin"] = np.ascontiguousarray(familiarity.reference_, dtype="<f2").tobytes()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + hashlib.sha256(files[name]).digest())
    digest.update(json.dumps(page, sort_keys=True).encode())
    page["version"] = digest.hexdigest()[:16]
    files["model/model.json"] = json.dumps(page).encode()
    files["files.json"] = json.dumps({"version": page["version"], "files": sorted(files)}, indent=1).encode()
    return files


def _n_features(head) -> int:
    if head is None:
        raise ToptuneError("The offline page needs the run's familiarity data or a linear head to know its features.")
    return int(head.weights.shape[1])


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` as ``folder`` (replaced whole: written beside it, then renamed into place)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToptuneError(f"Could not write the offline page to '{folder}' ({e.strerror or e}).") from None
    return folder


def page_name(run_id: str, store) -> str:
    """The published page's folder name: the run id and a token from the run's classifier file, which only its
    owner's photos produced, so that an address cannot be guessed from run ids alone (shared mode keeps each
    visitor's runs private). Stable while the run's model does not change."""
    from toptune_core.portable.top import CLASSIFIER_FILE

    return f"{run_id}-{hashlib.sha256(store.model_file(run_id, CLASSIFIER_FILE).read_bytes()).hexdigest()[:16]}"


def published_folder(name: str, root: Optional[Path] = None) -> Path:
    return Path(root or STATIC_ROOT) / PUBLISHED / name


def published_path(name: str) -> str:
    """The page's address on the dashboard's server (append to the server's URL); ``name``: ``page_name``."""
    return f"/app/static/{PUBLISHED}/{name}/index.html"


def publish(run_id: str, *, store=None, settings=None, root: Optional[Path] = None) -> Path:
    """Write run ``run_id``'s offline page where the dashboard serves it (``static/field/<page_name>/``; kept
    unless the run's model changed), keeping the ``MAX_PUBLISHED`` most recently published pages."""
    from toptune_core.config import Settings
    from toptune_core.portable.export import run_files
    from toptune_core.runs.store import RunStore

    settings = settings or Settings.from_env()
    store = store or RunStore(settings.runs_root)
    folder = published_folder(page_name(run_id, store), root)
    files = run_files(run_id, store=store, settings=settings, offline=True)
    page = {k[len("offline/"):]: v for k, v in files.items() if k.startswith("offline/")}
    current = folder / "files.json"
    if not (current.is_file() and current.read_bytes() == page["files.json"]):
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_folder(folder, page)
    os.utime(folder)
    for old in sorted((p for p in folder.parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)[MAX_PUBLISHED:]:
        shutil.rmtree(old, ignore_errors=True)
    return folder
