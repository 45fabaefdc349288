"""``export_run``: a run's model as one zip that classifies photos with onnxruntime, numpy and pillow only.

The zip holds ``backbone.onnx`` (uint8 pixels -> features; normalisation
inside), ``classifier.onnx`` (features -> probabilities), ``model.json``
(class names, preprocessing settings, familiarity settings, where it came
from), ``familiarity.npz`` (the unknown-photo check's data, as the run saved
it), a ``README.md`` and ``predict.py`` (``portable/predict.py``); for a
top-tuned run also ``offline/``, the offline diagnosis page (``portable.offline``:
serve the folder over HTTPS and a phone keeps it for use with no network).

* A top-tuning run: the backbone's exported graph (``features.graph``, checked
  against PyTorch) and the run's ``classifier.onnx`` (converted now from
  ``model.joblib`` for runs recorded before it existed).
* A fine-tuning run: the fine-tuned network cut at its penultimate features
  (what its familiarity check compares) and its head with a softmax, both
  exported from PyTorch and checked against it (``graph.TOLERANCE``).

Every file is read through the run store's checksums (``RunStore.model_file``);
the zip is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from toptune_core.config import Settings
from toptune_core.errors import ToptuneError
from toptune_core.features.views import VIEW_SETS
from toptune_core.portable import offline as offline_page
from toptune_core.trust.familiarity import FILE as FAMILIARITY_FILE
from toptune_core.trust.familiarity import STRICTNESS

FORMAT = 1
PREDICT_SCRIPT = Path(__file__).with_name("predict.py")


def export_run(run_id: str, out: "str | Path", *, store=None, settings: Optional[Settings] = None) -> Path:
    """Write run ``run_id``'s model to the zip ``out``; returns its path. A top-tuned run's zip also holds its
    offline page (``offline/``, ``portable.offline``) where onnxruntime-web is installed (``npm ci``)."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ToptuneError(f"Name the export file '….zip' (got '{out.name}').")
    return _write_zip(out, run_files(run_id, store=store, settings=settings))


def run_files(run_id: str, *, store=None, settings: Optional[Settings] = None, offline: Optional[bool] = None
              ) -> dict[str, bytes]:
    """The export's files, {name: bytes}; ``offline``: add the offline page under ``offline/`` (None: for a
    top-tuned run where onnxruntime-web is installed; True: a one-line error where it is not)."""
    from toptune_core.backbones.pixels import resize_side
    from toptune_core.runs.store import RunStore

    settings = settings or Settings.from_env()
    store = store or RunStore(settings.runs_root)
    run = store.get(run_id)
    if run.status != "completed":
        raise ToptuneError(f"Run {run.id} is {run.status}, not completed; choose a completed run to export.")
    parts = _toptune_parts(store, run, settings) if run.method == "toptune" else _finetune_parts(store, run)
    cfg, views = parts.pop("data_config"), parts.pop("views")
    model = {"format": FORMAT, "run_id": run.id, "method": run.method, "backbone": run.backbone,
             "classes": parts.pop("classes"), "class_index": parts.pop("class_index"),
             "accuracy": run.accuracy,
             "preprocessing": {"input_size": int(cfg["input_size"][-1]), "resize_side": resize_side(cfg),
                               "interpolation": cfg["interpolation"], "crop": "center", "mean": cfg["mean"],
                               "std": cfg["std"], "normalisation": "inside backbone.onnx: (x / 255 - mean) / std",
                               "views": [list(step) for step in VIEW_SETS[views]], "view_set": views},
             "familiarity": {"strictness": STRICTNESS}}
    files = {"backbone.onnx": parts["backbone"], "classifier.onnx": parts["classifier"],
             "model.json": json.dumps(model, indent=1).encode(), "README.md": _readme(run, model).encode(),
             "predict.py": PREDICT_SCRIPT.read_bytes()}
    if (store.run_dir(run.id) / FAMILIARITY_FILE).exists():
        files[FAMILIARITY_FILE] = store.model_file(run.id, FAMILIARITY_FILE).read_bytes()
    if run.method == "toptune" and (offline or (offline is None and offline_page.ort_available())):
        files.update({f"offline/{name}": data for name, data in _offline_files(store, run, files, model).items()})
    elif offline:
        raise ToptuneError(f"Run {run.id} is fine-tuned: the offline page is made for top-tuned runs.")
    return files


