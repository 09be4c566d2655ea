from pathlib import Path

import numpy as np
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


def tfkd(*args):
    """`tfkd ARGS` in-process: (exit code, stdout and stderr together)."""
    from click.testing import CliRunner
    from pipeline.cli import main
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def one_line_error(code, out, *needles):
    """The CLI refused in one line 'tfkd: error: ...' holding every needle; returns the line."""
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tfkd: error: "), out
    assert "Traceback" not in out
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def synthetic(n_train=12, n_test=6, k=3, shape=(8, 8, 3), seed=0):
    """Random uint8 images, labels cycling over k classes."""
    rng = np.random.default_rng(seed)
    return dict(x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
                y_train=np.arange(n_train) % k,
                x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
                y_test=np.arange(n_test) % k)


@pytest.fixture
def tiny(project):
    """The scratch project with TINY_PARAMS as its params.yaml."""
    write_params("params.yaml", TINY_PARAMS)
    return project
