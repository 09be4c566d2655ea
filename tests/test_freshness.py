"""A result follows everything it was computed from: settings, data, results version, teacher."""
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY_PARAMS, one_line_error, tfkd, write_params
from pipeline import checkpoint, data as datasets, version

RUN = Path("runs/base_resnet18/s230")




def reprepare_other_data():
    """data/prepared/embedded.npz with one training pixel changed: another fingerprint."""
    ds = datasets.load("data/prepared/embedded.npz")
    x = ds.x_train.copy()
    x[0, 0, 0, 0] ^= 1
    other = datasets.build("embedded", {"x_train": x, "y_train": ds.y_train, "x_test": ds.x_test,
                                        "y_test": ds.y_test}, classes=list(ds.classes))
    datasets.save(other, "data/prepared/embedded.npz")
    return ds.fingerprint, other.fingerprint


def test_a_note_is_not_part_of_the_identity(tiny):
    assert tfkd("train", "base_resnet18")[0] == 0
    Path("params.yaml").write_text(TINY_PARAMS.replace("{model: resnet18}", "{model: resnet18, note: why}"))
    code, out = tfkd("train", "base_resnet18")
    assert code == 0 and "already finished" in out, out


def test_other_settings_are_refused_naming_the_setting(tiny):
    assert tfkd("train", "base_resnet18")[0] == 0
    metrics = json.loads((RUN / "metrics.json").read_text())
    assert metrics["identity"]["results_version"] == version.RESULTS_VERSION
    assert "note" not in metrics["identity"]["settings"]
    assert torch.load(RUN / "last.pt", weights_only=True)["identity"] == metrics["identity"]
    Path("params.yaml").write_text(TINY_PARAMS.replace("{model: resnet18}", "{model: resnet18, lr: 0.05}"))
    one_line_error(*tfkd("train", "base_resnet18"), "runs/base_resnet18/s230 was computed with other settings (lr 0.1 → 0.05)",
            "--overwrite")


def test_other_data_redoes_the_run_under_overwrite_and_is_refused_without(tiny):
    assert tfkd("train", "base_resnet18")[0] == 0
    old, new = reprepare_other_data()
    one_line_error(*tfkd("train", "base_resnet18"), f"was computed from other data (fingerprint {old[:4]}… → {new[:4]}…)")
    code, out = tfkd("train", "base_resnet18", "--overwrite")
    assert code == 0 and "already finished" not in out and "epoch 2/2" in out, out
    assert json.loads((RUN / "metrics.json").read_text())["identity"]["dataset_fingerprint"] == new


def test_another_results_version_redoes_the_run(tiny, monkeypatch):
    assert tfkd("train", "base_resnet18")[0] == 0
    monkeypatch.setattr("pipeline.config.RESULTS_VERSION", version.RESULTS_VERSION + 1)
    one_line_error(*tfkd("train", "base_resnet18"),
            f"by results version {version.RESULTS_VERSION}, this is {version.RESULTS_VERSION + 1}")
    code, out = tfkd("train", "base_resnet18", "--overwrite")
    assert code == 0 and "epoch 2/2" in out, out


# --- caches follow their teacher: one validity check (cache.check) for make_cache and readers ---

from pipeline import cache, stages  # noqa: E402
from pipeline.files import sha256_file  # noqa: E402
from pipeline.config import Params  # noqa: E402
from pipeline.errors import TfkdError  # noqa: E402
from pipeline.models import build_model  # noqa: E402

CPU = torch.device("cpu")
TEACHER = Path("runs/base_resnet18/s230")


def fake_teacher(params, name="base_resnet18", epochs=(1, 2), seed=0, finished=True):
    """A teacher run's files as fit writes them (untrained weights: the checks need no training)."""
    cfg = params.config(name, 230)
    ds = datasets.load("data/prepared/embedded.npz")
    torch.manual_seed(seed)
    model = build_model(cfg.model, ds.num_classes, in_channels=ds.channels, width=cfg.width)
    folder = Path("runs", name, "s230")
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "model_name": cfg.model, "width": cfg.width, "num_classes": ds.num_classes,
             "in_channels": ds.channels, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
             "digest": cfg.digest(ds.fingerprint), "identity": cfg.run_identity(ds.fingerprint),
             "results_version": version.RESULTS_VERSION, "test_acc": 0.0}
    for e in epochs:
        torch.save(dict(state, epoch=e), folder / f"epoch_{e:04d}.pt")
    torch.save(dict(state, epoch=epochs[-1]), folder / "best.pt")
    if finished:
        (folder / "metrics.json").write_text(json.dumps({"config_digest": cfg.digest(ds.fingerprint)}))


