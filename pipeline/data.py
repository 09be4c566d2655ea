"""Datasets: `prepare` turns a source (torchvision CIFAR, an .npz, a Tiny ImageNet folder, the embedded subset)
into one validated, fingerprinted .npz; `load` reads that file back and refuses it if its content changed."""
import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import TfkdError, one_line
from pipeline.files import atomic_path

KNOWN = ("embedded", "cifar100", "cifar10", "npz", "tinyimagenet")
EMBEDDED = Path(__file__).resolve().parent.parent / "data/embedded/cifar100-subset.npz"
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

# CIFAR-100 fine label names in label order (alphabetical, as in the official `meta` file), so that an
# .npz import of CIFAR-100, which carries only integer labels, still gets readable class names.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 [N, H, W, C]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list
    fingerprint: str  # sha256 hex of the four arrays, see fingerprint()
    mean: tuple  # per channel, in [0, 1] units, from x_train
    std: tuple
    source: str = ""  # where it was prepared from, for the record and for "rerun prepare" hints
    kind: str = ""  # which prepare source built it

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_size(self):
        return self.x_train.shape[1]

    @property
    def channels(self):
        return self.x_train.shape[3]


def fingerprint(x_train, y_train, x_test, y_test):
    """sha256 over dtype, shape and bytes of each array in this order: equal content <=> equal fingerprint."""
    h = hashlib.sha256()
    for a in (x_train, y_train, x_test, y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def channel_stats(x):
    """Per-channel mean and (population) std of uint8 images in [0, 1] units.

    Sums are exact integers taken in chunks, so the result is deterministic and the full training set is
    never converted to float at once (50,000 CIFAR images would need 1.2 GB as float64)."""
    c = x.shape[3]
    n = x.size // c
    s1, s2 = np.zeros(c, np.int64), np.zeros(c, np.int64)
    for i in range(0, len(x), 4096):
        chunk = x[i:i + 4096].reshape(-1, c).astype(np.int64)
        s1 += chunk.sum(0)
        s2 += (chunk * chunk).sum(0)
    mean = tuple(int(a) / n / 255 for a in s1)
    std = tuple(float(np.sqrt((int(b) * n - int(a) ** 2) / n ** 2)) / 255 for a, b in zip(s1, s2))
    return mean, std


def _is_prepared(path):
    """Whether `path` is a dataset file this code wrote (so preparing again may replace it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "fingerprint" in json.loads(str(z["meta"]))
    except Exception:
        return False


def _check_out(out_path, source, overwrite):
    """Never write over the source, nor over a file the user made, unless asked (--overwrite)."""
    out = Path(out_path)
    if source is not None and out.exists() and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise TfkdError(f"--out {out} is the source file itself: preparing would replace your data; "
                        f"give another --out (default data/prepared/NAME.npz)")
    if out.exists() and not overwrite and not _is_prepared(out):
        raise TfkdError(f"{out} exists and is not a prepared dataset: pass --overwrite to replace it, "
                        f"or give another --out")


def prepare(kind, out_path, source=None, name=None, overwrite=False):
    """Build dataset `kind` (one of KNOWN) from `source`, validate it and write it to `out_path`.

    A file at `out_path` is replaced only if this code made it, or with `overwrite`; never the source."""
    if kind not in KNOWN:
        raise TfkdError(f"unknown dataset '{kind}': choose one of {', '.join(KNOWN)}")
    _check_out(out_path, source, overwrite)
    name = name or kind
    if kind == "embedded":
        path = Path(source) if source else EMBEDDED
        arrays, classes = _read_npz(path, ARRAYS, "restore data/embedded/cifar100-subset.npz from the repository "
                                    "or rebuild it with 'python data/embedded/build.py'")
    elif kind == "npz":
        if source is None:
            raise TfkdError("npz needs --source PATH.npz: an .npz with x_train, y_train, x_test, y_test")
        path = Path(source)
        arrays, classes = _read_npz(path, ARRAYS, "pass --source PATH to an intact .npz with "
                                    "x_train, y_train, x_test, y_test")
    elif kind == "tinyimagenet":
        path, arrays, classes = _read_tinyimagenet(source)
    else:
        path, arrays, classes = _read_torchvision(kind, source)
    dataset = build(name, arrays, classes, source=str(path), where=str(path), kind=kind)
    save(dataset, out_path)
    return dataset


def build(name, arrays, classes=None, source="", where="dataset", kind=""):
    """Validate raw arrays (see _validate) and wrap them as a fingerprinted Dataset with channel statistics."""
    x_train, y_train, x_test, y_test, k = _validate(arrays, where, classes)
    if classes is None:
        classes = list(CIFAR100_CLASSES) if name == "cifar100" and k == 100 else [f"class_{i}" for i in range(k)]
    mean, std = channel_stats(x_train)
    _check_spread(std, x_train, where, "check the images (all blank?) and export the real uint8 pixels")
    return Dataset(name, x_train, y_train, x_test, y_test, list(classes),
                   fingerprint(x_train, y_train, x_test, y_test), mean, std, source, kind)


def _check_spread(std, x, where, fix):
    """Normalisation divides by each channel's std: a constant channel would make every input NaN."""
    flat = [c for c, s in enumerate(std) if s == 0]
    if flat:
        value = int(x[(0,) * (x.ndim - 1) + (flat[0],)])
        raise TfkdError(f"{where}: x_train channel {flat[0]} is constant (every pixel {value}, std 0), so "
                        f"normalising would divide by zero; {fix}")


def save(dataset, out_path):
    """Write `dataset` as an uncompressed .npz (fast to load); it appears under `out_path` only when complete."""
    meta = dict(name=dataset.name, fingerprint=dataset.fingerprint, mean=list(dataset.mean),
                std=list(dataset.std), source=dataset.source, kind=dataset.kind)
    arrays = (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
    with atomic_path(out_path, need=sum(a.nbytes for a in arrays) + (1 << 20)) as tmp:
        # An open file, because np.savez appends ".npz" to a file name that lacks it.
        with open(tmp, "wb") as f:
            np.savez(f, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
                     y_test=dataset.y_test, classes=np.array(dataset.classes, dtype=str),
                     meta=np.array(json.dumps(meta)))


def load(path):
    """Read a file written by prepare(); refuse it if its arrays no longer match the recorded fingerprint."""
    path = Path(path)
    redo = f"run {_rebuild_command(path)} first"
    if not path.is_file():
        raise TfkdError(f"prepared dataset {path} not found: {redo}")
    arrays, classes = _read_npz(path, ARRAYS + ("classes", "meta"), f"rerun 'tfkd prepare {path.stem}'",
                                what="prepared dataset ")
    try:
        meta = json.loads(str(arrays["meta"]))
        ds = Dataset(meta["name"], arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                     classes, meta["fingerprint"], tuple(meta["mean"]), tuple(meta["std"]),
                     meta.get("source", ""), meta.get("kind", ""))
    except (ValueError, KeyError, TypeError) as e:
        raise TfkdError(f"prepared dataset {path} has unreadable meta ({one_line(e)}): "
                        f"rerun 'tfkd prepare {path.stem}'") from None
    if fingerprint(ds.x_train, ds.y_train, ds.x_test, ds.y_test) != ds.fingerprint:
        raise TfkdError(f"prepared dataset {path} does not match its fingerprint (the file was modified or damaged): "
                        f"rerun {_prepare_command(ds)}")
    _check_spread(ds.std, ds.x_train, f"prepared dataset {path}",
                  f"prepare it again from real images ({_prepare_command(ds)})")
    return ds


def _rebuild_command(path):
    """The command that makes a missing prepared file `path` (data/prepared/NAME.npz by default)."""
    out = "" if path == Path("data/prepared") / path.name else f" --out {path}"
    if path.stem in KNOWN and path.stem != "npz":
        return f"'tfkd prepare {path.stem}{out}'"
    # not a built-in kind: an .npz import (`tfkd prepare` alone rebuilds the active profile's dataset)
    return f"'tfkd prepare npz --source YOUR_FILE.npz --name {path.stem}{out}' (or 'tfkd prepare' for the profile's dataset)"


def _prepare_command(ds):
    if ds.kind in ("npz", "tinyimagenet") or (ds.kind and ds.kind != ds.name):
        return f"'tfkd prepare {ds.kind} --source {ds.source} --name {ds.name}'"
    return f"'tfkd prepare {ds.name}'"


def _read_npz(path, keys, fix, what=""):
    """Arrays `keys` (+ optional `classes`) of an .npz, or a one-line TfkdError naming the file and the fix."""
    if not path.is_file():
        raise TfkdError(f"{what}{path} not found: {fix}")
    try:
        z = np.load(path, allow_pickle=False)  # never unpickle: a data file must not run code
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise TfkdError(f"{what}{path} holds a single array, not an .npz with keys {', '.join(keys)}: {fix}")
        with z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise TfkdError(f"{what}{path} lacks key(s) {', '.join(missing)}: it needs {', '.join(keys)}; {fix}")
            arrays = {k: z[k] for k in keys}
            classes = [str(c) for c in z["classes"].reshape(-1)] if "classes" in z.files else None
    except TfkdError:
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as e:
        raise TfkdError(f"cannot read {what}{path} ({one_line(e)}): the file is truncated or corrupt; {fix}") from None
    return arrays, classes


def _validate(arrays, where, classes=None):
    """Check the four arrays; return them as uint8 [N,H,W,C] images and int64 labels, plus the class count."""
    xs = {}
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.dtype != np.uint8:
            raise TfkdError(f"{where}: {key} has dtype {x.dtype}; images must be uint8 (0..255), "
                            "e.g. convert with (x * 255).round().astype(np.uint8)")
        if x.ndim == 3:  # grayscale [N, H, W]
            x = x[..., None]
        if x.ndim != 4:
            raise TfkdError(f"{where}: {key} has shape {x.shape}; expected [N,H,W,C] (channels last) "
                            "or [N,H,W] for grayscale")
        if x.shape[3] not in (1, 3):
            raise TfkdError(f"{where}: {key} has shape {x.shape}; expected 1 or 3 channels last "
                            "(for channels-first data use x.transpose(0, 2, 3, 1))")
        if len(x) == 0:
            raise TfkdError(f"{where}: {key} holds no images; both splits need at least one")
        xs[key] = x
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise TfkdError(f"{where}: x_train images are {xs['x_train'].shape[1:]} but x_test images are "
                        f"{xs['x_test'].shape[1:]}; train and test must have the same image shape")
    ys = {}
    for key, xkey in (("y_train", "x_train"), ("y_test", "x_test")):
        y = arrays[key]
        if y.ndim != 1:
            raise TfkdError(f"{where}: {key} has shape {y.shape}; expected a 1-D vector of class ids")
        if not np.issubdtype(y.dtype, np.integer):
            raise TfkdError(f"{where}: {key} has dtype {y.dtype}; labels must be integers (class ids 0..K-1)")
        if len(y) != len(xs[xkey]):
            raise TfkdError(f"{where}: {key} has {len(y)} labels but {xkey} has {len(xs[xkey])} images; "
                            "they must match")
        if y.min() < 0:
            raise TfkdError(f"{where}: {key} contains negative label {y.min()}; labels must be class ids 0..K-1")
        ys[key] = y.astype(np.int64)
    k = int(ys["y_train"].max()) + 1
    if classes is not None:
        if len(classes) < k:
            raise TfkdError(f"{where}: classes lists {len(classes)} names but y_train goes up to {k - 1}; "
                            "give one name per class")
        k = len(classes)
    present = np.unique(ys["y_train"])
    if len(present) < k:  # K is inferred from the largest label: every class 0..K-1 needs training images
        empty = np.setdiff1d(np.arange(k), present)
        above = present[present > empty[0]]
        shown = ", ".join(map(str, above[:5])) + (", ..." if len(above) > 5 else "")
        if classes is not None and len(above) == 0:
            raise TfkdError(f"{where}: classes lists {len(classes)} names but y_train has no image of "
                            f"{_ranges(empty)}; labels must be 0..K-1 with one name per class that occurs")
        raise TfkdError(f"{where}: y_train has label(s) {shown} but no image of {_ranges(empty)}; labels must "
                        f"be class ids 0..K-1 (K = largest + 1 = {k}) with every class in y_train: fix the "
                        f"stray labels or renumber them, e.g. np.unique(y, return_inverse=True)")
    if ys["y_test"].max() >= k:
        raise TfkdError(f"{where}: y_test contains label {ys['y_test'].max()} but there are only {k} classes "
                        f"(0..{k - 1}, from y_train{' and classes' if classes is not None else ''}); "
                        "every test class must appear in training")
    return xs["x_train"], ys["y_train"], xs["x_test"], ys["y_test"], k


def _ranges(ids):
    """'class 3' / 'classes 3..254' / 'classes 1, 4..6': ids compactly."""
    parts, start = [], None
    for i, v in enumerate(ids):
        if start is None:
            start = v
        if i + 1 == len(ids) or ids[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}..{v}")
            start = None
    return ("class " if len(ids) == 1 else "classes ") + ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "")


def _read_torchvision(kind, source):
    import torchvision  # imported here: it is slow to import and only these two sources need it

    root = Path(source) if source else Path("data/raw") / kind
    if kind == "cifar100":
        fix = "decode the offline copy and import it with 'tfkd prepare npz --source PATH/cifar100.npz --name cifar100'"
        cls = torchvision.datasets.CIFAR100
    else:
        fix = (f"put cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into {root} and rerun, "
               "or import an .npz with 'tfkd prepare npz --source PATH/cifar10.npz --name cifar10'")
        cls = torchvision.datasets.CIFAR10
    try:
        # download=True is a no-op when verified files are already in `root`, so no network is needed then.
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; torchvision raises RuntimeError too
        raise TfkdError(f"cannot download {kind} into {root} (no network? {one_line(e, 80)}): {fix}") from None
    arrays = dict(x_train=np.asarray(train.data), y_train=np.asarray(train.targets),
                  x_test=np.asarray(test.data), y_test=np.asarray(test.targets))
    return root, arrays, list(train.classes)


def _read_tinyimagenet(source):
    """Tiny ImageNet as unzipped: labels follow the *sorted* wnids (as torchvision's ImageFolder would order
    train/), the labelled val/ split becomes the test split (test/ has no labels), names come from words.txt."""
    get = f"download {TINY_URL}, unzip it and pass --source PATH/tiny-imagenet-200"
    if source is None:
        raise TfkdError(f"tinyimagenet needs --source: {get}")
    root = Path(source)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"  # the folder the zip was extracted into is fine too
    if not root.is_dir():
        raise TfkdError(f"Tiny ImageNet folder {root} not found: {get}")
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise TfkdError(f"{wnids_file} not found: pass the tiny-imagenet-200 folder as unzipped "
                        f"(it holds wnids.txt, train/, val/), or {get}")
    wnids = sorted(set(wnids_file.read_text().split()))
    if not wnids:
        raise TfkdError(f"{wnids_file} lists no class ids: re-extract it from tiny-imagenet-200.zip")
    index = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        folder = root / "train" / w / "images"
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise TfkdError(f"{folder} has no images: every class in wnids.txt needs train/<wnid>/images/*.JPEG; "
                            "re-extract tiny-imagenet-200.zip")
        train += [(p, index[w]) for p in files]
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise TfkdError(f"{ann} not found: the val split needs it; re-extract tiny-imagenet-200.zip")
    val = []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise TfkdError(f"{ann} line {n}: expected 'FILE<TAB>WNID...' with a wnid from wnids.txt, got {line[:60]!r}")
        val.append((root / "val" / "images" / parts[0], index[parts[1]]))
    if not val:
        raise TfkdError(f"{ann} lists no images: re-extract tiny-imagenet-200.zip")
    names = _tiny_names(root / "words.txt")
    x_train, y_train = _read_images(train)
    x_test, y_test = _read_images(val)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return root, arrays, [names.get(w, w) for w in wnids]


def _tiny_names(words):
    """wnid -> first synonym from words.txt ('n01443537<TAB>goldfish, Carassius auratus' -> 'goldfish')."""
    if not words.is_file():
        return {}
    names = {}
    for line in words.read_text(errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        if text.strip():
            names[wnid.strip()] = text.split(",")[0].strip()
    return names


def _read_images(items, size=64):
    from PIL import Image  # comes with torchvision

    x = np.empty((len(items), size, size, 3), np.uint8)
    for i, (p, _) in enumerate(items):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")  # Tiny ImageNet has some grayscale JPEGs
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                x[i] = np.asarray(im)
        except (OSError, ValueError) as e:  # missing, truncated, or not an image (UnidentifiedImageError is OSError)
            raise TfkdError(f"cannot read image {p} ({one_line(e, 80)}): re-extract tiny-imagenet-200.zip") from None
    return x, np.array([y for _, y in items], np.int64)
