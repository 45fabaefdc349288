"""Eden Library downloads as they really are: camera-size photos in Eden's three folder layouts, end to end.

The zips are made here from the repository's demo photos (upscaled to several
megapixels with sensor noise, stored rotated with an EXIF orientation, as a
camera does) and laid out as Eden's: the old layout (``DSC_xxxx.JPG`` directly
in the dataset folder, with a metadata file), the new one (``images/``) and the
2023 names. A real server on 127.0.0.1 serves them; they download together,
unpack, scan and top-tune with the real backbone.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.eden_server import EdenServer, serve, url_path, zip_bytes
from toptune_core.bench.camera import make_camera_photos
from toptune_core.config import DEMO_DATASET
from toptune_core.data.dataset import eden_label, load_dataset
from toptune_core.data.eden import download_eden_datasets
from toptune_core.data.eden_catalogue import EDEN_CATALOGUE, EDEN_PRESETS, find
from toptune_core.data.images import load_rgb

PER_CLASS = 12
#: Eden folder -> (demo class its photos come from, upright size, file name pattern inside the folder)
DATASETS = {
    "Black nightsade-220519-Weed-zz-V1-20210225102034": ("bean_rust", (4000, 3000), "DSC_{i:04d}.JPG"),
    "Cucumber-Cucumis_sativus-Healthy-PRX-RGB-NA-20210607": ("healthy", (3264, 2448), "images/IMG_{i:04d}.jpg"),
    "Velvet leaf-Abutilon theophrasti-220519-Weed-zz": ("angular_leaf_spot", (3000, 2000), "DSC_{i:04d}.JPG"),
}
OLD, NEW, Y2023 = DATASETS


def eden_zip(name: str, folder: Path) -> tuple[bytes, dict[str, bytes]]:
    """The zip of one dataset as Eden lays it out, and the files its dataset folder must hold once unpacked."""
    demo_class, size, pattern = DATASETS[name]
    photos = sorted((DEMO_DATASET / demo_class).glob("*.jpg"))[:PER_CLASS]
    made = make_camera_photos([str(p) for p in photos], folder, size=size, name=pattern.replace("images/", ""),
                              orientation=6, seed=len(name))
    files = {("images/" if pattern.startswith("images/") else "") + Path(p).name: Path(p).read_bytes() for p in made}
    if find(name).layout == "new":  # the new layout's zip holds images/ at the top
        return zip_bytes(files), files
    files[f"{name}.csv"] = ("file,camera\n" + "".join(f"{Path(p).name},NIKON D3400\n" for p in made)).encode()
    return zip_bytes({f"{name}/{k}": v for k, v in files.items()}), files  # the folder itself, then the photos


@pytest.fixture(scope="module")
def eden_zips(tmp_path_factory) -> dict[str, tuple[bytes, dict[str, bytes]]]:
    root = tmp_path_factory.mktemp("eden_zips")
    return {name: eden_zip(name, root / str(i)) for i, name in enumerate(DATASETS)}


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_made_zips_are_like_edens(eden_zips):
    assert [find(n).layout for n in DATASETS] == ["old", "new", "2023"]
    for name, (data, files) in eden_zips.items():
        photos = [k for k in files if k.lower().endswith((".jpg", ".jpeg"))]
        assert len(photos) == PER_CLASS and len(data) > PER_CLASS * 1_000_000, "megabytes a photo, as a camera's"
    old_photo = eden_zips[OLD][1]["DSC_0000.JPG"]
    with Image.open(io.BytesIO(old_photo)) as im:
        assert im.size == (3000, 4000) and im.getexif()[0x0112] == 6  # stored a quarter turn round
    assert load_rgb(old_photo, min_size=256).size[0] > load_rgb(old_photo, min_size=256).size[1], "upright: landscape"


def test_realistic_eden_zips_download_together_unpack_and_top_tune(eden_zips, tmp_path):
    from toptune_core.experiment import run_toptuning
    from toptune_core.features.cache import FeatureCache
    from toptune_core.runs.store import RunStore

    total = sum(len(data) for data, _ in eden_zips.values())
    events: list[tuple[int, Optional[int], float]] = []
    with serve(EdenServer(rate=40e6)) as server:  # 40 MB/s a download: about a second each
        for name, (data, _) in eden_zips.items():
            server.serve_zip(name, data)
        combined = download_eden_datasets(list(DATASETS), tmp_path, base_url=server.base_url,
                                          progress=lambda d, t, r: events.append((d, t, r)))
    assert server.max_active == len(DATASETS), "the datasets downloaded at the same time"
    assert sorted(p for p, _ in server.requests) == sorted(url_path(n) for n in DATASETS)
    done = [d for d, _, _ in events]
    assert done == sorted(done) and done[-1] == total, "one progress over all the datasets"
    assert events[-1][1] == total and events[-1][2] > 1e6
    for name, (_, files) in eden_zips.items():
        assert files_under(combined / name) == files, f"{name} unpacked as Eden lays it out"

    ds = load_dataset(combined)
    assert ds.layout == "eden" and sorted(ds.classes) == sorted(eden_label(n) for n in DATASETS)
    assert set(ds.class_counts().values()) == {PER_CLASS}
    assert sorted(path for path, _ in ds.skipped) == sorted(f"{n}/{n}.csv" for n in (OLD, Y2023))
    run = run_toptuning(combined, store=RunStore(tmp_path / "runs"), cache=FeatureCache(tmp_path / "features"))
    assert run.status == "completed" and run.split["unreadable"] == []
    n_test = run.split["n_test"]  # about a quarter of 36: each photo's side is fixed by its content (data.split)
    assert 3 <= n_test <= 18 and run.metrics["accuracy"] * n_test >= n_test - 2, run.metrics["accuracy"]


def run_cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "toptune_core", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_a_killed_download_resumes_where_it_stopped(eden_zips, subprocess_env, toptune_home):
    data, files = eden_zips[OLD]
    part = toptune_home / "downloads" / f"{OLD}.zip.part"
    with serve(EdenServer(rate=4e6)) as server:  # 4 MB/s: the download takes seconds
        server.serve_zip(OLD, data)
        first = run_cli(["eden", "download", OLD, "--url", server.base_url], subprocess_env)
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size > 2_000_000):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
        kept = part.stat().st_size
        assert 0 < kept < len(data) and not (toptune_home / "eden" / OLD).exists()

        server.rate = None
        second = run_cli(["eden", "download", OLD, "--url", server.base_url], subprocess_env)
        out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert server.requests[-1] == (url_path(OLD), f"bytes={kept}-"), "resumed with a Range request"
    folder = Path(out.strip().splitlines()[-1])
    assert files_under(folder / OLD) == files and not part.exists()
    assert "MB/s" in err and "download:" in err, "a progress bar with the rate"


def test_eden_list_prints_the_whole_catalogue(subprocess_env):
    out = subprocess.run([sys.executable, "-m", "toptune_core", "eden", "list"], cwd=REPO, env=subprocess_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names = out.stdout.splitlines()
    assert len(names) >= 26 and names == [d.name for d in EDEN_CATALOGUE]
    assert set(EDEN_PRESETS["top-tuning"].names) <= set(names)
    weeds = subprocess.run([sys.executable, "-m", "toptune_core", "eden", "list", "--search", "weed"], cwd=REPO,
                           env=subprocess_env, capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert weeds and all("Weed" in n for n in weeds) and len(weeds) < len(names)