def _offline_files(store, run, files: dict, model: dict) -> dict[str, bytes]:
    from toptune_core.explain import NO_MAP, linear_head
    from toptune_core.trust.familiarity import FamiliarityCheck

    check = FamiliarityCheck.load(store.model_file(run.id, FAMILIARITY_FILE)) if FAMILIARITY_FILE in files else None
    head = linear_head(files["classifier.onnx"], model["class_index"], len(model["classes"]))
    note = "" if head is not None else f"{run.classifier}: {NO_MAP}"
    return offline_page.offline_files(files["backbone.onnx"], files["classifier.onnx"], model, check, head, note)


def _write_zip(out: Path, files: dict[str, bytes]) -> Path:
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
                info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
                z.writestr(info, data)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ToptuneError(f"Could not write '{out}' ({e.strerror or e}); check the folder and free disk space.") \
            from None
    return out


def _toptune_parts(store, run, settings: Settings) -> dict:
    from toptune_core.features.extractor import FeatureExtractor, extractor_for
    from toptune_core.features.graph import prepare_graph
    from toptune_core.portable.top import CLASSIFIER_FILE, META_FILE, write_portable_files

    folder = store.run_dir(run.id)
    if (folder / CLASSIFIER_FILE).exists():
        meta = json.loads(store.model_file(run.id, META_FILE).read_text())
        classifier = store.model_file(run.id, CLASSIFIER_FILE).read_bytes()
    else:  # a run recorded before the ONNX classifier existed: convert its checked scikit-learn model now
        import tempfile

        from toptune_core.methods.toptuner import TopTuner

        tuner = TopTuner.from_run(store, run)
        with tempfile.TemporaryDirectory() as tmp:
            if not write_portable_files(Path(tmp), tuner.classifier_, tuner.classes_, tuner.backbone,
                                        tuner.data_config_, tuner.classifier, tuner.views_):
                raise ToptuneError(f"The classifier of run {run.id} cannot be converted to ONNX.")
            meta = json.loads((Path(tmp) / META_FILE).read_text())
            classifier = (Path(tmp) / CLASSIFIER_FILE).read_bytes()
    views = meta.get("views", "1")
    extractor = extractor_for(meta["backbone"], meta["data_config"], views,
                              FeatureExtractor(meta["backbone"], device="cpu", settings=settings, views=views))
    graph = prepare_graph(extractor.model_identity, settings, "onnxruntime", lambda: extractor.model,
                          extractor.data_config)
    return {"backbone": graph.path.read_bytes(), "classifier": classifier, "classes": meta["classes"],
            "class_index": meta["class_index"], "data_config": meta["data_config"], "views": views}


