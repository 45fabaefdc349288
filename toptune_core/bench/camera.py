"""12-megapixel camera photos made from a dataset's photos, for timing extraction on camera originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CAMERA_SIZE = (4032, 3024)  # a 12.2-megapixel 4:3 phone photo


def make_camera_photos(paths: list[str], dest: Path, size: tuple[int, int] = CAMERA_SIZE, quality: int = 92,
                       seed: int = 0) -> list[str]:
    """12-megapixel JPEGs made from dataset photos, standing in for camera originals.

    Each photo is upscaled (bicubic) to ``size`` and given sensor-like noise, so
    that the files have camera-like detail and size (several MB; a smooth
    upscale would compress to a fraction of that and decode unrealistically fast).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 6.0, (size[1], size[0], 3)).astype(np.float32)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            big = np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)
        big += noise
        np.clip(big, 0, 255, out=big)
        target = dest / f"camera_{i:03d}.jpg"
        Image.fromarray(big.astype(np.uint8), "RGB").save(target, quality=quality, subsampling="4:2:0")
        out.append(str(target))
    return out
