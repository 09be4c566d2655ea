"""Streaming ImageFolder data (ImageNet-size): an index of the tree, and views decoded from the files.

A CIFAR-size dataset lives on the device (data.py, train.DeviceData); 1.28 M ImageNet JPEGs (~140 GB)
cannot. Here DataLoader workers read the files and make the views, and every random number is still a
pure function of (run key, epoch, sample index) as in augment.py, with the image size as the only other
input: a sample's view depends neither on its batch, nor on the worker count, nor on the rank split, so a
teacher's cached logits keep matching the view a student sees.

- index_tree() lists ROOT/{train,val}/CLASS/... once into a small JSON index with a fingerprint;
  load_index() reads it back.
- Views, the map-style dataset: key (epoch, i) -> (view, label, i), the view uint8 [3, size, size] (CHW).
  Training views are torchvision's RandomResizedCrop + horizontal flip with counter-based parameters
  (train_params()); evaluation views Resize(resize) + CenterCrop(size). Normalisation stays on the
  device: augment.normalize(x.permute(0, 2, 3, 1), mean, std) takes a CHW batch without a copy.
- loader(): the DataLoader. Its batch sampler gives each rank its share of each global batch of the
  epoch order exactly as World.shard cuts it in train.fit; a worker's TfkdError reaches the caller as
  its one line.
- decode="device": workers only read the bytes, and Views.finish() decodes the batch on the GPU
  (nvjpeg) and applies the same view function there as the workers do on the CPU.
"""
import functools
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F

from . import augment
from .distributed import World
from .errors import TfkdError
from .files import sha256_file, write_text

INDEX_FORMAT, INDEX_VERSION = "tfkd-imagefolder-index", 1
SPLITS = ("train", "val")
# What decode_image reads; other files (READMEs) are skipped, as torchvision's ImageFolder does, and so are
# hidden ones (macOS's ._NAME.jpg beside each copied image).
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SAMPLE = 256  # files whose bytes the fingerprint hashes: ~30 MB of ImageNet, read in well under a minute
SCALE, RATIO, ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 10  # torchvision's RandomResizedCrop defaults

# This module's streams: the flip, then four per crop attempt a, CROP + 4a + (area, aspect, top, left).
FLIP, CROP = 0, 1
STREAMS = CROP + 4 * ATTEMPTS


def _reindex(root="ROOT", out="INDEX"):
    return f"'tfkd prepare imagefolder --source {root} --out {out}'"


# ---- the index ------------------------------------------------------------------------------------

