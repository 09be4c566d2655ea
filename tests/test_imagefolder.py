"""The streaming ImageFolder path: index and fingerprint, counter-based views that match torchvision's
own transforms, rank sharding, and one-line errors for bad files, from a worker too. Trees are built
from the embedded CIFAR-100 subset by data/imagefolder/build.py: 20 classes x 2 images x 2 splits, 64 px."""
import functools
import hashlib
import importlib.util
import json
import math
import shutil

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as F

from conftest import ROOT, one_line_error, tfkd
from pipeline import augment, imagefolder
from pipeline.data import EMBEDDED
from pipeline.distributed import World
from pipeline.errors import TfkdError
from pipeline.imagefolder import Views, index_tree, load_index

_spec = importlib.util.spec_from_file_location("imagefolder_build", ROOT / "data/imagefolder/build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

PER_CLASS, PX, CROP, RESIZE, KEY = 2, 64, 48, 56, 1234

# torchvision 0.29 warns on every decode that TorchCodec will take its image decoders over (see the report).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "imagenet"
    build.build(root, size=PX, per_class=PER_CLASS)
    return root


@pytest.fixture(scope="module")
def index(tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "index.json"
    index_tree(tree, path)
    return load_index(path)


def copy_of(tree, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(tree, dst)
    return dst


def assert_error(call, *needles):
    with pytest.raises(TfkdError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


def train_views(index, **kw):
    return Views(index, "train", key=KEY, size=CROP, **kw)


def all_views(batches, views):
    """{sample index: view} over one pass of a loader of `views`."""
    out = {}
    for batch in batches:
        x, _, idx = views.finish(batch, "cpu")
        out.update(zip(idx.tolist(), x))
    return out


# ---- build.py and the index ------------------------------------------------------------------------

def test_built_tree_holds_the_subsets_photographs_deterministically(tree, tmp_path):
    with np.load(EMBEDDED) as z:
        classes, y, x = list(z["classes"]), z["y_train"], z["x_train"]
    files = sorted((tree / "train").rglob("*.jpg"))
    assert len(files) == len(classes) * PER_CLASS
    for f in files:
        i = int(f.stem)  # the file's row in the .npz
        assert f.parent.name == classes[y[i]]
        img = imagefolder.decode(imagefolder.read(str(f)), f)
        assert img.shape == (3, PX, PX)
        small = F.resize(img, [32, 32], antialias=True).permute(1, 2, 0).int()
        assert (small - torch.from_numpy(x[i]).int()).abs().float().mean() < 12  # the same photograph
    again = tmp_path / "again"
    build.build(again, size=PX, per_class=PER_CLASS)
    digest = lambda root: {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.jpg")}
    assert digest(again) == digest(tree)
    assert_error(lambda: build.build(again), str(again), "exists")


def test_index_counts_labels_and_classes_equal_the_subsets(index, tree):
    with np.load(EMBEDDED) as z:
        classes, labels = [str(c) for c in z["classes"]], {"train": z["y_train"], "val": z["y_test"]}
    assert index.classes == sorted(index.classes) == classes and index.num_classes == 20
    assert index.root == str(tree.resolve())
    for split in ("train", "val"):
        s = getattr(index, split)
        assert len(s) == 20 * PER_CLASS
        assert list(s.paths) == sorted(s.paths) and all(p.startswith(f"{split}/") for p in s.paths)
        rows = [int(p.split("/")[-1][:-4]) for p in s.paths]
        assert s.labels.tolist() == labels[split][rows].tolist()
        assert np.bincount(s.labels).tolist() == [PER_CLASS] * 20


def fp(root, tmp_path, name="i.json"):
    return index_tree(root, tmp_path / name, sample=8)["fingerprint"]


def test_fingerprint_is_stable_and_sees_what_its_docstring_claims(tree, tmp_path):
    base = fp(tree, tmp_path)
    assert fp(tree, tmp_path, "again.json") == base
    moved = copy_of(tree, tmp_path)  # other place, other mtimes: the same data
    (moved / "train" / "apple" / "._00000.jpg").write_bytes(b"macOS metadata")  # hidden: skipped
    (moved / "val" / "bed" / "README.txt").write_text("not an image suffix: skipped")
    assert fp(moved, tmp_path) == base
    listed = load_index(tmp_path / "i.json")
    paths = listed.train.paths.tolist() + listed.val.paths.tolist()
    sample = imagefolder.sampled(paths, 8)
    outside = [p for p in paths if p not in sample]

    def flip_a_byte(path):  # other bytes, same size
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    flip_a_byte(moved / sample[0])
    assert fp(moved, tmp_path) != base
    moved = copy_of(tree, tmp_path, "c2")
    flip_a_byte(moved / outside[0])
    assert fp(moved, tmp_path) == base  # the documented blind spot: same size, not sampled
    with open(moved / outside[1], "ab") as f:
        f.write(b"\0")
    assert fp(moved, tmp_path) != base
    moved = copy_of(tree, tmp_path, "c3")
    f = moved / outside[0]
    f.rename(f.with_name("renamed.jpg"))
    assert fp(moved, tmp_path) != base
    moved = copy_of(tree, tmp_path, "c4")
    f = moved / outside[0]
    other = next(d for d in f.parent.parent.iterdir() if d != f.parent)
    f.rename(other / f.name)  # relabelled
    assert fp(moved, tmp_path) != base
    rows = [("train/a/0.jpg", 0, 10), ("train/b/1.jpg", 1, 10)]
    assert imagefolder.fingerprint(tree, rows, 0) != imagefolder.fingerprint(tree, [rows[0], ("train/b/1.jpg", 0, 10)], 0)


def test_index_errors_are_one_line_with_the_fix(tree, tmp_path):
    moved = copy_of(tree, tmp_path)
    path = tmp_path / "index.json"
    index_tree(moved, path)
    gone = moved.rename(tmp_path / "elsewhere")
    assert_error(lambda: load_index(path), path, moved, "moved", "--source NEW_ROOT --out")
    assert_error(lambda: load_index(tmp_path / "none.json"), "none.json", "not found", "tfkd prepare imagefolder --source")
    text = path.read_text()
    path.write_text(text[:100])
    assert_error(lambda: load_index(path), path, "damaged", "--out")
    for edit, why in ((lambda d: d.update(version=2), "version 1"), (lambda d: d["val"]["labels"].pop(), "val")):
        doc = json.loads(text)
        edit(doc)
        path.write_text(json.dumps(doc))
        assert_error(lambda: load_index(path), path, "damaged", why)
    shutil.rmtree(gone / "val" / "apple")
    assert_error(lambda: index_tree(gone, path), "class folder apple", "train", "val")
    shutil.rmtree(gone / "train" / "apple")
    for f in (gone / "val" / "bed").iterdir():
        f.rename(f.with_suffix(".txt"))  # not an image suffix: skipped, so the class is empty
    assert_error(lambda: index_tree(gone, path), str(gone / "val" / "bed"), "no images")
    assert_error(lambda: index_tree(tmp_path / "nowhere", path), "nowhere", "not found")


# ---- crop parameters -------------------------------------------------------------------------------

SHAPES = ((64, 64), (375, 500), (500, 333), (40, 400))


def test_golden_crop_parameters():
    # Changing any of these changes every ImageFolder view (and invalidates caches made from them).
    assert imagefolder.epoch_seeds(12345, 3)[:4].tolist() == [1504718955, 2104102328, 917947323, 4091280291]
    got = [imagefolder.train_params(12345, e, i, h, w)
           for e, i, h, w in ((0, 0, 375, 500), (3, 7, 500, 333), (1, 1281166, 64, 64), (2, 5, 40, 400))]
    assert got == [(3, 28, 360, 455, False), (104, 16, 366, 286, False), (27, 14, 37, 48, True), (0, 173, 40, 53, False)]
    flips = "".join("1" if imagefolder.train_params(12345, 0, i, 64, 64)[4] else "0" for i in range(32))
    assert flips == "01110011100110110000111110111010"


def test_crop_parameters_stay_within_torchvisions_bounds_and_flip_half_the_time():
    flips, draws = 0, 500
    for height, width in SHAPES:
        area = height * width
        for i in range(draws):
            top, left, h, w, flip = imagefolder.train_params(KEY, 3, i, height, width)
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
            # w and h are each within 0.5 of a box of area in [0.08, 1] * area and aspect in [3/4, 4/3]
            # (the centre-crop fallback too, at these shapes)
            assert (w - .5) * (h - .5) <= area and (w + .5) * (h + .5) >= 0.08 * area, (height, width, h, w)
            assert (w - .5) / (h + .5) <= 4 / 3 and (w + .5) / (h - .5) >= 3 / 4, (height, width, h, w)
            flips += flip
    assert abs(flips / (draws * len(SHAPES)) - 0.5) < 0.04


@functools.lru_cache(maxsize=None)
def fallback_box(height, width):
    """torchvision's centre-crop fallback: no box of twice the image's area ever fits."""
    return tuple(RandomResizedCrop.get_params(torch.empty(3, height, width), [2.0, 2.0], [3 / 4, 4 / 3]))


def test_the_fallback_is_torchvisions_centre_crop():
    for height, width in SHAPES + ((400, 40), (30, 30), (100, 76)):
        box = imagefolder.train_params(KEY, 0, 0, height, width, scale=(2.0, 2.0))[:4]
        assert box == fallback_box(height, width), (height, width)


def crop_stats(boxes, height, width):
    """Per draw: area share, aspect w/h and relative top of the boxes that fitted; whether it fell back."""
    fallback = np.array([tuple(b) == fallback_box(height, width) for b in boxes])
    top, left, h, w = np.array(boxes, dtype=np.float64)[~fallback].T
    return [h * w / (height * width), w / h, top / np.maximum(height - h, 1), fallback]


def test_crop_parameters_follow_torchvisions_distribution():
    """The same statistics as RandomResizedCrop.get_params (torch's RNG) over 3000 draws of each, to 4
    standard errors: area share, aspect (log-uniform: a uniform aspect is 0.028 higher on average),
    position, and the share of fallbacks (most draws on a 40 x 400 image)."""
    torch.manual_seed(0)
    n = 3000
    for height, width in ((375, 500), (40, 400)):
        img = torch.empty(3, height, width)
        ours = crop_stats([imagefolder.train_params(KEY, 0, i, height, width)[:4] for i in range(n)], height, width)
        theirs = crop_stats([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
                            height, width)
        for what, a, b in zip(("area", "aspect", "top", "fallback"), ours, theirs):
            se = math.sqrt(a.var() / len(a) + b.var() / len(b))
            assert abs(a.mean() - b.mean()) <= 4 * se + 1e-9, (height, width, what, a.mean(), b.mean(), se)
    assert 0.3 < ours[3].mean() < 0.9  # the 40 x 400 image exercised the fallback


# ---- views -----------------------------------------------------------------------------------------

def test_training_view_is_torchvisions_resized_crop_with_those_parameters(index):
    views = train_views(index)
    for i in range(0, len(views), 7):
        img = imagefolder.decode(imagefolder.read(views.path(i)), views.path(i))
        for img_ in (img, img[:, 8:48, :]):  # square and 40 x 64
            top, left, h, w, flip = imagefolder.train_params(KEY, 5, i, *img_.shape[-2:])
            want = F.resized_crop(img_, top, left, h, w, [CROP, CROP], antialias=True)
            want = F.horizontal_flip(want) if flip else want
            assert torch.equal(views.view(img_, 5, i), want)
        assert torch.equal(views[5, i][0], views.view(img, 5, i))


def test_eval_view_equals_torchvisions_resize_and_centre_crop_exactly(index):
    # Exactly: the same torchvision ops (bilinear, antialiased) in the same order on the same tensor.
    views = Views(index, "val", size=CROP, resize=RESIZE)
    reference = v2.Compose([v2.Resize(RESIZE), v2.CenterCrop(CROP)])
    assert not views.augmented
    for i in range(0, len(views), 5):
        img = imagefolder.decode(imagefolder.read(views.path(i)), views.path(i))
        x, label, j = views[0, i]
        assert x.shape == (3, CROP, CROP) and x.dtype == torch.uint8 and (label, j) == (index.val.labels[i], i)
        assert torch.equal(x, reference(img))
        assert torch.equal(views.view(img[:, :, 4:60], 0, i), reference(img[:, :, 4:60]))


def test_a_view_is_a_pure_function_of_key_epoch_and_index(index):
    views = train_views(index)
    n = len(views)
    alone = {i: views[2, i][0] for i in range(n)}
    persistent = imagefolder.loader(views, 5, epoch=0, workers=2)
    all_views(persistent, views)
    persistent.set_epoch(2)  # the epoch reaches workers that already exist
    for batches in (imagefolder.loader(views, 16, epoch=2), persistent):
        got = all_views(batches, views)
        assert sorted(got) == list(range(n))
        assert all(torch.equal(got[i], alone[i]) for i in range(n)), (batches.batch_size, batches.num_workers)
    ranks = [all_views(imagefolder.loader(views, 16, rank=r, world_size=3, epoch=2), views) for r in range(3)]
    assert sum(len(r) for r in ranks) == n
    assert all(torch.equal(v, alone[i]) for r in ranks for i, v in r.items())
    other_epoch = {i: views[3, i][0] for i in range(n)}
    other_key = Views(index, "train", key=KEY + 1, size=CROP)
    assert sum(torch.equal(alone[i], other_epoch[i]) for i in range(n)) <= 2
    assert sum(torch.equal(alone[i], other_key[2, i][0]) for i in range(n)) <= 2


def test_device_decoding_gives_the_same_views(index):
    # decode='device' runs here with device 'cpu': batched decode_jpeg, then the same view function.
    for split, kw in (("train", {}), ("val", {"resize": RESIZE})):
        cpu = Views(index, split, key=KEY, size=CROP, **kw)
        raw = Views(index, split, key=KEY, size=CROP, decode="device", **kw)
        batches = imagefolder.loader(raw, 16, epoch=1, workers=2)
        batch = next(iter(batches))
        assert batch.x.dim() == 1 and batch.lengths.sum() == len(batch.x)
        got = all_views(batches, raw)
        assert all(torch.equal(v, cpu[1, i][0]) for i, v in got.items()) and len(got) == len(cpu)


# ---- sharding --------------------------------------------------------------------------------------

def test_each_steps_rank_shards_make_up_the_global_batch(index):
    n, bs = 23, 8  # the last batch of 7 splits unevenly
    order = augment.epoch_order(KEY, 4, n).tolist()
    for world in (2, 3):
        steps = list(zip(*[imagefolder.EpochBatches(n, bs, KEY, r, world, epoch=4) for r in range(world)]))
        assert len(steps) == math.ceil(n / bs)
        for s, shards in enumerate(steps):
            glob = order[s * bs:(s + 1) * bs]
            assert [i for shard in shards for _, i in shard] == glob
            assert all(e == 4 for shard in shards for e, _ in shard)
            assert [[i for _, i in shard] for shard in shards] == [World(r, world).shard(glob) for r in range(world)]
        assert sorted(len(shard) for shard in steps[-1]) == ([3, 4] if world == 2 else [2, 2, 3])
    # through the loader: per step, the ranks' samples are the single process's batch
    views = train_views(index)
    single = [b.indices.tolist() for b in imagefolder.loader(views, 16, epoch=4)]
    per_rank = [[b.indices.tolist() for b in imagefolder.loader(views, 16, rank=r, world_size=3, epoch=4)]
                for r in range(3)]
    assert [sum(parts, []) for parts in zip(*per_rank)] == single
    assert_error(lambda: imagefolder.EpochBatches(17, 8, world_size=2), "batch of 1", "2 ranks")


def test_set_epoch_reorders_and_unshuffled_is_in_order(index):
    views = train_views(index)
    batches = imagefolder.loader(views, 16)
    first = [i for b in batches for i in b.indices.tolist()]
    batches.set_epoch(1)
    assert [i for b in batches for i in b.indices.tolist()] == augment.epoch_order(KEY, 1, len(views)).tolist() != first
    val = imagefolder.loader(Views(index, "val", size=CROP, resize=RESIZE), 16)
    assert [i for b in val for i in b.indices.tolist()] == list(range(len(index.val)))


# ---- bad files -------------------------------------------------------------------------------------

def test_a_bad_image_is_one_line_naming_it_from_a_worker_too(tree, tmp_path):
    root = copy_of(tree, tmp_path)
    index_path = tmp_path / "index.json"
    index_tree(root, index_path)
    index = load_index(index_path)
    truncated, text = root / index.train.paths[3], root / index.val.paths[5]
    truncated.write_bytes(truncated.read_bytes()[:300])
    text.write_text("not an image at all\n")
    for split, i, bad, reason in (("train", 3, truncated, "truncated"), ("val", 5, text, "Unsupported image")):
        views = Views(index, split, size=CROP, resize=RESIZE)
        msg = assert_error(lambda: views[0, i], bad, reason, "replace or delete")
        assert ".cpp" not in msg  # torchvision's source location is cut
        for workers in (0, 2):
            assert_error(lambda: all_views(imagefolder.loader(views, 8, workers=workers), views), bad, reason)
    one_line_error(*tfkd("bench-loader", str(index_path), "--workers", "2", "--size", "32", "--batch-size", "8",
                         "--steps", "4"), str(truncated), "truncated")
    truncated.unlink()
    assert_error(lambda: Views(index, "train")[0, 3], truncated, "No such file")


def test_throughput_reports_images_per_second(index):
    r = imagefolder.throughput(index, 0, batch_size=8, steps=2, size=32, resize=36)
    assert r["images"] == 16 and r["images_per_s"] > 0 and r["workers"] == 0
    assert_error(lambda: imagefolder.throughput(index, 0, batch_size=8, steps=5), "5 batches", "--steps 4")


def test_tfkd_prepare_imagefolder_indexes_into_data_prepared(tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = tfkd("prepare", "imagefolder", "--source", str(tree), "--name", "mini")
    assert code == 0, out
    index = load_index("data/prepared/mini.index.json")
    assert index.num_classes == 20 and f"{len(index.train.paths)} train" in out
    assert tfkd("prepare", "imagefolder", "--source", str(tree), "--name", "mini")[0] == 0  # the same tree again
    other = copy_of(tree, tmp_path)
    one_line_error(*tfkd("prepare", "imagefolder", "--source", str(other), "--name", "mini"),
                   "data/prepared/mini.index.json exists and is not an index of", "--overwrite")
    assert tfkd("prepare", "imagefolder", "--source", str(other), "--name", "mini", "--overwrite")[0] == 0
    assert load_index("data/prepared/mini.index.json").root == str(other.resolve())
    one_line_error(*tfkd("prepare", "imagefolder"), "needs --source")
