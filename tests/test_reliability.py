"""Bad input, interruption and reproducibility, as a user meets them (through the CLI)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_PARAMS, one_line_error, tfkd




@pytest.mark.parametrize("edit, needles", [
    (("epochs: 2,", "epochs: -1,"), ["epochs", ">= 1"]),
    (("alpha: 0.9, temperature: 4, cache_policy: replay", "alpha: 1.5, temperature: 4, cache_policy: replay"), ["alpha", "[0, 1]"]),
    (("temperature: 4, cache_policy: replay", "temperature: 0, cache_policy: replay"), ["temperature", "> 0"]),
    (("{model: resnet18}", "{model: resnet18, learning_rate: 0.1}"), ["learning_rate"]),
    (("{model: resnet18}", "{model: resnet18, alhpa: 0.1}"), ["alhpa", "did you mean 'alpha'"]),
    (("defaults: {batch_size: 64}", "defaults: {batch_size: 64}\nsedes: [1]"), ["sedes", "seeds"]),
    (("{model: resnet18}", "{model: resnet18, method: mixup}"), ["mixup", "ce, lsr, reg"]),
    (("cache_policy: clean", "cache_policy: cleen"), ["cache_policy", "clean, replay"]),
])
def test_bad_params_are_refused_with_one_line(tiny, edit, needles):
    text = Path("params.yaml").read_text()
    assert edit[0] in text
    Path("params.yaml").write_text(text.replace(edit[0], edit[1]))
    one_line_error(*tfkd("train", "base_resnet18"), *needles)
    assert not os.path.exists("runs")


def test_unknown_model_dataset_experiment_and_missing_data(tiny):
    Path("params.yaml").write_text(TINY_PARAMS.replace("{model: resnet18}", "{model: resnet19}"))
    one_line_error(*tfkd("train", "base_resnet18"), "resnet19", "resnet18")
    Path("params.yaml").write_text(TINY_PARAMS)
    one_line_error(*tfkd("train", "base_resnet81"), "base_resnet81", "did you mean 'base_resnet18'")
    one_line_error(*tfkd("prepare", "imagenet22k"), "imagenet22k")
    os.remove("data/prepared/embedded.npz")
    one_line_error(*tfkd("train", "base_resnet18"), "tfkd prepare")


def test_missing_cache_and_teacher(tiny):
    one_line_error(*tfkd("cache", "kd_r18_r18"), "teacher checkpoint", "tfkd train")
    one_line_error(*tfkd("distill", "kd_r18_r18"), "cache", "tfkd cache")


def test_finished_result_is_not_overwritten_without_asking(tiny):
    assert tfkd("train", "base_resnet18")[0] == 0
    before = Path("runs/base_resnet18/s230/metrics.json").read_text()
    code, out = tfkd("train", "base_resnet18")  # same settings: nothing to do
    assert code == 0 and "already finished" in out
    Path("params.yaml").write_text(TINY_PARAMS.replace("batch_size: 64", "batch_size: 32"))
    one_line_error(*tfkd("train", "base_resnet18"), "runs/base_resnet18/s230", "--overwrite")
    assert Path("runs/base_resnet18/s230/metrics.json").read_text() == before
    assert tfkd("train", "base_resnet18", "--overwrite")[0] == 0
    assert json.loads(Path("runs/base_resnet18/s230/metrics.json").read_text())["params"]["batch_size"] == 32


def test_external_cache_output_is_not_overwritten(tiny):
    assert tfkd("train", "base_resnet18")[0] == 0
    args = ["cache", "--checkpoint", "runs/base_resnet18/s230/epoch_0002.pt", "--model", "resnet18",
            "--width", "0.125", "--data", "data/prepared/embedded.npz", "--out", "cache/ext.h5"]
    assert tfkd(*args)[0] == 0
    one_line_error(*tfkd(*args), "cache/ext.h5", "--overwrite")
    args[4] = "mobilenetv2"
    one_line_error(*tfkd(*(args + ["--overwrite"])), "holds resnet18", "not the mobilenetv2")


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tiny):
    Path("params.yaml").write_text(TINY_PARAMS.replace("batch_size: 64}", "batch_size: 64, lr: 1.0e+30}"))
    code, out = tfkd("train", "base_resnet18")
    one_line_error(code, out, "NaN/inf", "epoch 1", "step")
    assert not os.path.exists("runs/base_resnet18/s230/metrics.json")
    assert not os.path.exists("runs/base_resnet18/s230/last.pt")  # no good epoch finished


def test_a_failed_checkpoint_write_stops_the_run_with_one_line(tiny, monkeypatch):
    # Checkpoints are written by a background thread; its failure must reach the user, and no
    # metrics.json may claim a finished run.
    def disk_full(obj, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("pipeline.train.torch.save", disk_full)
    code, out = tfkd("train", "base_resnet18")
    errors = [line for line in out.splitlines() if line.startswith("tfkd: error: ")]  # after epoch 1's progress
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, out
    assert "could not write a checkpoint" in errors[0] and "No space left on device" in errors[0]
    assert not os.path.exists("runs/base_resnet18/s230/metrics.json")
    assert not [f for f in os.listdir("runs/base_resnet18/s230") if f.endswith(".pt") or f.endswith(".tmp")]


def test_same_seed_same_metrics_and_weights(tiny):
    assert tfkd("train", "base_resnet18")[0] == 0
    first = json.loads(Path("runs/base_resnet18/s230/metrics.json").read_text())
    w1 = torch.load("runs/base_resnet18/s230/last.pt", weights_only=True)["model"]
    os.rename("runs", "runs_first")
    assert tfkd("train", "base_resnet18")[0] == 0
    second = json.loads(Path("runs/base_resnet18/s230/metrics.json").read_text())
    assert first == second
    assert first["seed"] == 230 and first["package_version"] and first["params"]["width"] == 0.125
    w2 = torch.load("runs/base_resnet18/s230/last.pt", weights_only=True)["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny):
    Path("params.yaml").write_text(TINY_PARAMS.replace("epochs: 2,", "epochs: 3,").replace("batch_size: 64", "batch_size: 16"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pipeline", "train", "base_resnet18"]
    history = Path("runs/base_resnet18/s230/history.tsv")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and len(history.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    time.sleep(0.5)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(history.read_text().splitlines()) == 2, "the kill should land in epoch 2"
    assert not Path("runs/base_resnet18/s230/metrics.json").exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming after epoch 1" in resumed.stdout, resumed.stderr
    os.rename("runs", "runs_resumed")
    straight = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert straight.returncode == 0
    a = torch.load("runs_resumed/base_resnet18/s230/last.pt", weights_only=True)
    b = torch.load("runs/base_resnet18/s230/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"] == b["history"]
