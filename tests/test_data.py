"""Dataset layer: the committed embedded subset, .npz and Tiny ImageNet imports, CIFAR via torchvision
(offline), and every validation error. Synthetic inputs only live in tmp_path; nothing touches the network."""
import json
import urllib.error

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic, write_npz
from pipeline import data
from pipeline.errors import TfkdError


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "embedded.npz"
    return data.prepare("embedded", out), out




def assert_error(call, *fragments):
    with pytest.raises(TfkdError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert str(f) in msg, (f, msg)
    return msg


# --- embedded -------------------------------------------------------------------------------------------

def test_embedded_shapes_and_classes(embedded):
    ds, out = embedded
    assert out.is_file()
    assert ds.x_train.shape == (1600, 32, 32, 3) and ds.x_test.shape == (400, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert (ds.num_classes, ds.image_size, ds.channels) == (20, 32, 3)
    assert ds.classes[:3] == ["apple", "bed", "bowl"] and ds.classes[-1] == "whale"
    assert (np.bincount(ds.y_train, minlength=20) == 80).all()
    assert (np.bincount(ds.y_test, minlength=20) == 20).all()
    assert ds.y_train.min() == 0 and ds.y_train.max() == 19


def test_embedded_mean_std(embedded):
    ds, _ = embedded
    x = ds.x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, x.mean(0), atol=1e-9)
    np.testing.assert_allclose(ds.std, x.std(0), atol=1e-9)
    # CIFAR-100 statistics are roughly mean 0.5/0.49/0.44, std 0.27/0.26/0.28; a 1600-image subset is near.
    assert all(0.35 < m < 0.6 for m in ds.mean) and all(0.2 < s < 0.35 for s in ds.std)


def test_embedded_fingerprint_stable_and_sensitive(embedded, tmp_path):
    ds, _ = embedded
    again = data.prepare("embedded", tmp_path / "again.npz")
    assert again.fingerprint == ds.fingerprint and len(ds.fingerprint) == 64
    assert data.fingerprint(ds.x_train, ds.y_train, ds.x_test, ds.y_test) == ds.fingerprint
    x = ds.x_train.copy()
    x[7, 3, 4, 1] ^= 1
    assert data.fingerprint(x, ds.y_train, ds.x_test, ds.y_test) != ds.fingerprint
    # Same bytes with another dtype or shape must not collide either.
    assert data.fingerprint(ds.x_train, ds.y_train.astype(np.int32), ds.x_test, ds.y_test) != ds.fingerprint
    assert data.fingerprint(ds.x_train.reshape(1600, 32, 96, 1), ds.y_train, ds.x_test, ds.y_test) != ds.fingerprint


def test_load_round_trip(embedded):
    ds, out = embedded
    back = data.load(out)
    assert back.name == "embedded" and back.fingerprint == ds.fingerprint and back.classes == ds.classes
    assert back.mean == ds.mean and back.std == ds.std
    np.testing.assert_array_equal(back.x_test, ds.x_test)
    np.testing.assert_array_equal(back.y_train, ds.y_train)
    with np.load(out) as z:  # uncompressed, with a json meta
        meta = json.loads(str(z["meta"]))
    assert set(meta) >= {"name", "fingerprint", "mean", "std", "source"}


def test_embedded_missing_source(tmp_path):
    out = tmp_path / "e.npz"
    assert_error(lambda: data.prepare("embedded", out, source=tmp_path / "gone.npz"), "gone.npz", "build.py")
    assert not out.exists()


# --- load errors ----------------------------------------------------------------------------------------

def test_load_missing(tmp_path):
    assert_error(lambda: data.load(tmp_path / "prepared" / "cifar100.npz"), "cifar100.npz", "tfkd prepare cifar100")


def test_load_corrupt(embedded, tmp_path):
    _, out = embedded
    bad = tmp_path / "embedded.npz"
    bad.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    assert_error(lambda: data.load(bad), str(bad), "corrupt")


def test_load_fingerprint_mismatch(tmp_path):
    ds = data.prepare("npz", tmp_path / "p.npz", source=write_npz(tmp_path / "in.npz", **synthetic()), name="toy")
    with np.load(tmp_path / "p.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"][0, 0, 0, 0] ^= 1
    write_npz(tmp_path / "p.npz", **arrays)
    assert ds.fingerprint
    assert_error(lambda: data.load(tmp_path / "p.npz"), "p.npz", "modified or damaged", "tfkd prepare npz")


# --- npz import -----------------------------------------------------------------------------------------

def test_npz_round_trip_rgb(tmp_path):
    arrays = synthetic()
    src = write_npz(tmp_path / "in.npz", **arrays, classes=np.array(["cat", "dog", "emu"]))
    ds = data.prepare("npz", tmp_path / "out.npz", source=src, name="pets")
    back = data.load(tmp_path / "out.npz")
    assert back.name == "pets" and back.classes == ["cat", "dog", "emu"]
    for k in data.ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), arrays[k])
    assert back.fingerprint == ds.fingerprint


