"""The fast path (capture.py): what a CPU can check of it.

The CUDA-graph capture itself needs a GPU (`tfkd bench` checks it there; test_graph_replay.py
audits the captured functions on the CPU). Here: the flags and their defaults, the tensor-valued
inputs a captured step reads, and torch.compile (Inductor's C++ backend) against the eager step —
the same TrainStep, fit and cache code a GPU runs.
"""
import contextlib
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY_PARAMS, write_params
from pipeline import bench, cache, capture, data as datasets
from pipeline.cli import main
from pipeline.config import Params
from pipeline.errors import TfkdError
from pipeline.train import DeviceData, fit, model_for

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="torch.compile on the CPU needs a C++ compiler")


def test_fast_path_defaults_and_refusals():
    assert capture.fast_path(CPU, 1) == (False, False)
    assert capture.fast_path(CUDA, 1) == (True, True)       # one GPU: graph + compile
    assert capture.fast_path(CUDA, 2) == (False, False)     # torchrun: eager ranks
    assert capture.fast_path(CUDA, 1, compile=False) == (True, False)
    assert capture.fast_path(CPU, 1, compile=True) == (False, True)
    with pytest.raises(TfkdError, match="--graph needs a CUDA device"):
        capture.fast_path(CPU, 1, graph=True)
    with pytest.raises(TfkdError, match="under torchrun"):
        capture.fast_path(CUDA, 2, compile=True)


def test_graph_flag_on_cpu_is_one_line_error(project):
    write_params("params.yaml", TINY_PARAMS)
    want = ["tfkd: error: --graph needs a CUDA device; on cpu drop it (the step runs eagerly)"]
    for args, env in ((["--graph"], {}), ([], {"TFKD_GRAPH": "1"})):  # the flag, or DVC's way: the environment
        res = CliRunner().invoke(main, ["train", "base_resnet18", "--device", "cpu"] + args, env=env)
        assert res.exit_code == 2 and res.output.strip().splitlines() == want


def test_replay_cache_lookup_with_a_tensor_epoch():
    # A captured step reads the epoch from a device tensor; the gather must pick the same rows.
    logits = np.random.default_rng(0).standard_normal((3, 10, 4)).astype(np.float16)
    teacher = cache.CacheTeacher(logits, CPU)
    idx = torch.tensor([7, 0, 3])
    want = torch.from_numpy(logits[2][[7, 0, 3]]).float()
    assert torch.equal(teacher.logits(2, idx), want)
    assert torch.equal(teacher.logits(torch.tensor(2), idx), want)
    clean = cache.CacheTeacher(logits[0], CPU)
    assert torch.equal(clean.logits(torch.tensor(2), idx), torch.from_numpy(logits[0][[7, 0, 3]]).float())


@needs_compiler
def test_compiled_step_matches_the_eager_step(project):
    data = datasets.load("data/prepared/embedded.npz")
    report = bench.check(data, CPU, "resnet18", width=0.25, batch_size=64, steps=4, compile=True,
                         fp32_reference=True, log=print)
    form = report["forms"]["compile"]
    assert form["ok"] and set(report["forms"]) == {"compile"}
    # the fp32 reference is the eager step itself on a CPU: bf16 widens nothing here
    assert report["bf16_vs_fp32"] == {"max_loss_rel_err": 0.0, "weights_rel_l2_err": 0.0}
    assert (report["loss_rtol"], report["weight_rtol"]) == (bench.LOSS_RTOL, bench.WEIGHT_RTOL)
    # fp32 on the CPU: only the order of floating-point operations differs (amplified a little by
    # each SGD step); stale weights or a lost update would be off by percents
    assert form["max_loss_rel_err"] < 2e-3 and form["weights_rel_l2_err"] < 2e-3
    assert report["eager_losses"][0] == pytest.approx(np.log(20), rel=0.2)  # a fresh 20-class net


@needs_compiler
def test_compiled_training_run_matches_eager(project):
    # A whole epoch through fit at the real learning rate: full batches compiled, the last partial
    # batch (1600 % 512) eager, evaluation, checkpoints. Compiled kernels round differently and
    # these tiny BatchNorm nets amplify that within a few steps, so the runs are compared by how
    # far apart they end relative to how far the weights moved: a compiled path that skipped or
    # botched opt.step() would be as far from eager as the whole update.
    write_params("params.yaml", TINY_PARAMS.replace("epochs: 2, width: 0.125", "epochs: 1, width: 0.25")
                 .replace("batch_size: 64", "batch_size: 512, lr: 0.002"))
    p = Params.load("params.yaml")
    cfg = p.config("base_resnet18", 230)
    dd = DeviceData(datasets.load("data/prepared/embedded.npz"), CPU)
    start = model_for(cfg, dd.data, CPU).state_dict()
    fit(cfg, dd, "eager", CPU)
    torch._dynamo.utils.counters.clear()
    fit(cfg, dd, "fast", CPU, compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the steps did run compiled
    a = torch.load("eager/last.pt", weights_only=True)
    b = torch.load("fast/last.pt", weights_only=True)
    weights = [n for n, v in start.items() if v.is_floating_point() and "running" not in n]
    moved = torch.cat([(a["model"][n] - start[n]).flatten() for n in weights]).norm()
    apart = torch.cat([(b["model"][n] - a["model"][n]).flatten() for n in weights]).norm()
    scale = torch.cat([start[n].flatten() for n in weights]).norm()
    assert moved > 0.001 * scale  # the weights really moved (at lr 1e-7: ~1e-6 of scale)
    assert apart < 0.1 * moved, (apart, moved)  # measured: 0.035; a skipped compiled opt.step: ~0.75
    assert b["model"]["bn1.num_batches_tracked"] == 4  # 3 compiled steps + the eager partial one
    assert b["history"][0][2] == pytest.approx(a["history"][0][2], rel=1e-3)  # the epoch's mean training loss
    timing = json.loads(open("fast/timing.json").read())
    assert timing["compile"] is True and timing["graph"] is False


class FakeCuda:
    """Just enough of torch.cuda for capture.Graphed's control flow on a CPU: streams are no-ops; a
    graph counts its captures and replays (a real replay runs kernels, never the Python function)."""

    def __init__(self, capture_error=None):
        self.captures, self.replays = 0, 0
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1

        @contextlib.contextmanager
        def graph(g):
            fake.captures += 1
            yield
            if capture_error:
                raise RuntimeError(capture_error)

        class Stream:
            def wait_stream(self, other):
                pass

        self.CUDAGraph, self.graph, self.Stream, self.current_stream = Graph, graph, Stream, Stream
        self.stream = lambda s: contextlib.nullcontext()


def test_graphed_warms_up_captures_once_then_replays(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(capture.torch, "cuda", fake)
    calls = []
    graphed = capture.Graphed(lambda: calls.append(1), True, warmup=2)
    for _ in range(5):
        graphed()
    # 2 eager warm-up calls, then fn once under capture (recorded), and a replay per call from then on
    assert len(calls) == 3 and fake.captures == 1 and fake.replays == 3


def test_a_failed_capture_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setattr(capture.torch, "cuda", FakeCuda(capture_error="operation not permitted\nwhen capturing"))
    graphed = capture.Graphed(lambda: None, True, warmup=1, what="the training step")
    graphed()
    with pytest.raises(TfkdError) as err:
        graphed()
    assert str(err.value) == ("capturing the training step in a CUDA graph failed (RuntimeError: operation not "
                              "permitted when capturing); rerun with --no-graph (env TFKD_GRAPH=0)")