def clean_params(text=TINY_PARAMS):
    write_params("params.yaml", text)
    return Params.load("params.yaml")


def test_a_retrained_teacher_makes_its_cache_refused_then_recached(tiny):
    p = clean_params()
    fake_teacher(p)
    [path] = stages.make_cache(p, "kd_r18_r18_clean", [], CPU)
    fake_teacher(p, seed=1)  # retrained: other weights, same settings
    with pytest.raises(TfkdError) as e:
        stages.run_experiment(p, "kd_r18_r18_clean", [], CPU)
    assert str(e.value).startswith("cache/kd_r18_r18_clean/s230.h5 was made from another teacher checkpoint")
    assert str(e.value).endswith("rerun tfkd cache kd_r18_r18_clean")
    logs = []
    stages.make_cache(p, "kd_r18_r18_clean", [], CPU, log=logs.append)
    assert not any("up to date" in line for line in logs)
    assert cache.read_attrs(path)["checkpoint_sha256"] == sha256_file(TEACHER / "epoch_0001.pt")
    logs.clear()
    stages.make_cache(p, "kd_r18_r18_clean", [], CPU, log=logs.append)
    assert any("up to date" in line for line in logs)


def test_another_teacher_entry_makes_the_cache_one_line_error(tiny):
    fake_teacher(clean_params())
    stages.make_cache(clean_params(), "kd_r18_r18_clean", [], CPU)
    text = TINY_PARAMS.replace("  base_resnet18: {model: resnet18}\n",
                               "  base_resnet18: {model: resnet18}\n  other_resnet18: {model: resnet18}\n")
    p = clean_params(text.replace("kd_r18_r18_clean: {model: resnet18, teacher: base_resnet18",
                                  "kd_r18_r18_clean: {model: resnet18, teacher: other_resnet18"))
    fake_teacher(p, "other_resnet18", seed=2)
    with pytest.raises(TfkdError, match="was made from another teacher checkpoint"):
        stages.run_experiment(p, "kd_r18_r18_clean", [], CPU)


def test_an_edited_teacher_entry_is_not_cached_until_retrained(tiny):
    fake_teacher(clean_params())
    p = clean_params(TINY_PARAMS.replace("{model: resnet18}", "{model: resnet18, lr: 0.05}"))
    with pytest.raises(TfkdError) as e:
        stages.make_cache(p, "kd_r18_r18_clean", [], CPU)
    assert str(e.value) == ("teacher base_resnet18's run was trained with other settings (lr 0.1 → 0.05); "
                            "retrain it: tfkd train base_resnet18 --overwrite")
    assert not Path("cache/kd_r18_r18_clean/s230.h5").exists()


def test_best_of_a_teacher_still_training_is_one_line_error(tiny):
    text = TINY_PARAMS.replace("teacher_checkpoint: one_epoch", "teacher_checkpoint: best")
    fake_teacher(clean_params(text), finished=False)
    with pytest.raises(TfkdError, match="base_resnet18 has not finished training.*best so far"):
        stages.make_cache(clean_params(text), "kd_r18_r18_clean", [], CPU)
    fake_teacher(clean_params(text), finished=True)
    assert stages.make_cache(clean_params(text), "kd_r18_r18_clean", [], CPU)


