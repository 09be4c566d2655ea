"""Inputs a user gets wrong (issue 16): each is refused in one line naming the culprit and the fix,
before anything is written, and no user file is ever replaced without being asked."""
import errno
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_PARAMS, one_line_error, synthetic, tfkd, write_npz, write_params
from pipeline import data, files
from pipeline.config import Params
from pipeline.errors import TfkdError


def assert_error(call, *needles):
    with pytest.raises(TfkdError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


# --- labels ---------------------------------------------------------------------------------------------

def test_a_stray_label_is_refused_not_a_256_class_dataset(tmp_path):
    arrays = synthetic()
    arrays["y_train"][5] = 255
    src = write_npz(tmp_path / "stray.npz", **arrays)
    out = tmp_path / "out.npz"
    msg = assert_error(lambda: data.prepare("npz", out, source=src), src, "y_train", "255", "0..K-1")
    assert "3..254" in msg  # the classes that would be empty are named
    assert not out.exists()


def test_a_class_without_training_images_is_refused(tmp_path):
    arrays = synthetic(k=4)
    arrays["y_train"][arrays["y_train"] == 1] = 0  # class 1 has no training image
    arrays["y_test"][:] = 0
    src = write_npz(tmp_path / "gap.npz", **arrays)
    assert_error(lambda: data.prepare("npz", tmp_path / "o.npz", source=src), src, "y_train", "class 1",
                 "0..K-1")


def test_class_names_beyond_the_labels_are_refused(tmp_path):
    src = write_npz(tmp_path / "c.npz", **synthetic(k=3), classes=np.array(["a", "b", "c", "d"]))
    assert_error(lambda: data.prepare("npz", tmp_path / "o.npz", source=src), src, "classes", "4 names",
                 "class 3")


# --- never replace a user's file ------------------------------------------------------------------------

def test_prepare_refuses_to_write_over_its_own_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = write_npz(tmp_path / "mine.npz", **synthetic())
    before = src.read_bytes()
    one_line_error(*tfkd("prepare", "npz", "--source", "mine.npz", "--out", str(src)), "mine.npz", "--out")
    assert src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mine.npz"]


def test_prepare_refuses_to_replace_a_file_it_did_not_make(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "src.npz", **synthetic())
    Path("notes.npz").write_text("my notes")
    one_line_error(*tfkd("prepare", "npz", "--source", "src.npz", "--out", "notes.npz"), "notes.npz",
                   "--overwrite")
    assert Path("notes.npz").read_text() == "my notes"
    code, out = tfkd("prepare", "npz", "--source", "src.npz", "--out", "notes.npz", "--overwrite")
    assert code == 0, out
    # a prepared dataset is ours: preparing it again (dvc repro) replaces it without asking
    code, out = tfkd("prepare", "npz", "--source", "src.npz", "--out", "notes.npz")
    assert code == 0, out
    assert data.load("notes.npz").num_classes == 3


# --- constant images ------------------------------------------------------------------------------------

def test_constant_images_are_refused_at_prepare(tmp_path):
    arrays = synthetic()
    arrays["x_train"][:] = 0
    src = write_npz(tmp_path / "black.npz", **arrays)
    out = tmp_path / "o.npz"
    assert_error(lambda: data.prepare("npz", out, source=src), src, "x_train", "channel 0", "std 0")
    assert not out.exists()


def test_a_prepared_dataset_with_a_constant_channel_is_refused_at_load(tmp_path):
    arrays = synthetic()
    arrays["x_train"][..., 2] = 7
    x = [arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    mean, std = data.channel_stats(arrays["x_train"])
    ds = data.Dataset("flat", *x, ["a", "b", "c"], data.fingerprint(*x), mean, std, "flat.npz", "npz")
    data.save(ds, tmp_path / "flat.npz")
    assert_error(lambda: data.load(tmp_path / "flat.npz"), "flat.npz", "channel 2", "std 0", "tfkd prepare")


# --- a suggested fix that works -------------------------------------------------------------------------

def test_a_deleted_npz_import_names_the_command_that_rebuilds_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "mini_src.npz", **synthetic())
    assert tfkd("prepare", "npz", "--source", "mini_src.npz", "--name", "mini")[0] == 0
    os.remove("data/prepared/mini.npz")
    from pipeline import stages
    msg = assert_error(lambda: stages.load_data("mini"), "data/prepared/mini.npz",
                       "tfkd prepare npz --source", "--name mini")
    assert "'tfkd prepare mini'" not in msg
    # a known kind still gets the plain command
    assert_error(lambda: stages.load_data("embedded"), "'tfkd prepare embedded'")


# --- params.yaml ----------------------------------------------------------------------------------------

@pytest.fixture
def tiny(project):
    write_params("params.yaml", TINY_PARAMS)
    return project


def edit_params(old, new):
    text = Path("params.yaml").read_text()
    assert old in text
    Path("params.yaml").write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, needle", [
    ("{model: resnet18}", '{model: resnet18, epochs: "ten"}', 'train.base_resnet18.epochs: "ten" is not an integer'),
    ("{model: resnet18}", "{model: resnet18, epochs: 2.5}", "train.base_resnet18.epochs: 2.5 is not an integer"),
    ("{model: resnet18}", "{model: resnet18, epochs: true}", "train.base_resnet18.epochs: true is not an integer"),
    ("{model: resnet18}", '{model: resnet18, lr: "fast"}', 'train.base_resnet18.lr: "fast" is not a number'),
    ("{model: resnet18}", "{model: resnet18, lr: }", "train.base_resnet18.lr: has no value"),
    ("{model: resnet18}", "{model: 18}", "train.base_resnet18.model: 18 is not a string"),
    ("batch_size: 64}", 'batch_size: "64"}', 'defaults.batch_size: "64" is not an integer'),
    ("epochs: 2,", 'epochs: "2",', 'profiles.t.epochs: "2" is not an integer'),
    ("checkpoints: {one_epoch: 1}", "checkpoints: {one_epoch: one}",
     'profiles.t.checkpoints.one_epoch: "one" is not an integer'),
    ("{model: resnet18}", "{model: resnet18, milestones: [0.3, x]}",
     'train.base_resnet18.milestones[1]: "x" is not a number'),
    ("{model: resnet18}", "{model: resnet18, milestones: 0.3}", "train.base_resnet18.milestones: 0.3 is not a list"),
    ("{model: resnet18}", "{model: resnet18, augment: {pad: 2.5}}", "train.base_resnet18.augment.pad: 2.5 is not an integer"),
    ("{model: resnet18}", "{model: resnet18, augment: {flip: 1}}", "train.base_resnet18.augment.flip: 1 is not true/false"),
    ("alpha: 0.9, temperature: 4, cache_policy: replay", 'alpha: "0.9", temperature: 4, cache_policy: replay',
     'distill.kd_r18_r18.alpha: "0.9" is not a number'),
])
def test_a_wrong_type_names_the_full_key(tiny, old, new, needle):
    edit_params(old, new)
    one_line_error(*tfkd("train", "base_resnet18"), needle)
    assert not os.path.exists("runs")