def _finetune_parts(store, run) -> dict:
    """The fine-tuned network as a features graph and a head graph, each checked against PyTorch."""
    import tempfile

    import torch

    from toptune_core.features.engines import OnnxRuntimeEngine
    from toptune_core.features.graph import TOLERANCE, GraphError, check_pixels, export_graph, torch_features
    from toptune_core.methods.finetuner import FineTuner
    from toptune_core.portable.top import OnnxClassifier

    tuner = FineTuner.from_run(store, run, device="cpu")
    net, cfg = tuner.model_.eval(), tuner.data_config_
    penultimate, head = _Penultimate(net), _SoftmaxHead(net.get_classifier())
    with tempfile.TemporaryDirectory() as tmp:
        features_path = Path(tmp) / "backbone.onnx"
        export_graph(penultimate, cfg, features_path)
        pixels = check_pixels(int(cfg["input_size"][-1]))
        reference = torch_features(penultimate, cfg, pixels)
        features = OnnxRuntimeEngine(features_path).run(pixels)
        head_bytes = _export_head(head, reference.shape[1])
        with torch.inference_mode():
            expected = head(torch.from_numpy(reference)).numpy()
        proba = OnnxClassifier(head_bytes, range(len(tuner.classes_)), len(tuner.classes_)).predict_proba(reference)
        diff = max(float(np.abs(features - reference).max()), float(np.abs(proba - expected).max()))
        if not diff <= TOLERANCE:
            raise GraphError(f"the exported fine-tuned network differs from PyTorch by {diff:.2g} "
                             f"(limit {TOLERANCE:g})")
        backbone = features_path.read_bytes()
    return {"backbone": backbone, "classifier": head_bytes, "classes": tuner.classes_,
            "class_index": list(range(len(tuner.classes_))), "data_config": cfg, "views": tuner.test_views}


def _export_head(head, dim: int) -> bytes:
    import warnings

    import torch

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (torch.zeros(2, dim),), buf, input_names=["features"],
                          output_names=["probabilities"], dynamic_axes={"features": {0: "n"}, "probabilities": {0: "n"}},
                          opset_version=17, dynamo=False)
    return buf.getvalue()


def _Penultimate(net):  # noqa: N802 - torch module classes are made on first use (no torch at import)
    import torch

    class Penultimate(torch.nn.Module):
        """The fine-tuned network up to its penultimate (pre-logits) features."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    return Penultimate(net).eval()


def _SoftmaxHead(classifier):  # noqa: N802
    import torch

    class SoftmaxHead(torch.nn.Module):
        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, features):
            return torch.softmax(self.classifier(features), dim=1)

    return SoftmaxHead(classifier).eval()


def _readme(run, model: dict) -> str:
    pre = model["preprocessing"]
    how = ("top-tuned: a frozen pretrained backbone (backbone.onnx) and a scikit-learn classifier on its "
           "features (classifier.onnx)" if run.method == "toptune" else
           "fine-tuned: the whole network, cut into its penultimate features (backbone.onnx) and its head "
           "with a softmax (classifier.onnx)")
    acc = "" if run.accuracy is None else f" Held-out accuracy when it was trained: {run.accuracy:.3f}."
    return f"""# Leaf-photo classifier exported by toptune (run {run.id})

Classes: {', '.join(model['classes'])}. Backbone: {run.backbone}, {how}.{acc}

## Use

```bash
pip install onnxruntime numpy pillow
python predict.py photo1.jpg photo2.jpg [--strictness strict|normal|lenient]
```

One JSON object per photo and line: `path`, `label` (null when the photo does not look like the photos the
model was trained on), `unknown`, `familiarity` (share of training photos at least as far from their
neighbours; low means unusual) and `top` (every class with its probability, most probable first).

## Files

- `backbone.onnx`: input `pixels`, uint8 (N, {pre['input_size']}, {pre['input_size']}, 3) RGB; output `features`.
  Normalisation ((x / 255 - mean) / std, mean {pre['mean']}, std {pre['std']}) is inside the graph.
- `classifier.onnx`: input `features` float32; output `probabilities` over `class_index` of `model.json`.
- `model.json`: classes and preprocessing: upright (EXIF) RGB, JPEGs of at least twice the resize side decoded
  at a reduced size (Pillow draft mode), shorter side resized to {pre['resize_side']} px ({pre['interpolation']}),
  centre crop of {pre['input_size']} px.
- `familiarity.npz`: the unknown-photo check: L2-normalised training features (`reference`), the
  k-th-nearest-neighbour distances of the training photos (`calibration`, k in `params[0]`); a photo whose
  distance is above the calibration's quantile at the strictness (`model.json`) is not recognised.
"""
