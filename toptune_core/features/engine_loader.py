"""Which engine and precision an extractor runs, and opening it: the one place a fallback is decided.

``planned_choice`` is what an extractor will run before anything is loaded (it
names the precision in the feature cache's identity): ``engines.choose``, and
f32 where bf16 failed its check on this backbone's graph before (the graph's
record says so). ``open_engine`` opens it: a graph engine on its checked graph
(``features.graph``); if bf16 fails its check, the f32 engine instead; if no
graph engine can be used, the PyTorch model. Each fallback is one line, passed
to ``say`` and kept in the returned note (the extractor's ``engine_note``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from toptune_core.features import engines

if TYPE_CHECKING:
    from toptune_core.features.extractor import FeatureExtractor


def planned_choice(extractor: "FeatureExtractor") -> engines.Choice:
    """``engines.choose`` for ``extractor``; f32 where bf16 failed its check on the graph before (no torch, no
    engine loaded: the graph record is read)."""
    choice = engines.choose(extractor.engine, extractor.precision, extractor.on_cuda())
    if choice.precision == "bf16" and choice.engine in engines.GRAPH_ENGINES:
        from toptune_core.features.graph import bf16_failed

        reason = bf16_failed(extractor.model_identity, extractor.settings, choice.engine)
        if reason:
            f32 = engines.choose(extractor.engine, "f32", False)
            return engines.Choice(f32.engine, "f32", f"bf16 fell back to f32 ({reason})")
    return choice


def open_engine(extractor: "FeatureExtractor", say: Callable[[str], None]) -> tuple[engines.Engine, str]:
    """The engine ``extractor`` runs, and its note: how its graph was checked, and any fallback."""
    choice = planned_choice(extractor)
    notes = [choice.note] if choice.note else []
    candidates = [choice] + ([engines.choose(extractor.engine, "f32", False)] if choice.precision != "f32" else [])
    for candidate in candidates:
        if candidate.engine not in engines.GRAPH_ENGINES or not extractor.pixels.has_pixel_stage:
            break
        try:
            engine, checked = _open_graph_engine(extractor, candidate, say)
            return engine, "; ".join(notes + [checked])
        except Exception as e:  # GraphError, or an engine that cannot load the checked graph
            from toptune_core.features.graph import GraphError

            reason = str(e) if isinstance(e, GraphError) else f"{type(e).__name__}: {e}"
            label = engines.LABELS[candidate.engine]
            notes.append(f"{label} bf16 fell back to f32 ({reason})" if candidate.precision != "f32" else
                         f"fell back to PyTorch: {label} could not be used ({reason})")
            say(f"feature extraction {notes[-1]}")
    precision = engines.choose("torch", extractor.precision, extractor.on_cuda()).precision
    return engines.TorchEngine(extractor.model, extractor.pixels, extractor.channels_last, precision), "; ".join(notes)


def _open_graph_engine(extractor: "FeatureExtractor", choice: engines.Choice, say) -> tuple[engines.Engine, str]:
    """``choice``'s graph engine on its checked graph (found, or exported and checked once), and the check in words."""
    from toptune_core.features.graph import GraphError, find_graph, prepare_graph

    name, precision = choice.engine, choice.precision
    if extractor.on_cuda():
        raise GraphError(f"{engines.LABELS[name]} runs on the CPU, and this extractor uses the GPU")
    if not engines.installed(name):
        raise GraphError(f"the '{name}' package is not installed")
    graph = find_graph(extractor.model_identity, extractor.settings, name, precision)
    if graph is None:
        say(f"exporting {extractor.backbone} for {engines.describe(name, precision=precision)} and checking it "
            "against PyTorch")
        graph = prepare_graph(extractor.model_identity, extractor.settings, name, lambda: extractor.model,
                              extractor.data_config, precision)
    plan = extractor.plan()
    engine = engines.open_graph_engine(name, graph.path, threads=plan.threads, lanes=plan.lanes, precision=precision,
                                       cache_dir=extractor.settings.graphs_dir / "openvino-cache")
    return engine, graph.check_summary(name, precision)
