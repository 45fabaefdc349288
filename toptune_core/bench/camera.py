"""Camera photos made from a dataset's photos: several megapixels, camera-like detail, EXIF orientation.

The benchmark times extraction on them; the tests serve them in Eden-style zips
(Eden's photos are full-resolution camera JPEGs, ``DSC_xxxx.JPG``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CAMERA_SIZE = (4032, 3024)  # a 12.2-megapixel 4:3 phone photo

#: EXIF tags (Orientation, Make, Model).
_ORIENTATION, _MAKE, _MODEL = 0x0112, 0x010F, 0x0110


def make_camera_photos(paths: list[str], dest: Path, size: tuple[int, int] = CAMERA_SIZE, quality: int = 92,
                       seed: int = 0, *, name: str = "camera_{i:03d}.jpg", orientation: int = 1,
                       camera: tuple[str, str] = ("NIKON CORPORATION", "NIKON D3400")) -> list[str]:
    """JPEGs made from dataset photos, standing in for camera originals; returns their paths.

    Each photo is upscaled (bicubic) to ``size`` (width, height, as it is seen
    upright) and given sensor-like noise, so that the files have camera-like
    detail and size (several MB; a smooth upscale would compress to a fraction
    of that and decode unrealistically fast). ``name`` is the file name pattern
    (``{i}`` the photo's number). ``orientation`` 6 stores the pixels as a camera
    held upright does: rotated a quarter turn, with EXIF Orientation 6 saying so
    (1: stored upright). The EXIF also names the ``camera`` (make, model).
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
        photo = Image.fromarray(big.astype(np.uint8), "RGB")
        if orientation == 6:  # the sensor's rows run down the upright photo's right-hand side
            photo = photo.transpose(Image.Transpose.ROTATE_90)
        elif orientation != 1:
            raise ValueError(f"orientation {orientation} is not made here (1 or 6)")
        exif = Image.Exif()
        exif[_ORIENTATION], exif[_MAKE], exif[_MODEL] = orientation, camera[0], camera[1]
        target = dest / name.format(i=i)
        photo.save(target, quality=quality, subsampling="4:2:0", exif=exif.tobytes())
        out.append(str(target))
    return out