def test_a_bad_entry_names_the_params_file_that_was_read(tiny):
    edit_params("{model: resnet18}", '{model: resnet18, epochs: "ten"}')
    os.rename("params.yaml", "sweep.yaml")
    msg = one_line_error(*tfkd("train", "base_resnet18", "--params", "sweep.yaml"),
                         'sweep.yaml train.base_resnet18.epochs: "ten" is not an integer')
    assert "params.yaml" not in msg


def test_1e_minus_3_is_a_number(tiny):
    edit_params("{model: resnet18}", "{model: resnet18, lr: 1e-3, weight_decay: 5E-4, momentum: 9e-1}")
    cfg = Params.load("params.yaml").config("base_resnet18", 230)
    assert (cfg.lr, cfg.weight_decay, cfg.momentum) == (0.001, 0.0005, 0.9)
    assert Params.load("params.yaml").config("kd_r18_r18", 230).epochs == 2  # ints stay ints
    edit_params("teacher_checkpoint: one_epoch", "teacher_checkpoint: 1")  # an epoch number is fine
    assert Params.load("params.yaml").config("kd_r18_r18_clean", 230).teacher_checkpoint == 1


def test_a_yaml_syntax_error_names_the_line(tiny):
    edit_params("  base_resnet18: {model: resnet18}", "  base_resnet18: {model: resnet18")
    lines = Path("params.yaml").read_text().splitlines()
    msg = one_line_error(*tfkd("train", "base_resnet18"), "params.yaml:", "not valid YAML")
    line = int(msg.split("params.yaml:")[1].split(":")[0])
    assert 1 <= line <= len(lines)


def test_a_yaml_syntax_error_line_is_the_culprits(tiny):
    edit_params("seeds: [230]", "seeds: [230\n  bad: : :")
    first = Path("params.yaml").read_text().splitlines().index("seeds: [230") + 1
    msg = one_line_error(*tfkd("train", "base_resnet18"), "params.yaml:")
    line = int(msg.split("params.yaml:")[1].split(":")[0])
    assert first <= line <= first + 2, msg