def _class_names(root):
    """The sorted class folder names, the same in every split (else a TfkdError naming the odd one)."""
    names = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise TfkdError(f"ImageFolder root {root} has no {split}/ folder: give the folder that holds "
                            f"train/ and val/, one subfolder per class in each")
        names[split] = {e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")}
    for split, other in (("train", "val"), ("val", "train")):
        odd = sorted(names[split] - names[other])
        if odd:
            raise TfkdError(f"class folder {odd[0]} is in {root / split} but not in {root / other}: "
                            f"add it to {other}/ or remove it from {split}/ (both splits need the same classes)")
    if not names["train"]:
        raise TfkdError(f"{root / 'train'} has no class folders: put each class's images in train/CLASS/")
    return sorted(names["train"])


def _listing(root, split, classes):
    """[(relative path, label, size)] of one split: every image under each class folder, sorted by path."""
    rows = []
    for label, name in enumerate(classes):
        folder = root / split / name
        found = [(os.path.join(d, f), label) for d, _, files in os.walk(folder, followlinks=True)
                 for f in files if f.lower().endswith(SUFFIXES) and not f.startswith(".")]
        if not found:
            raise TfkdError(f"class folder {folder} holds no images ({', '.join(SUFFIXES)}): add its images "
                            f"or remove the class from both splits")
        rows += sorted((Path(p).relative_to(root).as_posix(), label, os.path.getsize(p)) for p, label in found)
    return rows


def sampled(paths, sample=SAMPLE):
    """The fingerprint's content sample: the `sample` paths of smallest sha256, a fixed choice that
    depends only on the listing and spreads over all classes and both splits."""
    return sorted(sorted(paths, key=lambda p: hashlib.sha256(p.encode()).digest())[:sample])


def fingerprint(root, rows, sample=SAMPLE):
    """sha256 over (relative path, label, size) of every file, then over the bytes of the sampled() files.

    It reads `sample` files, not 140 GB. What it cannot see: a file outside the sample rewritten with
    other bytes of the very same size (an in-place edit or re-encode that keeps the byte count). Any
    added, removed, renamed, moved (relabelled) or resized file, and any change to a sampled file, changes it.
    Modification times are left out on purpose: a copy of the tree elsewhere keeps the fingerprint."""
    h = hashlib.sha256(f"{INDEX_FORMAT}/{INDEX_VERSION}\n".encode())
    for row in rows:
        h.update((json.dumps(row) + "\n").encode())
    for path in sampled([p for p, _, _ in rows], sample):
        h.update(f"{json.dumps(path)} {sha256_file(root / path)}\n".encode())
    return h.hexdigest()


def index_tree(root, out_path, sample=SAMPLE):
    """Index the ImageFolder tree `root` (train/ and val/, one folder per class) into `out_path`.

    JSON, not npz: it is a few strings per image (ImageNet: ~60 MB, loaded in ~2 s), readable and
    diffable, and needs no pickle. Labels are the indices of the sorted class folder names. Images are
    not copied. Returns the summary (counts and fingerprint)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise TfkdError(f"ImageFolder root {root} not found: give the folder that holds train/ and val/")
    classes = _class_names(root)
    rows = {split: _listing(root, split, classes) for split in SPLITS}
    doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "root": str(root), "classes": classes,
           "sample": sample, "fingerprint": fingerprint(root, rows["train"] + rows["val"], sample)}
    for split in SPLITS:
        doc[split] = {"count": len(rows[split]), "paths": [p for p, _, _ in rows[split]],
                      "labels": [label for _, label, _ in rows[split]]}
    write_text(out_path, json.dumps(doc))
    return {"index": str(out_path), "root": str(root), "classes": len(classes),
            **{split: len(rows[split]) for split in SPLITS}, "fingerprint": doc["fingerprint"]}


@dataclass(frozen=True)
class Split:
    paths: np.ndarray   # str [N], relative to the index's root (one array: no per-path objects to copy into workers)
    labels: np.ndarray  # int64 [N]

    def __len__(self):
        return len(self.labels)


@dataclass(frozen=True)
class Index:
    path: str
    root: str
    classes: list
    train: Split
    val: Split
    fingerprint: str

    @property
    def num_classes(self):
        return len(self.classes)


def _split(doc, name, k):
    s = doc[name]
    paths, labels = np.array(s["paths"], dtype=str), np.array(s["labels"], dtype=np.int64)
    if not len(paths) == len(labels) == s["count"] or (len(labels) and not 0 <= labels.min() <= labels.max() < k):
        raise ValueError(f"{name}: {len(paths)} paths, {len(labels)} labels, count {s['count']}")
    return Split(paths, labels)


def indexed(path):
    """The root an index file at `path` was made of (resolved), or None if it is not an index."""
    try:
        with open(path) as f:
            doc = json.load(f)
        return os.path.realpath(doc["root"]) if doc.get("format") == INDEX_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_index(path):
    """Read an index written by index_tree(); refuse a missing or damaged one, or one whose root moved."""
    path = str(path)
    if not os.path.isfile(path):
        raise TfkdError(f"ImageFolder index {path} not found: build it with {_reindex(out=path)}")
    try:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("format") != INDEX_FORMAT or doc.get("version") != INDEX_VERSION:
            raise ValueError(f"not a {INDEX_FORMAT} version {INDEX_VERSION}")
        index = Index(path, doc["root"], list(doc["classes"]), _split(doc, "train", len(doc["classes"])),
                      _split(doc, "val", len(doc["classes"])), doc["fingerprint"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TfkdError(f"ImageFolder index {path} is damaged ({_first_line(e)}): build it again with "
                        f"{_reindex(out=path)}") from None
    if not all(os.path.isdir(os.path.join(index.root, split)) for split in SPLITS):
        raise TfkdError(f"ImageFolder index {path}: its image folder {index.root} is gone (moved or deleted?): "
                        f"index the tree where it is now with {_reindex('NEW_ROOT', path)}")
    return index


# ---- counter-based crop parameters and the views ---------------------------------------------------

@functools.lru_cache(maxsize=4)
def epoch_seeds(key, epoch):
    """int64 [STREAMS]: the seeds of this module's streams in one epoch of run `key`.

    Stream s has augment's ORDER seed of the derived key run_key(key, 'imagefolder/s'): augment.seeds
    numbers only the CIFAR streams (pinned by golden tests), and the sha256-derived key keeps these apart."""
    return torch.tensor([augment.seeds(augment.run_key(key, f"imagefolder/{s}"), epoch)[augment.ORDER]
                         for s in range(STREAMS)])


def crop_box(u, height, width, scale=SCALE, ratio=RATIO):
    """torchvision's RandomResizedCrop.get_params with the uniforms `u` (4 per attempt) for its RNG:
    up to ATTEMPTS candidate boxes (area, log-uniform aspect, then position), the first that fits wins,
    else the centre crop of the whole image clamped to the aspect range. Returns (top, left, h, w)."""
    area, lo, hi = height * width, math.log(ratio[0]), math.log(ratio[1])
    for a in range(ATTEMPTS):
        u_area, u_aspect, u_top, u_left = u[4 * a:4 * a + 4]
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(lo + u_aspect * (hi - lo))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    if width / height < min(ratio):
        h, w = round(width / min(ratio)), width
    elif width / height > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def train_params(key, epoch, index, height, width, scale=SCALE, ratio=RATIO):
    """(top, left, h, w, flip) of sample `index`'s training view of a height x width image in `epoch`
    of run `key`: a pure function of these arguments."""
    u = augment.uniform(epoch_seeds(int(key), int(epoch)), torch.tensor(int(index))).tolist()
    return crop_box(u[CROP:], height, width, scale, ratio) + (u[FLIP] < 0.5,)


def train_view(img, params, size):
    """RandomResizedCrop's output for `params` (train_params()): crop, bilinear antialiased resize, flip."""
    top, left, h, w, flip = params
    out = F.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    return F.horizontal_flip(out) if flip else out


def eval_view(img, size, resize):
    """Resize the shorter side to `resize` (bilinear, antialiased), then the centre size x size."""
    return F.center_crop(F.resize(img, [resize], antialias=True), [size])


def _first_line(e):
    text = str(e).strip() or type(e).__name__
    # torchvision's messages start 'decode_jpeg, /path/to/decode_jpeg.cpp:171, ': keep the reason.
    return re.sub(r"^\w+, \S+:\d+, ", "", text.splitlines()[0])


def _bad_image(path, e):
    return TfkdError(f"image {path} cannot be read ({_first_line(e)}): replace or delete the file, "
                     f"then index the tree again")


def read(path):
    """The file's bytes as a uint8 tensor."""
    try:
        return read_file(path)
    except RuntimeError as e:
        raise _bad_image(path, e) from None


def decode(data, path):
    """uint8 [3, H, W] RGB (grey and palette images converted) from a file's bytes."""
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise _bad_image(path, e) from None


class Batch(NamedTuple):
    """One loader step. x: the views uint8 [B, 3, size, size] (decode='cpu'), or the B files' bytes end
    to end, `lengths` bytes each (decode='device'); the samples' labels and indices; their epoch."""
    x: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    epoch: int
    lengths: Optional[torch.Tensor]


class Views(torch.utils.data.Dataset):
    """Map-style: key (epoch, i) -> (view, label, i) of sample i of `split`.

    The key carries the epoch because persistent workers hold their own copy of the dataset: the
    epoch travels with each index from the batch sampler. augmented (default: split == 'train') picks
    the training view, else the evaluation view. decode='device' returns the file's bytes instead of the
    view; finish() decodes and views them on the device."""

    def __init__(self, index, split="train", key=0, augmented=None, size=224, resize=256, scale=SCALE,
                 ratio=RATIO, decode="cpu"):
        if split not in SPLITS or decode not in ("cpu", "device"):
            raise TfkdError(f"Views(split={split!r}, decode={decode!r}): split is one of {', '.join(SPLITS)}, "
                            f"decode is 'cpu' or 'device'")
        self.index, self.split, self.key = index, split, int(key)
        self.data = getattr(index, split)
        self.augmented = split == "train" if augmented is None else augmented
        self.size, self.resize, self.scale, self.ratio, self.decode = size, resize, scale, ratio, decode

    def __len__(self):
        return len(self.data)

    def path(self, i):
        return os.path.join(self.index.root, self.data.paths[i])

    def __getitem__(self, key):
        epoch, i = key
        path = self.path(i)
        data = read(path)
        x = data if self.decode == "device" else self.view(decode(data, path), epoch, i)
        return x, int(self.data.labels[i]), i

    def view(self, img, epoch, i):
        """Sample i's view of its decoded image `img` (on any device)."""
        if not self.augmented:
            return eval_view(img, self.size, self.resize)
        params = train_params(self.key, epoch, i, img.shape[-2], img.shape[-1], self.scale, self.ratio)
        return train_view(img, params, self.size)

    def finish(self, batch, device):
        """A loader Batch as (views uint8 [B, 3, size, size], labels, indices) on `device`."""
        labels, indices = batch.labels.to(device, non_blocking=True), batch.indices.to(device, non_blocking=True)
        if self.decode == "cpu":
            return batch.x.to(device, non_blocking=True), labels, indices
        datas = list(torch.split(batch.x, batch.lengths.tolist()))
        try:
            images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            # Not all plain JPEGs (ImageNet holds a PNG and some CMYK files) or a damaged file: decode
            # them one by one on the CPU, which also names a bad file.
            images = [decode(d, self.path(i)).to(device) for d, i in zip(datas, batch.indices.tolist())]
        views = [self.view(img, batch.epoch, i) for img, i in zip(images, batch.indices.tolist())]
        return torch.stack(views), labels, indices


# ---- the loader -----------------------------------------------------------------------------------

class EpochBatches(torch.utils.data.Sampler):
    """Lists of keys (epoch, i): each step this rank's contiguous share (World.shard) of the next
    global batch of the epoch order (augment.epoch_order, or 0..n-1 unshuffled), as train.fit cuts it.
    The last partial batch is kept; set_epoch() before each epoch."""

    def __init__(self, n, batch_size, key=0, rank=0, world_size=1, shuffle=True, epoch=0):
        last = n % batch_size or batch_size
        if world_size > min(batch_size, last):
            raise TfkdError(f"a batch of {min(batch_size, last)} samples cannot be split over {world_size} ranks "
                            f"(batch_size {batch_size} is the global batch); use fewer processes")
        self.n, self.batch_size, self.key, self.shuffle, self.epoch = n, batch_size, int(key), shuffle, epoch
        self.world = World(rank, world_size)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = augment.epoch_order(self.key, self.epoch, self.n) if self.shuffle else torch.arange(self.n)
        order = order.tolist()
        for start in range(0, self.n, self.batch_size):
            yield [(self.epoch, i) for i in self.world.shard(order[start:start + self.batch_size])]


class _Failure:
    """A worker's TfkdError carried as data: the DataLoader would re-raise it as a many-line traceback."""

    def __init__(self, message):
        self.message = message


class _Fetch(torch.utils.data.Dataset):
    """What the DataLoader indexes: Views' item plus its epoch, or its error as a _Failure."""

    def __init__(self, views):
        self.views = views

    def __len__(self):
        return len(self.views)

    def __getitem__(self, key):
        try:
            return self.views[key] + (key[0],)
        except TfkdError as e:
            return _Failure(str(e))


def _collate(items, raw):
    failure = next((item for item in items if isinstance(item, _Failure)), None)
    if failure is not None:
        return failure
    xs, labels, indices, epochs = zip(*items)
    x, lengths = (torch.cat(xs), torch.tensor([len(x) for x in xs])) if raw else (torch.stack(xs), None)
    return Batch(x, torch.tensor(labels), torch.tensor(indices), epochs[0], lengths)


class Loader(torch.utils.data.DataLoader):
    """A DataLoader of Batches that raises a worker's TfkdError as its one line."""

    def set_epoch(self, epoch):
        self.batch_sampler.set_epoch(epoch)

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, _Failure):
                raise TfkdError(batch.message)
            yield batch


