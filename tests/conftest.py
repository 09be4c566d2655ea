import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(2)  # same thread count everywhere: CPU results are bit-reproducible


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project folder (params.yaml + data/prepared/embedded.npz) as the working directory."""
    from pipeline import data
    monkeypatch.chdir(tmp_path)
    data.prepare("embedded", tmp_path / "data" / "prepared" / "embedded.npz")
    return tmp_path


def write_params(path, text):
    Path(path).write_text(text)
    return path


TINY_PARAMS = """
profile: t
profiles:
  t: {dataset: embedded, epochs: 2, width: 0.125, checkpoints: {one_epoch: 1}}
seeds: [230]
defaults: {batch_size: 64}
train:
  base_resnet18: {model: resnet18}
distill:
  kd_r18_r18: {model: resnet18, teacher: base_resnet18, alpha: 0.9, temperature: 4, cache_policy: replay}
  kd_r18_r18_clean: {model: resnet18, teacher: base_resnet18, teacher_checkpoint: one_epoch, alpha: 0.9, temperature: 4, cache_policy: clean}
"""
