"""Data parallelism: the stages under torchrun with 2 gloo processes on the CPU, as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY_PARAMS, write_params
from pipeline import augment, data as datasets
from pipeline.distributed import World
from pipeline.losses import Objective
from pipeline.train import DeviceData, evaluate, model_for
from pipeline.config import Params, RunConfig


def torchrun(*args, ranks=2):
    """`torchrun --standalone --nproc_per_node N -m pipeline ARGS` in the working directory."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "pipeline", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.parametrize("n, size", [(128, 2), (80, 3), (7, 7), (64, 1)])
def test_rank_shards_cover_each_global_batch_exactly_once(n, size):
    batch = augment.epoch_order(5, 3, 1000, torch.device("cpu"))[:n]
    shards = [World(r, size).shard(batch) for r in range(size)]
    assert torch.equal(torch.cat(shards), batch)  # the same samples, so the same augmented views
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("method", ["ce", "lsr", "reg", "kd"])
def test_rank_loss_weights_make_the_ddp_average_the_global_batch_mean(method):
    """DDP averages the ranks' gradients; train.fit weights rank r's loss by n_r * W / n, so the
    average is the gradient of the loss over the whole (unevenly split) global batch."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(11, 6, generator=gen, requires_grad=True)
    teacher, labels = torch.randn(11, 6, generator=gen), torch.randint(0, 6, (11,), generator=gen)
    obj = Objective(RunConfig(name="t", role="distill" if method == "kd" else "train", model="resnet18",
                              method=method, alpha=0.7, temperature=3.0, multiplier=2.0), 6)
    whole = torch.autograd.grad(obj(logits, labels, teacher), logits)[0]
    size, parts = 3, []
    for r in range(size):
        idx = World(r, size).shard(torch.arange(11))
        loss = obj(logits[idx], labels[idx], teacher[idx]) * (len(idx) * size / 11)
        parts.append(torch.autograd.grad(loss, logits)[0])
    torch.testing.assert_close(sum(parts) / size, whole, rtol=1e-6, atol=1e-7)


@pytest.fixture
def tiny(project):
    write_params("params.yaml", TINY_PARAMS)
    return project


def test_train_cache_distill_on_two_gloo_ranks(tiny):
    # A global batch of 63 splits 32/31 over the ranks (and the last one, 25, splits 13/12), so the
    # per-rank loss weights are not 1: exercised for real, not only in the unit test above.
    write_params("params.yaml", TINY_PARAMS.replace("batch_size: 64", "batch_size: 63"))
    out = ok(torchrun("train", "base_resnet18"))
    assert out.count("epoch 2/2") == 1  # progress from rank 0 only
    run = Path("runs/base_resnet18/s230")
    assert sorted(p.name for p in Path("runs").rglob("metrics.json")) == ["metrics.json"]
    assert not list(Path("runs").rglob("*.tmp*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_top1"] >= 12.0  # it learns: chance is 5 % on the 20 classes
    assert json.loads((run / "timing.json").read_text())["ranks"] == 2
    # the test accuracy reduced over the ranks is that of the saved model, scored by one process:
    # the ranks' models stayed identical, so every step's gradients were all-reduced
    params = Params.load("params.yaml")
    ddata = DeviceData(datasets.load("data/prepared/embedded.npz"), torch.device("cpu"))
    model = model_for(params.config("base_resnet18", 230), ddata.data, torch.device("cpu"))
    model.load_state_dict(torch.load(run / "last.pt", weights_only=True)["model"])
    assert evaluate(model, ddata, 1000)[1] == metrics["final_top1"]
    # interrupted after epoch 1 (rank 0 reads last.pt and hands it to rank 1): the resumed run
    # ends with the same weights as the uninterrupted one; a finished run is not run again
    final = torch.load(run / "last.pt", weights_only=True)["model"]
    (run / "metrics.json").unlink()
    (run / "last.pt").write_bytes((run / "epoch_0001.pt").read_bytes())
    assert "resuming after epoch 1" in ok(torchrun("train", "base_resnet18"))
    resumed = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    assert "already finished" in ok(torchrun("train", "base_resnet18"))

    # the 2-rank cache equals the 1-rank cache (clean and replay views)
    for exp in ("kd_r18_r18", "kd_r18_r18_clean"):
        ok(torchrun("cache", exp))
        two = Path(f"cache/{exp}/s230.h5").rename(f"two-{exp}.h5")
        ok(torchrun("cache", exp, ranks=1))
        with h5py.File(two) as a, h5py.File(f"cache/{exp}/s230.h5") as b:
            assert a["logits"].shape == b["logits"].shape
            np.testing.assert_allclose(a["logits"][...].astype(np.float32), b["logits"][...].astype(np.float32),
                                       rtol=1e-3, atol=1e-3)  # float16 rounding
            assert np.array_equal(a["labels"][...], b["labels"][...])
            assert dict(a.attrs) == dict(b.attrs)

    out = ok(torchrun("distill", "kd_r18_r18"))
    assert out.count("epoch 2/2") == 1
    assert len(list(Path("runs/kd_r18_r18").rglob("metrics.json"))) == 1
    assert json.loads(Path("runs/kd_r18_r18/s230/metrics.json").read_text())["best_top1"] > 7.5


def test_an_error_on_every_rank_ends_the_job_with_one_line_each(tiny):
    res = torchrun("distill", "kd_r18_r18")  # no cache yet
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("tfkd: error:")]
    assert len(errors) == 2 and all("not found" in e and "tfkd cache" in e for e in errors), res.stderr
    assert not Path("runs/kd_r18_r18/s230/metrics.json").exists()
    res = torchrun("train", "base_resnet18", "--sync-bn")
    assert res.returncode != 0 and "--sync-bn needs GPUs" in res.stderr, res.stderr
    assert not Path("runs/base_resnet18/s230").exists()
