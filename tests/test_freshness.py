"""A result follows everything it was computed from: settings, data, results version, teacher."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY_PARAMS, write_params
from pipeline import data as datasets, train, version
from pipeline.cli import main

RUN = Path("runs/base_resnet18/s230")


def tfkd(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def refused(code, out, *needles):
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tfkd: error: "), out
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def tiny(project):
    write_params("params.yaml", TINY_PARAMS)
    return project


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
    refused(*tfkd("train", "base_resnet18"), "runs/base_resnet18/s230 was computed with other settings (lr 0.1 → 0.05)",
            "--overwrite")


def test_other_data_redoes_the_run_under_overwrite_and_is_refused_without(tiny):
    assert tfkd("train", "base_resnet18")[0] == 0
    old, new = reprepare_other_data()
    refused(*tfkd("train", "base_resnet18"), f"was computed from other data (fingerprint {old[:4]}… → {new[:4]}…)")
    code, out = tfkd("train", "base_resnet18", "--overwrite")
    assert code == 0 and "already finished" not in out and "epoch 2/2" in out, out
    assert json.loads((RUN / "metrics.json").read_text())["identity"]["dataset_fingerprint"] == new


def test_another_results_version_redoes_the_run(tiny, monkeypatch):
    assert tfkd("train", "base_resnet18")[0] == 0
    monkeypatch.setattr("pipeline.config.RESULTS_VERSION", version.RESULTS_VERSION + 1)
    refused(*tfkd("train", "base_resnet18"),
            f"by results version {version.RESULTS_VERSION}, this is {version.RESULTS_VERSION + 1}")
    code, out = tfkd("train", "base_resnet18", "--overwrite")
    assert code == 0 and "epoch 2/2" in out, out
