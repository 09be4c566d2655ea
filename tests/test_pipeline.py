"""Stage one and stage two on the real embedded CIFAR-100 subset: learning, caches, exact replay."""
import json

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY_PARAMS, write_params
from pipeline import augment, cache, checkpoint, stages
from pipeline.files import sha256_file
from pipeline.config import Params
from pipeline.errors import TfkdError
from pipeline.train import DeviceData, OnlineTeacher, fit, learning_rate

CPU = torch.device("cpu")


@pytest.fixture
def params(project):
    write_params("params.yaml", TINY_PARAMS)
    return Params.load("params.yaml")


@pytest.fixture
def teacher(params):
    stages.run_experiment(params, "base_resnet18", [], CPU)
    return params


def test_reference_schedule():
    p = Params({"profile": "x", "profiles": {"x": {"epochs": 200}}, "train": {"a": {"model": "resnet18", "batch_size": 64}}})
    cfg = p.config("a", 230)
    assert cfg.step_lr == pytest.approx(0.05)  # lr x batch/128
    assert cfg.milestone_epochs == [60, 120, 160]
    assert cfg.save_epochs == [1, 50, 200]
    steps = 10
    assert learning_rate(cfg, 0, 0, steps) == pytest.approx(0.005)   # warm-up starts at base/iters
    assert learning_rate(cfg, 0, 9, steps) == pytest.approx(0.05)
    assert learning_rate(cfg, 59, 0, steps) == pytest.approx(0.05)
    assert learning_rate(cfg, 60, 0, steps) == pytest.approx(0.01)
    assert learning_rate(cfg, 120, 0, steps) == pytest.approx(0.002)
    assert learning_rate(cfg, 199, 0, steps) == pytest.approx(0.0004)
    short = Params({"profile": "x", "profiles": {"x": {"epochs": 20}}, "train": {"a": {"model": "resnet18"}}}).config("a", 1)
    assert short.milestone_epochs == [6, 12, 16]


