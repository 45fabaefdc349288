"""A model that travels: the exported zip, unpacked elsewhere and run with ``python -I predict.py`` (no toptune
on the path), gives what ``python -m toptune_core predict`` gives; and a cold ``predict`` process imports
neither torch nor scikit-learn. Real runs on real leaf photos; real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from PIL import Image

from tests.conftest import REPO, copy_subset
from toptune_core.config import DEMO_DATASET
from toptune_core.experiment import run_experiment, run_toptuning
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.runs.store import RunStore


def _photos(tmp_path: Path) -> list[str]:
    """Held-out-like leaf photos of every class, a 2-MP camera-sized one (draft decoding), and a coffee cup."""
    import skimage.data

    photos = [str(p) for p in sorted(DEMO_DATASET.glob("*/*.jpg"))[25::70]]
    big = Image.open(photos[0]).convert("RGB").resize((1600, 1200), Image.BICUBIC)
    big.save(tmp_path / "camera.jpg", quality=92)
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg", quality=92)
    return photos + [str(tmp_path / "camera.jpg"), str(tmp_path / "coffee.jpg")]


def _predict_command(run_id: str, photos: list[str], env: dict, tmp_path: Path) -> tuple[list[dict], list[str]]:
    """``predict --json`` in a new process; also which heavy modules that process imported."""
    out = tmp_path / "predict.json"
    code = ("import json, sys; from toptune_core.cli.main import main; "
            f"rc = main(['predict', '--run', {run_id!r}, '--json', {str(out)!r}, *{photos!r}]); "
            "print(json.dumps(sorted(m for m in ('torch', 'sklearn', 'pandas', 'timm') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())["predictions"], json.loads(result.stdout.strip().splitlines()[-1])


def _unzipped_predict(zip_path: Path, photos: list[str], tmp_path: Path) -> list[dict]:
    """The zip unpacked in an empty folder and its predict.py run isolated: no toptune, no PYTHONPATH."""
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(folder)
    page = ["offline"] if (folder / "offline").is_dir() else []  # a top-tuned run's offline page (test_browser_field)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["README.md", "backbone.onnx", "classifier.onnx",
                                                              "familiarity.npz", "model.json", "predict.py", *page])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-I", "predict.py", *photos], env=env, capture_output=True, text=True,
                            cwd=folder)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _assert_same(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a["path"] == b["path"] and a["label"] == b["label"] and a["unknown"] == b["unknown"]
        assert a["top"][0][0] == b["top"][0][0]
        pa, pb = dict(a["top"]), dict(b["top"])
        assert pa.keys() == pb.keys() and max(abs(pa[c] - pb[c]) for c in pa) <= 1e-5
        assert abs(a["familiarity"] - b["familiarity"]) <= 1e-6


def _export(run_id: str, env: dict, tmp_path: Path) -> Path:
    out = tmp_path / "export" / "model.zip"
    result = subprocess.run([sys.executable, "-m", "toptune_core", "export", "--run", run_id, str(out)], env=env,
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return out


def test_exported_toptuned_model_predicts_like_the_predict_command(small_dataset, subprocess_env, tmp_path):
    subprocess_env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path (ONNX Runtime) also on a machine with a GPU
    run = run_toptuning(small_dataset, extractor=FeatureExtractor("tf_efficientnet_lite0", device="cpu"))
    assert "fell back" not in run.timings.get("engine_note", "") and run.timings["engine"] == "onnxruntime"
    photos = _photos(tmp_path)
    ours, heavy = _predict_command(run.id, photos, subprocess_env, tmp_path)
    assert heavy == []  # the cold path: ONNX Runtime, NumPy and Pillow only
    assert any(p["unknown"] for p in ours) and not all(p["unknown"] for p in ours)  # the coffee cup is refused
    theirs = _unzipped_predict(_export(run.id, subprocess_env, tmp_path), photos, tmp_path)
    _assert_same(ours, theirs)
    assert theirs[-1]["label"] is None  # not recognised: no label


def test_exported_finetuned_model_predicts_like_the_predict_command(tmp_path, subprocess_env):
    from toptune_core.methods.finetuner import FineTuner

    data = copy_subset(DEMO_DATASET, tmp_path / "beans", 8)
    tiny = FineTuner(epochs=1, head_epochs=0, batch_size=8, freeze_blocks=5, val_fraction=0.0, budget_seconds=None)
    run = run_experiment(tiny, data, store=RunStore())
    photos = _photos(tmp_path)[:4]
    subprocess_env["CUDA_VISIBLE_DEVICES"] = ""  # fp32 on the CPU, as the exported network runs
    ours, _ = _predict_command(run.id, photos, subprocess_env, tmp_path)
    _assert_same(ours, _unzipped_predict(_export(run.id, subprocess_env, tmp_path), photos, tmp_path))


def test_export_of_a_run_that_does_not_exist_is_one_line(subprocess_env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "toptune_core", "export", "--run", "nope", str(tmp_path / "m.zip")],
                            env=subprocess_env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: No run with id 'nope'")
    assert not (tmp_path / "m.zip").exists()