def test_an_experiment_named_twice_is_refused_with_both_lines(tiny):
    edit_params("  base_resnet18: {model: resnet18}\n",
                "  base_resnet18: {model: resnet18}\n  base_resnet18: {model: resnet34}\n")
    lines = Path("params.yaml").read_text().splitlines()
    first = lines.index("  base_resnet18: {model: resnet18}") + 1
    one_line_error(*tfkd("train", "base_resnet18"), "base_resnet18", "twice", f"lines {first} and {first + 1}")


def test_the_repositorys_params_still_load():
    root = Path(__file__).resolve().parents[1]
    p = Params.load(str(root / "params.yaml"))
    assert p.experiments()


# --- NaN in epoch 1: no checkpoint to keep --------------------------------------------------------------

def test_nan_in_epoch_1_says_no_checkpoint_exists(tiny):
    edit_params("batch_size: 64}", "batch_size: 64, lr: 1.0e+30}")
    msg = one_line_error(*tfkd("train", "base_resnet18"), "NaN/inf", "epoch 1", "no checkpoint")
    assert "last good checkpoint is kept" not in msg


def test_nan_in_epoch_2_names_the_checkpoint_kept(tiny, monkeypatch):
    from pipeline import train
    real = train.learning_rate
    monkeypatch.setattr(train, "learning_rate", lambda cfg, epoch, i, steps: 1e30 if epoch else real(cfg, epoch, i, steps))
    code, out = tfkd("train", "base_resnet18")
    errors = [line for line in out.splitlines() if line.startswith("tfkd: error: ")]  # after epoch 1's progress
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, out
    for needle in ("NaN/inf", "epoch 2", os.path.join("runs", "base_resnet18", "s230", "last.pt"), "after epoch 1"):
        assert needle in errors[0], errors[0]
    assert os.path.exists("runs/base_resnet18/s230/last.pt")


# --- a truncated summary --------------------------------------------------------------------------------

def test_report_names_a_truncated_summary(tiny):
    os.makedirs("runs")
    Path("runs/base_resnet18.json").write_text('{"experiment": "base_resnet18", "seeds": {"230": {"best_to')
    one_line_error(*tfkd("report"), os.path.join("runs", "base_resnet18.json"), "tfkd train base_resnet18",
                   "delete")
    Path("runs/base_resnet18.json").write_text("[1, 2]")
    one_line_error(*tfkd("report"), os.path.join("runs", "base_resnet18.json"))


# --- disk full ------------------------------------------------------------------------------------------

Usage = namedtuple("Usage", "total used free")


def test_no_space_while_writing_is_one_line_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out" / "x.h5"
    with pytest.raises(TfkdError) as e:
        with files.atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value) == f"No space left on device writing {target}: free space and rerun"
    assert list((tmp_path / "out").iterdir()) == []


def test_h5py_style_no_space_message_is_recognised(tmp_path):
    with pytest.raises(TfkdError, match="No space left on device writing"):
        with files.atomic_path(tmp_path / "c.h5"):
            raise OSError("Can't write data (file write failed: errno = 28, error message = "
                          "'No space left on device')")
    assert list(tmp_path.iterdir()) == []


def test_prepare_checks_free_space_before_writing(tmp_path, monkeypatch):
    src = write_npz(tmp_path / "s.npz", **synthetic())
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(10 ** 9, 10 ** 9 - 100, 100))
    out = tmp_path / "o" / "x.npz"
    assert_error(lambda: data.prepare("npz", out, source=src), "No space left on device writing", out,
                 "free space")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_cache_write_checks_free_space_before_h5py_runs(project, monkeypatch):
    import torch
    from pipeline import cache
    from pipeline.models import build_model
    from pipeline.train import DeviceData
    ddata = DeviceData(data.load("data/prepared/embedded.npz"), torch.device("cpu"))
    model = build_model("resnet18", ddata.data.num_classes, in_channels=3, width=0.125)
    n, k = len(ddata.data.y_train), ddata.data.num_classes
    need = 50 * n * k * 2  # a 50-epoch replay cache
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(10 ** 12, 10 ** 12 - need // 2, need // 2))
    out = Path("cache/x/s230.h5")
    from pipeline import augment
    assert_error(lambda: cache.write(str(out), model, ddata, "replay", {}, 1, 50, augment.AugmentSpec(),
                                     graph=False, compile=False),
                 "No space left on device writing", out, "free space")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_the_cli_turns_any_enospc_under_a_stage_into_one_line(tiny, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/base_resnet18/s230/history.tsv")
    monkeypatch.setattr("pipeline.stages.run_experiment", full)
    one_line_error(*tfkd("train", "base_resnet18"), "No space left on device writing",
                   "runs/base_resnet18/s230/history.tsv", "free space and rerun")
    monkeypatch.setattr("pipeline.stages.run_experiment", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded")))
    one_line_error(*tfkd("train", "base_resnet18"), "quota", "free space and rerun")