def test_a_tiny_model_learns_real_cifar100(project):
    write_params("params.yaml", TINY_PARAMS.replace("epochs: 2, width: 0.125", "epochs: 4, width: 0.25"))
    p = Params.load("params.yaml")
    m = stages.run_experiment(p, "base_resnet18", [], CPU)[0]
    assert m["num_classes"] == 20
    assert m["best_top1"] >= 20.0  # chance is 5 %
    run = "runs/base_resnet18/s230/"
    hist = open(run + "history.tsv").read().splitlines()
    assert hist[0].split("\t")[:2] == ["epoch", "lr"] and len(hist) == 5
    timing = json.load(open(run + "timing.json"))
    assert len(timing["epoch_seconds"]) == 4 and "img" not in json.dumps(m)
    ckpt = torch.load(run + "epoch_0001.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and "optimizer" in ckpt and "rng" in ckpt
    summary = json.load(open("runs/base_resnet18.json"))
    assert summary["best_top1"] == m["best_top1"]


def test_clean_cache_matches_dataset_and_teacher(teacher):
    cfg = teacher.config("kd_r18_r18_clean", 230)
    [path] = stages.make_cache(teacher, "kd_r18_r18_clean", [], CPU)
    data = stages.load_data("embedded")
    with h5py.File(path) as f:
        assert f["logits"].dtype == np.float16 and f["logits"].shape == (1600, 20)
        assert np.array_equal(f["labels"][...], data.y_train)
        attrs = dict(f.attrs)
        logits = f["logits"][...]
    assert attrs["dataset_fingerprint"] == data.fingerprint and attrs["view_policy"] == "clean"
    assert attrs["checkpoint_epoch"] == 1 and attrs["teacher_model"] == "resnet18"
    assert attrs["checkpoint_sha256"] == sha256_file("runs/base_resnet18/s230/epoch_0001.pt")
    # row i is the teacher's output on training image i, un-augmented
    model, _ = checkpoint.load_model("runs/base_resnet18/s230/epoch_0001.pt", "resnet18", cfg.width, 20, 3)
    dd = DeviceData(data, CPU)
    with torch.no_grad():
        want = model(dd.inputs(dd.x_train[[0, 777, 1599]])).half().numpy()
    assert np.array_equal(logits[[0, 777, 1599]], want)
    # checkpoint metadata agrees with what the cache measured
    assert attrs["teacher_test_acc"] == pytest.approx(torch.load("runs/base_resnet18/s230/epoch_0001.pt", weights_only=True)["test_acc"])


def test_cache_bytes_are_identical_for_identical_inputs(teacher):
    [path] = stages.make_cache(teacher, "kd_r18_r18_clean", [], CPU)
    first = open(path, "rb").read()
    import os
    os.remove(path)
    stages.make_cache(teacher, "kd_r18_r18_clean", [], CPU)
    assert open(path, "rb").read() == first


def test_replay_cache_equals_online_teacher(teacher):
    """A student distilled from a replay cache ends with the weights of the same student trained
    with the teacher run online on the same views (its logits rounded to float16)."""
    p = teacher
    cfg = p.config("kd_r18_r18", 230)
    [path] = stages.make_cache(p, "kd_r18_r18", [], CPU)
    data = stages.load_data("embedded")
    dd = DeviceData(data, CPU)
    key = augment.run_key(230, cfg.identity)
    logits, attrs = cache.load(path, data, "replay", key, cfg.epochs, cfg.aug_spec)
    assert logits.shape == (2, 1600, 20) and attrs["run_key"] == key
    fit(cfg, dd, "a", CPU, cache.CacheTeacher(logits, CPU))
    tmodel, _ = checkpoint.load_model("runs/base_resnet18/s230/epoch_0002.pt", "resnet18", cfg.width, 20, 3)
    fit(cfg, dd, "b", CPU, OnlineTeacher(tmodel))
    wa = torch.load("a/last.pt", weights_only=True)["model"]
    wb = torch.load("b/last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    ma, mb = json.load(open("a/metrics.json")), json.load(open("b/metrics.json"))
    assert ma["final_top1"] == pytest.approx(mb["final_top1"], abs=0.5)


def test_distilled_student_learns(teacher):
    stages.make_cache(teacher, "kd_r18_r18", [], CPU)
    [m] = stages.run_experiment(teacher, "kd_r18_r18", [], CPU)
    assert m["best_top1"] >= 12.0  # chance is 5 %, after 2 tiny epochs
    assert m["teacher"] == "base_resnet18"


REFUSALS = {  # mismatch -> what the one-line refusal must say
    "policy": "with view policy 'replay', this run wants 'clean'",
    "dataset": "from other data (fingerprint",
    "run_key": "for another student run (run key",
    "epochs": "for 2 epochs, the run needs 3",
    "aug_spec": "with another augmentation (",
    "teacher": "from another teacher checkpoint (sha256",
    "truncated": "is truncated or corrupt",
}


def test_every_cache_mismatch_is_refused_for_its_own_reason(teacher, tmp_path):
    p = teacher  # one teacher and one cache for every case: each case changes what is asked
    cfg = p.config("kd_r18_r18", 230)
    [made] = stages.make_cache(p, "kd_r18_r18", [], CPU)
    data = stages.load_data("embedded")
    key = augment.run_key(230, cfg.identity)
    good = dict(data=data, policy="replay", run_key=key, epochs=2, spec=cfg.aug_spec)
    cache.load(made, **good)  # as made, it serves the run
    for mismatch, reason in REFUSALS.items():
        args, path = dict(good), made
        if mismatch == "policy":
            args["policy"] = "clean"
        elif mismatch == "dataset":
            other = np.load("data/prepared/embedded.npz")
            from pipeline.data import build
            x = other["x_train"].copy()
            x[0, 0, 0, 0] ^= 1
            args["data"] = build("embedded", {"x_train": x, "y_train": other["y_train"], "x_test": other["x_test"],
                                              "y_test": other["y_test"]}, classes=list(other["classes"]))
        elif mismatch == "run_key":
            args["run_key"] = key + 1
        elif mismatch == "epochs":
            args["epochs"] = 3
        elif mismatch == "aug_spec":
            args["spec"] = augment.AugmentSpec(pad=4, flip=True, rotate=0.0)
        elif mismatch == "teacher":
            args["teacher"] = {"checkpoint_sha256": "0" * 64}
        else:
            raw = open(made, "rb").read()
            path = str(tmp_path / "cut.h5")
            open(path, "wb").write(raw[: len(raw) // 2])
        with pytest.raises(TfkdError) as e:
            cache.load(path, **args)
        assert str(e.value).startswith(f"{path} was made " if mismatch != "truncated" else f"cache {path}"), mismatch
        assert reason in str(e.value) and "\n" not in str(e.value), (mismatch, str(e.value))
