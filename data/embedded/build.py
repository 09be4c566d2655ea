"""Build data/embedded/cifar100-subset.npz, the small CIFAR-100 subset the tests and `tfkd prepare embedded` use.

    python data/embedded/build.py --src PATH/cifar100.npz   (or --src FOLDER_WITH_DECODE_PY_AND_XZ_PIECES)

Subset: the 20 fine classes 0, 5, ..., 95 (relabelled 0..19 in that order), the first 80 training and the
first 20 test images of each, kept in dataset order. The output is byte-for-byte deterministic.
"""
import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))
from pipeline.data import CIFAR100_CLASSES  # noqa: E402

SOURCE_LABELS = np.arange(0, 100, 5)
N_TRAIN, N_TEST = 80, 20


def load_full(src):
    """The full CIFAR-100 as a dict of arrays, from its .npz or by running decode.py beside the xz pieces."""
    src = Path(src)
    if src.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, str(src / "decode.py"), tmp, "--src", str(src)], check=True)
            with np.load(Path(tmp) / "cifar100.npz") as z:
                return {k: z[k] for k in z.files}
    with np.load(src) as z:
        return {k: z[k] for k in z.files}


def subset(full):
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        y = full["y_" + split]
        idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in SOURCE_LABELS]))  # dataset order
        relabel = np.full(100, -1, np.int64)
        relabel[SOURCE_LABELS] = np.arange(len(SOURCE_LABELS))
        out["x_" + split] = np.ascontiguousarray(full["x_" + split][idx], dtype=np.uint8)
        out["y_" + split] = relabel[y[idx]]
    out["classes"] = np.array([CIFAR100_CLASSES[c] for c in SOURCE_LABELS])
    out["source_labels"] = SOURCE_LABELS.astype(np.int64)
    return out


def save_deterministic(path, arrays):
    """Like np.savez_compressed, but with fixed zip timestamps (numpy stamps the current time) so rebuilding
    gives the same bytes."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    tmp.replace(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True,
                    help="full CIFAR-100 .npz (from decode.py) or the folder holding decode.py and the xz pieces")
    ap.add_argument("--out", default=str(HERE / "cifar100-subset.npz"))
    a = ap.parse_args()
    if not Path(a.src).exists():
        sys.exit(f"{a.src} not found: pass --src PATH/cifar100.npz or the folder with the CIFAR-100 xz pieces")
    sub = subset(load_full(a.src))
    save_deterministic(Path(a.out), sub)
    print(f"wrote {a.out}: {len(sub['x_train'])} train / {len(sub['x_test'])} test images, "
          f"{Path(a.out).stat().st_size} bytes")


if __name__ == "__main__":
    main()
