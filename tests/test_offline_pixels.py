"""The offline page's preprocessing (``portable/web/pixels.js``, ``views.js``) run by Node.js gives Python's pixels
byte for byte: timm's eval resize (Pillow's bicubic, fixed point) and centre crop, and the 8 views."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toptune_core.backbones.pixels import eval_data_config, eval_resize_crop
from toptune_core.config import DEMO_DATASET
from toptune_core.features.views import VIEW_SETS, cut
from toptune_core.portable.offline import WEB

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")

SCRIPT = """
import { resizeCrop } from "%(web)s/pixels.js";
import { cutViews } from "%(web)s/views.js";
import fs from "fs";
const job = JSON.parse(fs.readFileSync(process.argv[2]));
const data = new Uint8Array(fs.readFileSync(job.raw));
const crop = resizeCrop({ width: job.width, height: job.height, data }, job.pre);
fs.writeFileSync(job.out, cutViews(crop, job.pre.input_size, job.steps));
"""


def _js_views(im: Image.Image, pre: dict, tmp_path: Path) -> np.ndarray:
    raw, out, script = tmp_path / "raw.bin", tmp_path / "out.bin", tmp_path / "run.mjs"
    raw.write_bytes(np.asarray(im, dtype=np.uint8).tobytes())
    script.write_text(SCRIPT % {"web": WEB})
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"raw": str(raw), "out": str(out), "width": im.width, "height": im.height, "pre": pre,
                               "steps": [list(s) for s in VIEW_SETS["dihedral"]]}))
    result = subprocess.run(["node", str(script), str(job)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    size = pre["input_size"]
    return np.frombuffer(out.read_bytes(), dtype=np.uint8).reshape(8, size, size, 3)


@pytest.mark.parametrize("size", [None, (1000, 750), (333, 600)])
def test_the_pages_resize_crop_and_views_are_pythons_byte_for_byte(size, tmp_path):
    cfg = eval_data_config("tf_efficientnet_lite0", resolution=288)
    pre = {"input_size": 288, "resize_side": 329, "interpolation": cfg["interpolation"]}
    im = Image.open(sorted((DEMO_DATASET / "bean_rust").glob("*.jpg"))[0]).convert("RGB")
    if size is not None:  # larger (the resize shrinks) and narrow-tall (another aspect, another crop offset)
        im = im.resize(size, Image.BICUBIC)
    expected = cut(eval_resize_crop(im, cfg)[None], "dihedral")
    assert np.array_equal(_js_views(im, pre, tmp_path), expected)
