"""The honest limit of the familiarity check: what happens to a class the model never learned.

``leave_one_class_out`` is the protocol behind ``python -m toptune_core unseen``
(README, "A disease it never learned: what was tried"). For each class left
out in turn (angular leaf spot and bean rust are the disease folds; healthy
left out answers another question and is reported apart):

* the learned classes' photos are split as every run splits them (stratified,
  25 % held out, the seed); every score of ``trust.scores`` is fitted on their
  training photos only;
* the threshold is the 95th percentile (``accept``) of **out-of-fold** scores of
  those training photos (5 stratified folds, each scored against the other
  four: a photo is never scored against itself), never their own;
* reported at that threshold: the realised acceptance of the learned classes'
  held-out photos (with a 95 % Clopper-Pearson interval), the accuracy on the
  accepted ones, the refusal of every photo of the left-out class, the AUROC
  of held-out learned photos against left-out ones, and the refusal of far
  photos (``far_photos``: other things than leaves) as a regression check.

Every setting of every score is fixed in advance (``trust.scores``,
``trust.patches``). ``unseen_class_report`` is the earlier, k-NN-only form.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from toptune_core.backbones.catalogue import DEFAULT_BACKBONE
from toptune_core.data.split import load_data, stratified_split
from toptune_core.methods.photos import Photos
from toptune_core.progress import CancelCheck, ProgressCallback, ProgressMeter
from toptune_core.trust.familiarity import STRICTNESS, FamiliarityCheck


def unseen_class_report(data: str | Path, *, backbone: str = DEFAULT_BACKBONE, classifier: str = "logreg",
                        seed: int = 0, test_size: float = 0.25, strictness: str = "normal", views=None,
                        resolution=None, extractor=None,
                        cache=None, progress: Optional[ProgressCallback] = None,
                        should_cancel: Optional[CancelCheck] = None) -> list[dict]:
    """One row per left-out class: refused share of its photos, coverage and accuracy on learned classes."""
    from toptune_core.methods.toptuner import TopTuner

    dataset, _ = load_data(data)
    reader = TopTuner(backbone, classifier, seed, views=views, resolution=resolution, extractor=extractor, cache=cache)
    table = reader.read(dataset, progress=progress, should_cancel=should_cancel)
    X, y = table.features, dataset.labels[table.ok]
    paths = np.asarray(dataset.paths, dtype=object)[table.ok]
    split = stratified_split(y, test_size=test_size, seed=seed)
    rows = []
    for left_out, name in enumerate(dataset.classes):
        train = split.train_idx[y[split.train_idx] != left_out]
        test = split.test_idx[y[split.test_idx] != left_out]
        unseen = np.flatnonzero(y == left_out)
        kept = [c for c in range(len(dataset.classes)) if c != left_out]
        remap = {c: i for i, c in enumerate(kept)}
        y_train = np.asarray([remap[c] for c in y[train]])
        model = TopTuner(backbone, classifier, seed, extractor=reader.extractor).fit(
            Photos(list(paths[train]), X[train]), y_train, [dataset.classes[c] for c in kept])
        check = FamiliarityCheck(seed=seed).fit(X[train], y_train, list(paths[train]), model.classes_)
        accept = STRICTNESS[strictness]
        in_scope = check.recognised(X[test], accept)
        pred = model.predict_proba(Photos(list(paths[test]), X[test])).argmax(axis=1)
        correct = pred == np.asarray([remap[c] for c in y[test]])
        rows.append({"left_out": name, "n_unseen": int(len(unseen)),
                     "refused_unseen": float((~check.recognised(X[unseen], accept)).mean()),
                     "coverage_learned": float(in_scope.mean()),
                     "accuracy_learned_recognised": float(correct[in_scope].mean()) if in_scope.any() else None})
    return rows


FOLDS = 5  # out-of-fold calibration: as FamiliarityCheck
FAR_PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "china", "flower")


def far_photos() -> dict[str, bytes]:
    """The sample photos bundled with scikit-image and scikit-learn (an astronaut, a coffee cup, a cat, a rocket,
    a camera man, the Hubble deep field, a temple, a flower) as JPEG bytes: photos that are not bean leaves."""
    import io

    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    arrays = {name: getattr(skimage.data, name)() for name in FAR_PHOTO_NAMES[:6]}
    arrays.update(zip(FAR_PHOTO_NAMES[6:], load_sample_images().images))
    out = {}
    for name, a in arrays.items():
        buf = io.BytesIO()
        Image.fromarray(a if a.ndim == 3 else np.stack([a] * 3, axis=-1)).convert("RGB").save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def out_of_fold(board, train: np.ndarray, labels: np.ndarray, folds: int = FOLDS, seed: int = 0,
                meter: Optional[ProgressMeter] = None) -> dict[str, np.ndarray]:
    """Every component's score of each training photo, fitted on the other folds' photos only (stratified)."""
    y = labels[train]
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(train), dtype=np.int64)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold_of[members] = np.arange(len(members)) % folds
    out: dict[str, np.ndarray] = {}
    for f in range(folds):
        inside = fold_of == f
        scores = board.compute(train[~inside], train[inside], labels)
        for name, values in scores.items():
            out.setdefault(name, np.empty(len(train), dtype=np.asarray(values).dtype))[inside] = values
        if meter is not None:
            meter.update(f + 1)
    return out


def _interval(k: int, n: int) -> list[float]:
    from scipy.stats import binomtest

    if n == 0:
        return [float("nan"), float("nan")]
    ci = binomtest(int(k), int(n)).proportion_ci(0.95, method="exact")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def variant_figures(score, oof: np.ndarray, known: slice, unseen: slice, far: slice, correct: np.ndarray,
                    accept: float) -> dict:
    """The figures of one score at the threshold that accepts ``accept`` of the out-of-fold training scores."""
    from sklearn.metrics import roc_auc_score

    threshold = float(np.quantile(oof, accept))
    ok_known, refused_unseen, refused_far = score[known] <= threshold, score[unseen] > threshold, score[far] > threshold
    both = np.concatenate([score[known], score[unseen]])
    is_unseen = np.r_[np.zeros(len(score[known])), np.ones(len(score[unseen]))]
    return {"threshold": threshold, "acceptance": float(ok_known.mean()),
            "acceptance_ci": _interval(ok_known.sum(), ok_known.size),
            "accuracy_accepted": float(correct[ok_known].mean()) if ok_known.any() and correct is not None else None,
            "refused_unseen": float(refused_unseen.mean()),
            "refused_unseen_ci": _interval(refused_unseen.sum(), refused_unseen.size),
            "auroc": float(roc_auc_score(is_unseen, both)),
            "far_refused": float(refused_far.mean()) if refused_far.size else None,
            "far_refused_n": int(refused_far.sum())}


def leave_one_class_out(data, y: np.ndarray, classes: list[str], left_out: int, *, seed: int = 0,
                        test_size: float = 0.25, accept: float = 0.95, far_idx: Optional[np.ndarray] = None,
                        variants: Optional[list[str]] = None, board=None,
                        classifier: str = "logreg", progress: Optional[ProgressCallback] = None) -> dict:
    """The figures of every score with class ``left_out`` never learned (module docstring). ``data``: a
    ``trust.scores.PhotoData`` over the dataset's photos (``y``), then any far photos (``far_idx``); ``board``:
    the ``ScoreBoard`` to use (None: a new one)."""
    from toptune_core.data.split import stratified_split
    from toptune_core.trust.scores import MID_VARIANTS, PATCH_VARIANTS, VARIANTS, ScoreBoard, components_for

    n = len(y)
    far_idx = np.arange(n, n) if far_idx is None else np.asarray(far_idx)
    split = stratified_split(y, test_size=test_size, seed=seed)
    kept = [c for c in range(len(classes)) if c != left_out]
    labels = np.full(n + len(far_idx), -1)
    labels[:n] = [kept.index(c) if c != left_out else -1 for c in y]
    train = split.train_idx[y[split.train_idx] != left_out]
    test = split.test_idx[y[split.test_idx] != left_out]
    unseen = np.flatnonzero(y == left_out)
    board = board or ScoreBoard(data, seed=seed, classifier=classifier,
                                components=components_for(variants or VARIANTS))
    t0 = time.perf_counter()
    meter = ProgressMeter(f"scores without {classes[left_out]}", FOLDS + 1, progress, "fits")
    oof = out_of_fold(board, train, labels, seed=seed, meter=meter)
    board.seconds, board.n_scored = {}, 0  # cost per photo: the final scoring only
    query = np.concatenate([test, unseen, far_idx])
    scores = board.compute(train, query, labels)
    meter.update(FOLDS + 1)
    known, unseen_part = slice(0, len(test)), slice(len(test), len(test) + len(unseen))
    far = slice(len(test) + len(unseen), len(query))
    correct = scores["pred"][known] == labels[test] if "pred" in scores else None  # no classifier asked for
    names = [v for v in (variants or VARIANTS) if (data.maps is not None or v not in PATCH_VARIANTS)
             and (data.mid_maps is not None or v not in MID_VARIANTS)]
    figures = {name: variant_figures(VARIANTS[name][1](scores, oof), VARIANTS[name][1](oof, oof), known,
                                     unseen_part, far, correct, accept) for name in names}
    return {"left_out": classes[left_out], "learned": [classes[c] for c in kept], "n_train": int(len(train)),
            "n_test_learned": int(len(test)), "n_unseen": int(len(unseen)), "n_far": int(len(far_idx)),
            "accuracy_all": None if correct is None else float(correct.mean()),
            "seconds": round(time.perf_counter() - t0, 1),
            "ms_per_photo": {k: round(1000 * v / len(query), 3) for k, v in board.seconds.items()},
            "variants": figures}


def unseen_report(data: str | Path, *, backbone: str = DEFAULT_BACKBONE, classifier: str = "logreg", seed: int = 0,
                  test_size: float = 0.25,
                  strictness: str = "normal", views=None, resolution=None, patches: bool = True,
                  mid_level: bool = False, extractor=None,
                  cache=None, home: Optional[Path] = None, variants: Optional[list[str]] = None,
                  progress: Optional[ProgressCallback] = None, should_cancel: Optional[CancelCheck] = None) -> dict:
    """``leave_one_class_out`` for every class of ``data``: the cached pooled features (views, resolution as a
    run's), the maps before pooling (``trust.patches``, cached) when ``patches``, and the far photos."""
    import io

    from toptune_core.methods.toptuner import TopTuner
    from toptune_core.trust.patches import MapModel, PatchMaps, cached_feature_maps, feature_maps
    from toptune_core.trust.scores import PhotoData, components_for

    from toptune_core.methods.classifiers import make_classifier

    make_classifier(classifier)  # an unknown classifier or score name: one line, before any work
    if variants:
        components_for(variants)
    dataset, _ = load_data(data)
    reader = TopTuner(backbone, "logreg", seed, views=views, resolution=resolution, extractor=extractor, cache=cache)
    table = reader.read(dataset, progress=progress, should_cancel=should_cancel)
    ok = np.asarray(table.ok, dtype=bool)
    far = far_photos()
    far_views = reader.extractor.features_of_photos([io.BytesIO(b) for b in far.values()])
    views_all = np.concatenate([table.features, far_views]).astype(np.float32)  # features: readable photos only
    maps, maps_seconds, mid_maps = None, None, None
    if patches and mid_level:
        from toptune_core.trust.scores import MID_STAGES

        mid = MapModel(backbone, reader.extractor.resolution, stages=MID_STAGES)
        mid_maps = PatchMaps.concat([cached_feature_maps(dataset, mid, home=home, progress=progress).subset(ok),
                                     feature_maps([io.BytesIO(b) for b in far.values()], mid)])
    if patches:
        model = MapModel(backbone, reader.extractor.resolution)
        maps_ds = cached_feature_maps(dataset, model, home=home, progress=progress).subset(ok)
        _ = model.model  # loaded before the clock starts: the cost per photo, not the model's loading
        t0 = time.perf_counter()
        maps_far = feature_maps([io.BytesIO(b) for b in far.values()], model)
        maps_seconds = (time.perf_counter() - t0) / len(far)
        maps = PatchMaps.concat([maps_ds, maps_far])
    y = dataset.labels[ok]
    photo_data = PhotoData(views_all, maps, mid_maps)
    far_idx = np.arange(len(y), len(y) + len(far))
    folds = [leave_one_class_out(photo_data, y, dataset.classes, c, seed=seed, test_size=test_size,
                                 accept=STRICTNESS[strictness], far_idx=far_idx, variants=variants,
                                 classifier=classifier, progress=progress)
             for c in range(len(dataset.classes))]
    return {"strictness": strictness, "accept": STRICTNESS[strictness], "classifier": classifier, "seed": seed,
            "test_size": test_size,
            "backbone": backbone, "views": reader.extractor.views, "resolution": reader.extractor.resolution,
            "n_photos": int(len(y)), "far_photos": list(far), "maps_seconds_per_photo": maps_seconds,
            "maps": None if maps is None else "one view (the photo as it is), float16 unit cells",
            "mid_level_maps": mid_maps is not None,
            "folds": folds}
