"""The model-only ceiling (the backbone alone on random tensors, best batch size and way of using the CPUs) and
the naive baseline (the Eden notebooks' way of extracting features), the two rates the extraction is held to."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from toptune_core.config import Settings

CPU_BATCH_SIZES = (2, 4, 8, 16, 32)
CUDA_BATCH_SIZES = (32, 64, 128, 256)


@dataclass
class Ceiling:
    """The model alone on random tensors: the best rate, how it was reached, and every rate measured."""

    rate: float
    mode: str
    batch_size: int
    table: dict  # mode -> {batch size: images/s}
    again: Callable[[], float]  # times the best setting once more (interleaved with the extraction's repeats)


def _lanes_rate(lanes: int, duration: float, prepare: Callable[[int], Callable[[], int]]) -> float:
    """Images/s of ``lanes`` threads each running ``step()`` (which returns the images it did) for
    ``duration`` s; ``prepare(j)`` runs in lane j first (thread settings, a warm-up) and returns its step.
    The clock starts when every lane has warmed up."""
    counts = [0] * lanes
    ready = threading.Barrier(lanes + 1)

    def lane(j: int) -> None:
        step = prepare(j)
        ready.wait()
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            counts[j] += step()

    workers = [threading.Thread(target=lane, args=(j,)) for j in range(lanes)]
    for w in workers:
        w.start()
    ready.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def _best(modes: dict, rate: Callable, batch_sizes: list[int], seconds: float) -> Ceiling:
    """Sweep ``rate(mode, batch size, seconds)`` over every mode and batch size; the best is the ceiling."""
    table = {mode: {bs: rate(mode, bs, seconds) for bs in batch_sizes} for mode in modes}
    best_mode, best_bs = max(((m, bs) for m in table for bs in table[m]), key=lambda mb: table[mb[0]][mb[1]])
    return Ceiling(table[best_mode][best_bs], best_mode, best_bs, table, lambda: rate(best_mode, best_bs, seconds))


def model_ceiling(extractor, batch_sizes: list[int], seconds: float = 2.0) -> Ceiling:
    """Images/s of the PyTorch backbone alone on random tensors, at the best batch size and way of using the CPUs.

    Model settings as in the extraction (device, channels-last, inference mode,
    fp16 autocast on CUDA). On a CPU two ways are timed: one batch at a time
    on all the CPUs (torch's intra-op threads), and the extraction's lanes
    (one model per lane, each on its own threads); the best of all counts as
    the ceiling. Each setting gets ``seconds`` of timed runs after a warm-up;
    ``Ceiling.again()`` times the best setting once more.
    """
    import torch

    from toptune_core.system import available_cpus, torch_threads

    model = extractor.model
    device = next(model.parameters()).device
    size = tuple(extractor.data_config["input_size"])
    plan = extractor.plan()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if device.type == "cuda":
        modes = {"one batch at a time on the GPU": (1, 0)}
    else:
        cpus = available_cpus()
        modes = {f"one batch at a time, {cpus} torch thread(s)": (1, cpus)}
        if plan.lanes > 1:
            modes[f"{plan.lanes} lanes of {plan.threads} torch thread(s)"] = (plan.lanes, plan.threads)

    def rate(mode: str, bs: int, duration: float) -> float:
        lanes, threads = modes[mode]

        def prepare(j: int):
            if threads:
                torch.set_num_threads(threads)
            x = torch.randn(bs, *size, device=device)
            if extractor.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            def step() -> int:
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16,
                                                            enabled=device.type == "cuda"):
                    model(x)
                sync()
                return bs

            step()  # warm-up (oneDNN / cuDNN pick their kernels)
            return step

        with (torch_threads(torch.get_num_threads()) if device.type == "cpu" else _nothing()):  # restores threads
            return _lanes_rate(lanes, duration, prepare)

    return _best(modes, rate, batch_sizes, seconds)


def graph_ceiling(engine: str, graph, input_size: int, lanes: int, cpus: int, batch_sizes: list[int],
                  seconds: float = 2.0, precision: str = "f32") -> Ceiling:
    """Images/s of a graph engine (``features.engines``) in ``precision`` alone on random 8-bit pixels
    (normalisation is part of the graph), the best of: the extraction's lanes (``lanes`` callers of one thread
    each on one engine), and one batch at a time on ``cpus`` threads."""
    from toptune_core.features.engines import open_graph_engine

    modes = {f"one batch at a time, {cpus} thread(s)": (1, cpus)}
    if lanes > 1:
        modes[f"{lanes} lanes of 1 thread"] = (lanes, 1)
    runners = {mode: open_graph_engine(engine, graph, threads=threads, lanes=n, precision=precision)
               for mode, (n, threads) in modes.items()}

    def rate(mode: str, bs: int, duration: float) -> float:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (bs, input_size, input_size, 3), dtype=np.uint8)

        def prepare(j: int):
            runners[mode].run(x)  # warm-up
            return lambda: (runners[mode].run(x), bs)[1]

        return _lanes_rate(modes[mode][0], duration, prepare)

    return _best(modes, rate, batch_sizes, seconds)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def naive_rate(paths: list[str], backbone: str, device, batch_size: int = 16,
               settings: Optional[Settings] = None) -> tuple[float, Optional[object]]:
    """Images/s the Eden notebook's way: per photo PIL open + full decode + torchvision transform; NCHW; no_grad.

    Uses torch's default thread count and a separate, plain (NCHW) copy of the
    model, as a notebook would. ``settings``: where the backbone's data config is remembered. Returns
    (rate, features).
    """
    import torch
    from PIL import Image

    from toptune_core.backbones.catalogue import create_model
    from toptune_core.backbones.pixels import eval_data_config, eval_transform

    model = create_model(backbone, num_classes=0).to(device)
    transform = eval_transform(eval_data_config(backbone, settings))
    with torch.no_grad():
        model(transform(Image.open(paths[0]).convert("RGB"))[None].to(device))  # warm-up, as the extraction has
        start = time.perf_counter()
        feats = []
        for i in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + batch_size]])
            feats.append(model(batch.to(device)).cpu().numpy())
        seconds = time.perf_counter() - start
    del model
    return len(paths) / seconds, np.concatenate(feats)
