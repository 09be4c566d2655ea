"""Write the embedded CIFAR-100 subset as an ImageFolder tree of JPEG photographs, for the tests and the
benchmarks of pipeline/imagefolder.py (a stand-in for ImageNet's layout, not for reporting results).

    python data/imagefolder/build.py --out DIR [--size 96] [--per-class N] [--quality 90]

x_train becomes DIR/train/, x_test DIR/val/; image i of a split is CLASS/{i:05d}.jpg (i: its index in the
.npz, so every file maps back to its array row), upscaled from 32 px to --size px (bicubic) and encoded
by torchvision. --per-class keeps the first N images of each class in each split. Same inputs, same
bytes; the tree appears under DIR only when complete.
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))
from pipeline.data import EMBEDDED  # noqa: E402
from pipeline.errors import TfkdError  # noqa: E402

SPLITS = (("train", "x_train", "y_train"), ("val", "x_test", "y_test"))


def _kept(labels, per_class):
    """Indices of the first `per_class` images of each class (all if None), in dataset order."""
    if per_class is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def _write_split(folder, images, labels, classes, size, per_class, quality):
    for name in classes:
        os.makedirs(folder / name)
    for i in _kept(labels, per_class):
        img = torch.from_numpy(images[i]).permute(2, 0, 1)
        img = F.resize(img, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        (folder / classes[labels[i]] / f"{i:05d}.jpg").write_bytes(encode_jpeg(img, quality=quality).numpy().tobytes())


def build(out, size=96, per_class=None, quality=90, src=EMBEDDED):
    """Write the tree to `out` (which must not exist); returns the number of files per split."""
    out = Path(out)
    if out.exists():
        raise TfkdError(f"{out} exists: remove it or give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    try:
        with np.load(src) as z:
            classes = [str(c) for c in z["classes"]]
            for split, x, y in SPLITS:
                _write_split(tmp / split, z[x], z[y], classes, size, per_class, quality)
        counts = {split: sum(1 for _ in (tmp / split).rglob("*.jpg")) for split, _, _ in SPLITS}
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the folder to create (train/ and val/ inside)")
    ap.add_argument("--size", type=int, default=96, help="side of the square JPEGs, in pixels")
    ap.add_argument("--per-class", type=int, default=None, help="keep the first N images of each class per split")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
    a = ap.parse_args()
    try:
        counts = build(a.out, a.size, a.per_class, a.quality)
    except TfkdError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {a.out}: {counts['train']} train / {counts['val']} val JPEGs of {a.size} px")


if __name__ == "__main__":
    main()