def loader(views, batch_size, rank=0, world_size=1, epoch=0, workers=0, device="cpu", persistent=True,
           shuffle=None):
    """The Loader of `views` for this rank: batch_size is the global batch; shuffle (default:
    views.augmented) orders each epoch by augment.epoch_order(views.key, epoch, n). Memory is pinned
    when `device` is CUDA; workers persist across epochs unless `persistent` is False."""
    sampler = EpochBatches(len(views), batch_size, views.key, rank, world_size,
                           views.augmented if shuffle is None else shuffle, epoch)
    return Loader(_Fetch(views), batch_sampler=sampler, num_workers=workers,
                  collate_fn=functools.partial(_collate, raw=views.decode == "device"),
                  pin_memory=torch.device(device).type == "cuda", persistent_workers=persistent and workers > 0)


def throughput(index, workers, batch_size=64, steps=20, size=224, resize=256, split="train"):
    """Decoded and viewed images/s of loader() over `split` with `workers` workers (CPU decoding).

    The first batch (worker start-up, first reads) is timed apart as startup_s; the rate is over the
    `steps` batches after it."""
    views = Views(index, split, size=size, resize=resize)
    batches = loader(views, batch_size, workers=workers, persistent=False)
    if steps >= len(batches):
        raise TfkdError(f"{split} has {len(batches)} batches of {batch_size}: measure fewer than that "
                        f"(--steps {len(batches) - 1}) or use a smaller --batch-size")
    t0 = time.perf_counter()
    it = iter(batches)
    next(it)
    t1 = time.perf_counter()
    images = sum(len(next(it).indices) for _ in range(steps))
    t2 = time.perf_counter()
    return {"workers": workers, "batch_size": batch_size, "steps": steps, "size": size, "images": images,
            "startup_s": round(t1 - t0, 3), "seconds": round(t2 - t1, 3),
            "images_per_s": round(images / (t2 - t1), 1), "torch_threads": torch.get_num_threads()}