def test_check_names_the_first_differing_attribute(tiny, tmp_path):
    """The review's dead end (a52b109 §3.1a): another augment is stale for make_cache and readers alike."""
    import h5py
    ds = datasets.load("data/prepared/embedded.npz")
    cfg = clean_params().config("kd_r18_r18", 230)
    want = cache.expected(ds, "replay", cfg.run_key, 2, cfg.aug_spec, {"checkpoint_sha256": "ab" * 32})
    with h5py.File("c.h5", "w") as f:
        f.attrs.update(want)
    assert cache.check("c.h5", want)["run_key"] == cfg.run_key
    other = dict(cfg.augment, rotate=0)
    from pipeline.augment import AugmentSpec
    stale = cache.expected(ds, "replay", cfg.run_key, 2, AugmentSpec(**other), {"checkpoint_sha256": "ab" * 32})
    with pytest.raises(TfkdError, match=r"c.h5 was made with another augmentation .*rotate.*; rerun 'tfkd cache'"):
        cache.check("c.h5", stale)
    with pytest.raises(TfkdError, match="c.h5 was made for 2 epochs, the run needs 3"):
        cache.check("c.h5", dict(want, epochs=3))


# --- the run folder: --overwrite deletes only tfkd's files; a damaged last.pt is not a fresh start ---

def run_folder(tmp_path, digest="old"):
    folder = tmp_path / "run"
    folder.mkdir()
    state = {"optimizer": {}, "digest": digest, "epoch": 1}
    for name in ("epoch_0001.pt", "best.pt", "last.pt"):
        torch.save(state, folder / name)
    for name in ("metrics.json", "timing.json", "history.tsv", ".last.pt.x1y2.tmp", ".metrics.json.ab.tmp"):
        (folder / name).write_text("{}")
    (folder / "analysis.ipynb").write_text("mine")
    (folder / "notes.pt").write_text("mine too")
    return folder


def test_overwrite_deletes_only_the_files_tfkd_writes(tmp_path):
    folder = run_folder(tmp_path)
    rd = checkpoint.RunDir(str(folder))
    with pytest.raises(TfkdError, match="--overwrite"):
        rd.resume_state("new", {"settings": {}, "dataset_fingerprint": "f", "results_version": 2}, overwrite=False)
    assert rd.resume_state("new", {}, overwrite=True) == (None, None)
    assert sorted(os.listdir(folder)) == ["analysis.ipynb", "notes.pt"]


def test_a_damaged_last_checkpoint_resumes_from_the_newest_intact_one(tmp_path):
    folder = run_folder(tmp_path, digest="d")
    torch.save({"optimizer": {}, "digest": "d", "epoch": 2}, folder / "epoch_0002.pt")
    (folder / "epoch_0003.pt").write_bytes(b"\x00cut")
    (folder / "last.pt").write_bytes(b"\x00cut")
    logs = []
    state, source = checkpoint.RunDir(str(folder)).resume_state("d", {}, overwrite=False, log=logs.append)
    assert source == "epoch_0002.pt" and state["epoch"] == 2
    assert len(logs) == 1 and "last.pt is damaged" in logs[0] and "resuming from epoch_0002.pt" in logs[0]


def test_a_damaged_last_checkpoint_and_nothing_intact_says_it_restarts(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"\x00cut")
    (folder / "epoch_0001.pt").write_bytes(b"\x00cut")
    logs = []
    assert checkpoint.RunDir(str(folder)).resume_state("d", {}, overwrite=False, log=logs.append) == (None, None)
    assert len(logs) == 1 and "last.pt is damaged" in logs[0] and "restarts from scratch" in logs[0]


def test_a_student_follows_its_teacher_checkpoint(tiny):
    """Teacher retrained, cache redone: the student distilled from the old teacher is not 'finished'."""
    p = clean_params()
    fake_teacher(p)
    stages.make_cache(p, "kd_r18_r18_clean", [], CPU)
    stages.run_experiment(p, "kd_r18_r18_clean", [], CPU)
    fake_teacher(p, seed=1)  # retrained: other weights, same settings
    stages.make_cache(p, "kd_r18_r18_clean", [], CPU)
    with pytest.raises(TfkdError) as e:
        stages.run_experiment(p, "kd_r18_r18_clean", [], CPU)
    assert str(e.value).startswith("runs/kd_r18_r18_clean/s230 was computed from another teacher checkpoint")
    logs = []
    [m] = stages.run_experiment(p, "kd_r18_r18_clean", [], CPU, overwrite=True, log=logs.append)
    assert not any("already finished" in line for line in logs) and any("epoch 2/2" in line for line in logs)
    assert m["identity"]["teacher_checkpoint"] == sha256_file(TEACHER / "epoch_0001.pt")
