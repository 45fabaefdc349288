"""The backbone's map before pooling, with the pooled features, for photos seen in a view set.

The exported backbone graph (``features.graph``) has a second output,
``feature_map``: (N, dim, rows, cols) float32, NCHW, the last convolutional
block's output (1280 x 9 x 9 for tf_efficientnet_lite0 at 288 px), whose mean
over the cells is the first output ``features``. The extraction reads only
``features`` (``engines.OnnxRuntimeEngine.run`` requests output 0 alone); what
needs the map - the class maps (``toptune_core.explain``), patch-level checks -
asks for both here, once per photo:

* ONNX Runtime on the checked graph (found on disk, or exported and checked
  once), one thread, both outputs;
* else PyTorch: timm's ``forward_features`` (the map) and ``forward_head``
  (the pooled features) of the extractor's model.

Each view's map is in the view's own orientation (``views.cut``): turning it back
to the photo's is the caller's business (``explain.to_photo_orientation``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toptune_core.errors import ToptuneError
from toptune_core.features import engines
from toptune_core.features import views as view_sets

_SESSIONS: dict[str, object] = {}
_SESSIONS_LOCK = threading.Lock()


@dataclass
class ViewMaps:
    """Pooled features and maps before pooling of every view of some photos."""

    features: np.ndarray  # (n, n_views, dim) float32, as the extraction gives them
    maps: np.ndarray  # (n, n_views, dim, rows, cols) float32, each view's map in the view's orientation
    views: str  # the view set (``views.VIEW_SETS``)


def features_and_maps(extractor, pixels: np.ndarray) -> ViewMaps:
    """Both outputs for (N, S, S, 3) uint8 photo crops (``extractor.load_pixels``) in ``extractor.views``.

    ``ToptuneError`` (one line) when the backbone has no spatial map (a vision transformer's tokens)."""
    inputs = view_sets.cut(np.ascontiguousarray(pixels, dtype=np.uint8), extractor.views)
    session = _graph_session(extractor)
    if session is not None:
        features, maps = session.run(["features", "feature_map"], {"pixels": inputs})
    else:
        features, maps = _torch_outputs(extractor, inputs)
    n, v = len(pixels), extractor.n_views
    return ViewMaps(features.reshape(n, v, -1), maps.reshape((n, v) + maps.shape[1:]), extractor.views)


def _graph_session(extractor):
    """An ONNX Runtime session (one thread, shared) on the extractor's checked graph when it has a map; else None."""
    from toptune_core.features.graph import MAP_OUTPUT, GraphError, find_graph, prepare_graph

    if not engines.installed("onnxruntime") or extractor.on_cuda() or not extractor.pixels.has_pixel_stage:
        return None
    try:
        graph = find_graph(extractor.model_identity, extractor.settings, "onnxruntime") or prepare_graph(
            extractor.model_identity, extractor.settings, "onnxruntime", lambda: extractor.model, extractor.data_config)
    except GraphError:
        return None
    key = str(graph.path)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = engines.OnnxRuntimeEngine(Path(graph.path), threads=1).session
            if MAP_OUTPUT not in [o.name for o in session.get_outputs()]:
                return None
            _SESSIONS[key] = session
    return session


def _torch_outputs(extractor, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    model = extractor.model
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ToptuneError(f"{extractor.backbone} has no map before pooling to show.")
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = extractor.pixels_to_tensor(inputs, device)
        feature_map = model.forward_features(x)
        if feature_map.ndim != 4:
            raise ToptuneError(f"{extractor.backbone} has no spatial map before pooling (its features are tokens).")
        features = model.forward_head(feature_map)
        return features.float().cpu().numpy(), feature_map.float().contiguous().cpu().numpy()