def test_npz_grayscale(tmp_path):
    arrays = synthetic(shape=(28, 28))
    src = write_npz(tmp_path / "g.npz", **arrays)
    ds = data.prepare("npz", tmp_path / "out.npz", source=src)
    assert ds.x_train.shape == (12, 28, 28, 1) and (ds.image_size, ds.channels) == (28, 1)
    assert ds.classes == ["class_0", "class_1", "class_2"] and len(ds.mean) == 1
    np.testing.assert_array_equal(data.load(tmp_path / "out.npz").x_test[..., 0], arrays["x_test"])


def test_npz_named_cifar100_gets_fine_names(tmp_path):
    src = write_npz(tmp_path / "c.npz", **synthetic(n_train=100, n_test=10, k=100, shape=(4, 4, 3)))
    ds = data.prepare("npz", tmp_path / "cifar100.npz", source=src, name="cifar100")
    assert ds.name == "cifar100" and ds.num_classes == 100
    assert ds.classes[:2] == ["apple", "aquarium_fish"] and ds.classes[-1] == "worm"


# --- validation: each a one-line TfkdError naming the culprit, and no output file ------------------------

def _bad(**change):
    arrays = synthetic()
    arrays.update(change)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize("arrays, fragments", [
    (_bad(x_test=None, y_test=None), ["x_test", "y_test"]),                            # missing keys
    (_bad(x_train=np.zeros((12, 8, 8, 3), np.float32)), ["x_train", "float32", "uint8"]),
    (_bad(x_train=np.zeros((12, 64), np.uint8)), ["x_train", "(12, 64)"]),             # wrong rank
    (_bad(x_train=np.zeros((12, 3, 8, 8), np.uint8)), ["x_train", "channels"]),        # channels first
    (_bad(x_test=np.zeros((6, 9, 9, 3), np.uint8)), ["x_train", "x_test", "same image shape"]),
    (_bad(y_train=np.arange(11) % 3), ["y_train", "11", "12"]),                        # count mismatch
    (_bad(y_test=np.zeros(6, np.float64)), ["y_test", "float64", "integers"]),
    (_bad(y_train=np.zeros((12, 1), np.int64)), ["y_train", "1-D"]),
    (_bad(y_train=np.arange(12) % 3 - 1), ["y_train", "negative", "-1"]),
    (_bad(y_test=np.array([0, 1, 2, 3, 0, 1])), ["y_test", "3", "only 3 classes"]),    # test label >= K
    (_bad(x_test=np.zeros((0, 8, 8, 3), np.uint8), y_test=np.zeros(0, np.int64)), ["x_test", "no images"]),
])
def test_npz_validation(tmp_path, arrays, fragments):
    src = write_npz(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "out" / "x.npz"
    assert_error(lambda: data.prepare("npz", out, source=src), str(src), *fragments)
    assert not out.exists() and not list(tmp_path.glob("out/*"))


def test_npz_too_few_class_names(tmp_path):
    src = write_npz(tmp_path / "c.npz", **synthetic(), classes=np.array(["a", "b"]))
    assert_error(lambda: data.prepare("npz", tmp_path / "o.npz", source=src), "classes", "2 names")
    assert not (tmp_path / "o.npz").exists()


def test_npz_missing_file(tmp_path):
    assert_error(lambda: data.prepare("npz", tmp_path / "o.npz", source=tmp_path / "nope.npz"), "nope.npz", "--source")
    assert_error(lambda: data.prepare("npz", tmp_path / "o.npz"), "--source")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("content", [b"", b"not a zip at all", "truncated", "flipped"])
def test_npz_corrupt(tmp_path, content):
    src = tmp_path / "c.npz"
    raw = bytearray(write_npz(tmp_path / "full.npz", **synthetic()).read_bytes())
    if content == "truncated":
        raw = raw[: len(raw) - 300]
    elif content == "flipped":  # damage inside x_train's bytes: caught by the zip CRC
        raw[1000] ^= 0xFF
    else:
        raw = content
    src.write_bytes(bytes(raw))
    assert_error(lambda: data.prepare("npz", tmp_path / "o.npz", source=src), str(src), "corrupt")
    assert not (tmp_path / "o.npz").exists()


def test_npz_single_array(tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, np.zeros(3))
    assert_error(lambda: data.prepare("npz", tmp_path / "o.npz", source=src), str(src), "single array")


def test_unknown_kind(tmp_path):
    assert_error(lambda: data.prepare("mnist", tmp_path / "o.npz"), "mnist", "cifar100")


# --- tinyimagenet ---------------------------------------------------------------------------------------

def make_tiny(root, words=True):
    """A two-class Tiny ImageNet laid out as distributed (wnids.txt deliberately not sorted)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    wnids = ["n02000002", "n01000001"]
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    if words:
        (root / "words.txt").write_text("n01000001\tgoldfish, Carassius auratus\nn02000002\tsnail\nn09\tother\n")
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(3):
            img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / "val" / "images" / "val_0.JPEG")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / "val_1.JPEG")
    (root / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02000002\t0\t0\t63\t63\nval_1.JPEG\tn01000001\t1\t2\t30\t40\n")
    return root


def test_tinyimagenet(tmp_path):
    root = make_tiny(tmp_path / "tiny-imagenet-200")
    ds = data.prepare("tinyimagenet", tmp_path / "t.npz", source=root)
    assert ds.x_train.shape == (6, 64, 64, 3) and ds.x_test.shape == (2, 64, 64, 3)
    assert ds.classes == ["goldfish", "snail"]  # labels follow sorted wnids
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1] and ds.y_test.tolist() == [1, 0]
    gray = ds.x_test[0]  # grayscale val_0 became RGB with equal channels
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert data.load(tmp_path / "t.npz").fingerprint == ds.fingerprint
    # The folder the zip was extracted into works too, and without words.txt names are the wnids.
    (root / "words.txt").unlink()
    ds2 = data.prepare("tinyimagenet", tmp_path / "t2.npz", source=tmp_path)
    assert ds2.classes == ["n01000001", "n02000002"] and ds2.fingerprint == ds.fingerprint


def test_tinyimagenet_errors(tmp_path):
    out = tmp_path / "o.npz"
    assert_error(lambda: data.prepare("tinyimagenet", out), "--source", "tiny-imagenet-200.zip")
    assert_error(lambda: data.prepare("tinyimagenet", out, source=tmp_path / "nowhere"), "nowhere")
    root = make_tiny(tmp_path / "t" / "tiny-imagenet-200")
    (root / "val" / "images" / "val_1.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    assert_error(lambda: data.prepare("tinyimagenet", out, source=root), "val_1.JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn05555555\t0\t0\t1\t1\n")
    assert_error(lambda: data.prepare("tinyimagenet", out, source=root), "val_annotations.txt", "n05555555")
    (root / "val" / "val_annotations.txt").unlink()
    assert_error(lambda: data.prepare("tinyimagenet", out, source=root), "val_annotations.txt")
    for p in (root / "train" / "n01000001" / "images").iterdir():
        p.unlink()
    assert_error(lambda: data.prepare("tinyimagenet", out, source=root), "n01000001")
    (root / "wnids.txt").unlink()
    assert_error(lambda: data.prepare("tinyimagenet", out, source=root), "wnids.txt")
    assert not out.exists()


# --- cifar via torchvision (never touches the network here) ---------------------------------------------

@pytest.mark.parametrize("kind, cls, hint", [
    ("cifar100", "CIFAR100", "tfkd prepare npz --source PATH/cifar100.npz --name cifar100"),
    ("cifar10", "CIFAR10", "--name cifar10"),
])
def test_cifar_offline(tmp_path, monkeypatch, kind, cls, hint):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, cls, offline)
    out = tmp_path / "o.npz"
    msg = assert_error(lambda: data.prepare(kind, out, source=tmp_path / "raw"), f"cannot download {kind}", hint)
    assert "no network" in msg and not out.exists()


def test_cifar_existing_files(tmp_path, monkeypatch):
    """With files already in the folder torchvision reads them; we convert its data/targets/classes."""
    import torchvision

    calls = []

    class Fake:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n = 10 if train else 4
            # not constant: a channel with std 0 is refused (normalising would divide by zero)
            self.data = (np.arange(n * 32 * 32 * 3) % (7 if train else 9)).astype(np.uint8).reshape(n, 32, 32, 3)
            self.targets = [i % 2 for i in range(n)]
            self.classes = ["airplane", "automobile"]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Fake)
    ds = data.prepare("cifar10", tmp_path / "c10.npz", source=tmp_path / "raw")
    assert calls == [(str(tmp_path / "raw"), True, True), (str(tmp_path / "raw"), False, True)]
    assert ds.name == "cifar10" and ds.classes == ["airplane", "automobile"]
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.y_test.tolist() == [0, 1, 0, 1]
    assert data.load(tmp_path / "c10.npz").fingerprint == ds.fingerprint