# ---- the data of a run ----------------------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as torchvision's reference normalises


@dataclass(frozen=True)
class Info:
    """What a run records of its streamed dataset (data.Dataset's fields, without the images)."""
    name: str
    fingerprint: str
    classes: list
    y_train: np.ndarray
    y_test: np.ndarray
    channels: int = 3
    kind: str = "imagefolder"

    @property
    def num_classes(self):
        return len(self.classes)


def default_workers(device):
    """DataLoader workers per rank: none on a CPU (the model uses its cores), else a share of the
    node's cores (torchrun's LOCAL_WORLD_SIZE ranks), at most 8 each."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


class FolderData:
    """An indexed ImageFolder as the training loop, the evaluation and cache writing read it
    (train.DeviceData's methods): streamed through loader(), views made by the workers (or decoded
    on the GPU), normalised on the device. Labels and the fingerprint come from the index."""

    streamed = True

    def __init__(self, index, name, device, spec, workers=None):
        self.index, self.device, self.spec = index, device, spec
        self.data = Info(name, index.fingerprint, index.classes, index.train.labels, index.val.labels)
        self.channels_last = device.type == "cuda"
        self.workers = default_workers(device) if workers is None else workers
        self.decode = "device" if device.type == "cuda" else "cpu"
        self.mean = torch.tensor(MEAN, device=device)
        self.std = torch.tensor(STD, device=device)
        self._loaders, self._current = {}, None

    def inputs(self, views):
        """uint8 [B, 3, H, W] views -> the normalised float batch (CHW in, no copy before the cast)."""
        return augment.normalize(views.permute(0, 2, 3, 1), self.mean, self.std, self.channels_last)

    def _loader(self, split, key, batch_size, world, augmented, shuffle):
        """One Loader per way of reading, kept (its workers persist across epochs)."""
        what = (split, key, batch_size, world.rank, world.size, augmented, shuffle)
        if what not in self._loaders:
            spec = self.spec
            views = Views(self.index, split, key, augmented, spec.size, spec.resize, (spec.min_scale, 1.0),
                          decode=self.decode)
            self._loaders[what] = loader(views, batch_size, world.rank, world.size, workers=self.workers,
                                         device=self.device, shuffle=shuffle)
        return self._loaders[what]

    def _read(self, batches, epoch):
        batches.set_epoch(epoch)
        views = batches.dataset.views
        for batch in batches:
            x, y, i = views.finish(batch, self.device)
            yield self.inputs(x), y, i

    def batches(self, key, epoch, batch_size, world):
        """(this rank's sample indices, the global batch's size) of each step; its views wait for
        train_views(). The order and the views are run `key`'s, as DeviceData's are."""
        n = len(self.data.y_train)
        for step, (x, y, index) in enumerate(self._read(self._loader("train", key, batch_size, world, True, True),
                                                                     epoch)):
            self._current = (index, x, y)
            yield index, min(batch_size, n - step * batch_size)

    def train_views(self, index, seeds, spec):
        held, x, y = self._current
        assert held is index, "train_views() takes the indices batches() just gave"
        return x, y

    def test_batches(self, batch_size, world):
        """(normalised evaluation views, labels) of this rank's share of val/, batch by batch."""
        for x, y, _ in self._read(self._loader("val", 0, batch_size, world, False, False), 0):
            yield x, y

    def cache_batches(self, policy, key, epoch, batch_size, world):
        """(first sample, end, this rank's views) of each global batch of train/ in sample order: the
        evaluation view of each image (clean) or run `key`'s training view in `epoch` (replay)."""
        batches = self._loader("train", key, batch_size, world, policy == "replay", False)
        for step, (x, _, _) in enumerate(self._read(batches, epoch)):
            start = step * batch_size
            yield start, min(start + batch_size, len(self.data.y_train)), x
