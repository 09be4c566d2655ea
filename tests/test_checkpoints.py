"""Checkpoints the reference code saved load strictly, with no key map, and become caches.

The reference-format files are built here from the reference's own key lists
(tests/fixtures/reference_models/, random values): {'epoch', 'state_dict', 'optim_dict'}, in torch's
zip and legacy formats, with and without DataParallel's 'module.' prefix."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import cache, checkpoint, data
from pipeline.cli import main
from pipeline.errors import TfkdError
from pipeline.models import build_model
from test_models import NAMES, reference_entries

DTYPES = {"float32": torch.float32, "int64": torch.int64}


def reference_checkpoint(name, path, legacy=False, prefix="", seed=0):
    """A file as the reference's save_checkpoint writes it, for `name` at 100 classes."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in reference_entries(name):
        if dtype == "int64":
            value = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=g) + 0.5
        elif len(shape) > 1:  # conv / linear weights at 1/sqrt(fan_in): logits stay finite through 100 layers
            value = torch.randn(shape, generator=g) / np.sqrt(np.prod(shape[1:]))
        else:  # BN affine and biases near their defaults
            value = torch.randn(shape, generator=g) * 0.1 + (1.0 if key.endswith(".weight") else 0.0)
        state[prefix + key] = value
    ckpt = {"epoch": 200, "state_dict": state,
            "optim_dict": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": list(range(3))}]}}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return state


@pytest.fixture(scope="module")
def hundred_classes(tmp_path_factory):
    """A small real-image dataset with the reference's 100 classes: the embedded CIFAR-100 images,
    relabelled so every class has a training image, at 16x16 to keep 7 full-size models quick."""
    folder = tmp_path_factory.mktemp("data")
    src = np.load(data.EMBEDDED)
    x = src["x_train"][:100, ::2, ::2]  # 16x16: every model pools adaptively
    arrays = {"x_train": x, "y_train": np.arange(100), "x_test": src["x_test"][:20, ::2, ::2],
              "y_test": np.arange(20)}
    np.savez(folder / "c100.npz", **arrays)
    out = folder / "prepared.npz"
    data.prepare("npz", out, source=str(folder / "c100.npz"), name="c100")
    return out


def direct_logits(name, state, prepared):
    """The loaded model's own forward over the training images: what the cache must hold."""
    model = build_model(name, 100)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    ds = data.load(prepared)
    x = torch.from_numpy(ds.x_train).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(ds.mean).view(1, -1, 1, 1)) / torch.tensor(ds.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("fmt", ["zip", "legacy-dataparallel"])
@pytest.mark.parametrize("name", NAMES)
def test_reference_checkpoint_becomes_a_cache_through_the_cli(name, fmt, hundred_classes, tmp_path):
    ckpt = tmp_path / "best.pth.tar"
    legacy = fmt != "zip"
    state = reference_checkpoint(name, ckpt, legacy=legacy, prefix="module." if legacy else "")
    out = tmp_path / "teacher.h5"
    res = CliRunner().invoke(main, ["cache", "--checkpoint", str(ckpt), "--model", name, "--data",
                                    str(hundred_classes), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        logits = f["logits"][...]
        assert f.attrs["teacher_model"] == name and f.attrs["checkpoint_epoch"] == 200
    # Equal to the fp16 storage's rounding (a batch's kernels may round the last fp32 bit otherwise).
    np.testing.assert_allclose(logits.astype(np.float32), direct_logits(name, state, hundred_classes),
                               rtol=2 ** -10, atol=1e-4)
    assert np.isfinite(logits).all() and logits.std() > 0


def test_a_plain_state_dict_loads(tmp_path):
    state = {k.removeprefix("module."): v for k, v in
             reference_checkpoint("mobilenetv2", tmp_path / "ref.pt").items()}
    torch.save(state, tmp_path / "plain.pt")
    model, _ = checkpoint.load_model(str(tmp_path / "plain.pt"), "mobilenetv2", 1.0, 100, 3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_our_checkpoint_weights_load_into_the_reference_names():
    """Ours hold the model's state_dict under 'model': the reference's keys, shapes and order, so
    `reference_model.load_state_dict(torch.load(f)['model'])` is all the reference code needs."""
    for name in NAMES:
        ours = build_model(name, 100).state_dict()
        assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, s) for k, s, _ in reference_entries(name)]


@pytest.mark.parametrize("ask,words", [
    (("mobilenetv2", 1.0, 100, 3), ("resnet18 (width ~1, 100 classes", "not the mobilenetv2 (width 1, 100 classes")),
    (("resnet18", 0.5, 100, 3), ("resnet18 (width ~1, 100 classes", "not the resnet18 (width 0.5, 100 classes")),
    (("resnet18", 1.0, 20, 3), ("resnet18 (width ~1, 100 classes", "not the resnet18 (width 1, 20 classes")),
    (("resnet18", 1.0, 100, 1), ("3 input channels", "1 input channels")),
])
def test_another_model_width_or_class_count_is_refused_naming_both_sides(ask, words, tmp_path):
    reference_checkpoint("resnet18", tmp_path / "r18.pth.tar")
    with pytest.raises(TfkdError) as e:
        checkpoint.load_model(str(tmp_path / "r18.pth.tar"), *ask)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_refused_checkpoint_is_one_line_from_the_cli(hundred_classes, tmp_path):
    reference_checkpoint("resnet18", tmp_path / "r18.pth.tar")
    out = tmp_path / "x.h5"
    res = CliRunner().invoke(main, ["cache", "--checkpoint", str(tmp_path / "r18.pth.tar"), "--model", "googlenet",
                                    "--data", str(hundred_classes), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "holds resnet18" in res.output and "not the googlenet" in res.output
    assert not out.exists()


def test_a_whole_pickled_model_says_to_save_its_state_dict(tmp_path):
    torch.save(build_model("resnet18", 10, width=0.125), tmp_path / "model.pt")
    with pytest.raises(TfkdError, match=r"save model.state_dict\(\)"):
        checkpoint.load_model(str(tmp_path / "model.pt"), "resnet18", 0.125, 10, 3)


def test_a_checkpoint_of_the_old_zoo_is_refused_with_retrain(tmp_path):
    """tfkd before results version 2 wrote nn.Sequential keys ('0.0.weight' ...)."""
    model = build_model("resnet18", 20, width=0.125)
    old = {f"{i}.{k}": v for i, (k, v) in enumerate(model.state_dict().items())}
    torch.save({"model": old, "model_name": "resnet18", "width": 0.125, "num_classes": 20, "in_channels": 3,
                "epoch": 2}, tmp_path / "epoch_0002.pt")
    with pytest.raises(TfkdError, match=r"older tfkd \(results version 1, this is 2\).*retrain") as e:
        checkpoint.load_model(str(tmp_path / "epoch_0002.pt"), "resnet18", 0.125, 20, 3)
    assert "\n" not in str(e.value)


def test_a_cache_of_the_old_schema_is_refused_with_recache(project):
    ds = data.load(Path("data/prepared/embedded.npz"))
    with h5py.File("old.h5", "w") as f:
        f.create_dataset("labels", data=ds.y_train.astype(np.int64))
        f.create_dataset("logits", data=np.zeros((len(ds.y_train), ds.num_classes), np.float16))
        f.attrs.update({"schema_version": 1, "dataset_fingerprint": ds.fingerprint, "num_classes": ds.num_classes,
                        "view_policy": "clean"})
    with pytest.raises(TfkdError, match="schema version 1.*rerun 'tfkd cache'"):
        cache.load("old.h5", ds, "clean")
