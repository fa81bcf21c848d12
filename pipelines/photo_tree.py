"""Build an ImageNet-like JPEG class-folder tree of any size from real photos shipped in Python packages.

For throughput work at ImageNet resolution where ImageNet itself cannot be had: each output image is a random
crop of a real photo (scikit-image, scikit-learn, matplotlib sample data), rescaled to ImageNet's typical size,
flipped and colour-jittered, and saved as a JPEG. Labels are arbitrary (class k draws from photo k mod #photos);
the tree is for measuring loaders, not for learning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageEnhance

from .errors import ConfigError

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "horse.png")
IMAGENET_TYPICAL_SIZE = (500, 375)


def shipped_photo_paths() -> list:
    """Paths of the real RGB photos that the installed packages carry."""
    paths = []
    try:
        import skimage.data
        folder = Path(skimage.data.__file__).parent
        paths += [folder / name for name in SKIMAGE_PHOTOS if (folder / name).exists()]
    except ImportError:
        pass
    try:
        import sklearn.datasets
        folder = Path(sklearn.datasets.__file__).parent / "images"
        paths += sorted(folder.glob("*.jpg"))
    except ImportError:
        pass
    import matplotlib
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.exists():
        paths.append(hopper)
    return paths


def _variant(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = photo.size
    scale = rng.uniform(0.35, 1.0)
    cw, ch = max(32, int(width * scale)), max(32, int(height * scale * rng.uniform(0.75, 1.33)))
    cw, ch = min(cw, width), min(ch, height)
    left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    out_size = IMAGENET_TYPICAL_SIZE if rng.random() < 0.7 else IMAGENET_TYPICAL_SIZE[::-1]
    image = photo.crop((left, top, left + cw, top + ch)).resize(out_size, Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))


def build_photo_tree(out: Path, *, classes: int = 10, train_per_class: int = 100, val_per_class: int = 20,
                     quality: int = 90, seed: int = 0, force: bool = False,
                     progress: Optional[Callable[[int], None]] = None) -> Path:
    """Write ``out/{train,val}/class_XXX/*.jpg``; returns `out`. Refuses a non-empty `out` unless `force`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty; pass force=True to write into it")
    photos = [Image.open(p).convert("RGB") for p in shipped_photo_paths()]
    if not photos:
        raise ConfigError("no shipped photos found: install scikit-image and scikit-learn (pip install 'rkd[photos]')")
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for cls in range(classes):
            folder = out / split / f"class_{cls:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            photo = photos[cls % len(photos)]
            for i in range(per_class):
                _variant(photo, rng).save(folder / f"{split}_{cls:03d}_{i:05d}.jpg", quality=quality)
                if progress:
                    progress(1)
    return out
