"""`tfkd acceptance` in its CPU form, at tiny size: a run cut by the time cap is partial, never a
result; a run that completes leaves its metrics where `tfkd report` finds them."""
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from conftest import write_params
from pipeline.cli import main
from pipeline.report import build_report

PARAMS = """
profile: smoke
profiles:
  smoke: {dataset: embedded, epochs: 1, width: 0.125}
  check: {dataset: mini, epochs: EPOCHS, width: 0.125, checkpoints: {one_epoch: 1}}
seeds: [230]
defaults: {batch_size: 128}
train:
  base_resnet18: {model: resnet18}
"""


def raw_npz(path="mini.npz", train=16, test=4):
    """A raw npz as a user has one (x_train, y_train, x_test, y_test): a few images per class of the
    embedded subset, so the tiny form stays quick."""
    with np.load("data/prepared/embedded.npz") as d:
        keep = {split: np.concatenate([np.flatnonzero(d[f"y_{split}"] == k)[:count] for k in range(20)])
                for split, count in (("train", train), ("test", test))}
        np.savez(path, **{f"{a}_{split}": d[f"{a}_{split}"][keep[split]] for a in "xy" for split in keep})
    return path


def accept(epochs, *args):
    write_params("params.yaml", PARAMS.replace("EPOCHS", str(epochs)))
    return CliRunner().invoke(main, ["acceptance", "--profile", "check", "--steps", "1", "--cache-epochs", "1",
                                     "--data", raw_npz(), *args])


def report_row(name="base_resnet18"):
    write_params("params.yaml", Path("params.yaml").read_text().replace("profile: smoke", "profile: check"))
    return build_report("params.yaml", "runs")["experiments"][name]


def test_a_run_cut_by_the_time_cap_is_partial_and_resumable(project):
    result = accept(3, "--time-cap", "0.01")  # stops after the first epoch
    print(result.output)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("tfkd: error: base_resnet18 was cut at the time cap after ") and "1/3 epochs" in last
    data = json.loads(Path("runs/acceptance.json").read_text())
    t = data["training"]
    assert t["partial"] and t["epochs_done"] == 1 and t["epochs"] == 3 and "best_top1" not in t
    train_rows = {r["key"]: r for r in data["targets"] if r["key"] in ("train_seconds", "best_top1")}
    assert all(r["measured"] is None and r["verdict"].startswith("NO RESULT (partial") for r in train_rows.values())
    run = Path("runs/base_resnet18/s230")
    assert not (run / "metrics.json").exists() and (run / "last.pt").exists()  # no result, checkpoint kept
    assert json.loads(Path("runs/base_resnet18.json").read_text())["best_top1"] is None
    assert "PARTIAL" in Path("runs/acceptance.md").read_text()
    row = report_row()
    assert row["status"] == "partial: 1/3 epochs" and row["best_top1"] is None
    # the same command again resumes the run from its checkpoint and completes it
    result = accept(3, "--time-cap", "300")
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output
    t = json.loads(Path("runs/acceptance.json").read_text())["training"]
    assert not t["partial"] and t["epochs_done"] == 3 and (run / "metrics.json").exists()


def test_a_completed_run_states_every_target_and_its_metrics_reach_the_report(project):
    result = accept(2, "--time-cap", "300")
    assert result.exit_code == 0, result.output
    assert Path("data/prepared/mini.npz").exists()  # the raw npz, prepared as `tfkd prepare npz` does
    data = json.loads(Path("runs/acceptance.json").read_text())
    for key in ("device", "torch", "git_commit", "command", "date"):
        assert data[key] is not None, key
    assert data["device"].startswith("cpu") and data["command"].startswith("tfkd")
    assert any("device cpu" in why for why in data["not_at_target_setting"])  # CPU: not the targets' setting
    targets = {r["key"]: r for r in data["targets"]}
    assert len(targets) == 12 and all(r["verdict"] in ("PASS", "MISS") for r in targets.values())
    assert targets["train_ce"]["measured"] == data["bench"]["images_per_second"]["train_ce"]
    assert targets["train_ce"]["verdict"] == "MISS"  # a tiny CPU run is far below 40k img/s
    t = data["training"]
    assert not t["partial"] and t["epochs_done"] == 2 and targets["best_top1"]["measured"] == t["best_top1"]
    metrics = json.loads(Path("runs/base_resnet18/s230/metrics.json").read_text())
    assert metrics["best_top1"] == t["best_top1"] and metrics["final_top1"] == t["final_top1"]
    row = report_row()
    assert row["status"] == "measured" and row["best_top1"] == t["best_top1"]
    summary = Path("runs/acceptance.md").read_text()
    assert "| ResNet18 training, CE, batch 128 | ≥ 40,000 img/s |" in summary and "MISS" in summary
    assert summary in result.output
