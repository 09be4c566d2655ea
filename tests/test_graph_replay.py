"""What a CUDA graph would get wrong, checked on the CPU.

A function run through capture.Graphed is recorded once and then replayed: every replay launches
the same kernels on the same memory with the same constants, whatever the Python code would do by
then. Here Graphed is swapped for an auditor that runs the function eagerly every time, traces each
aten op with the memory it touches outside the call and the Python values baked into it, and
compares each later call with the one that would have been captured. It also flags host syncs (an
error during capture on the GPU). fit and cache.write then run their graph path on the CPU, with
fused SGD reading the learning rate from a tensor as on the GPU.
"""
import h5py
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from conftest import TINY_PARAMS, write_params
from pipeline import augment, cache, capture, train
from pipeline import data as datasets
from pipeline.config import Params
from pipeline.train import DeviceData, fit

CPU = torch.device("cpu")
# Read a device value on the host: a capture error on the GPU (or a stale value baked into a graph).
HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
              "tensor", "as_tensor", "from_numpy"}  # the last three copy host data to the device
SYNC_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2",
            "aten.unique_dim", "aten.unique_consecutive", "aten.equal"}


class Trace(TorchDispatchMode):
    """The aten ops of one call: each tensor argument is either made within the call (its shape
    and dtype must repeat) or lives outside it (its address must repeat: a graph reads it there)."""

    def __init__(self):
        super().__init__()
        self.ops, self.syncs, self.made = [], [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name.startswith("profiler."):  # the optimizer's record_function markers: host-side only
            return func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if torch.is_tensor(a)]
        if name in SYNC_OPS or (name in ("aten.index", "aten.index_put", "aten.index_put_")
                                and any(t.dtype == torch.bool for t in flat[1:] if torch.is_tensor(t))):
            self.syncs.append(name)
        self.ops.append((str(func), tuple(self._sig(a) for a in flat)))
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        self.made |= {t.untyped_storage().data_ptr() for t in tree_flatten(out)[0] if torch.is_tensor(t)} - inputs
        return out

    def _sig(self, a):
        if not torch.is_tensor(a):
            return repr(a)
        where = "made" if a.untyped_storage().data_ptr() in self.made else a.data_ptr()
        return (where, a.dtype, tuple(a.shape), a.stride())


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


class Audited:
    """capture.Graphed's stand-in: runs fn eagerly each call, auditing it as a graph replay."""

    made = []

    def __init__(self, fn, enabled, warmup=3, what="a step"):
        self.fn, self.enabled, self.warmup = fn, enabled, warmup
        self.calls, self.captured, self.replays, self.problems = 0, None, 0, []
        self.name = fn.__qualname__
        Audited.made.append(self)

    def __call__(self):
        if not self.enabled:
            return self.fn()
        trace, reads = Trace(), HostReads()
        with reads, trace:
            self.fn()
        self.problems += [f"host sync {s}" for s in trace.syncs + reads.seen]
        if self.calls == self.warmup:
            self.captured = trace.ops
        elif self.calls > self.warmup:
            self.replays += 1
            if len(trace.ops) != len(self.captured):
                self.problems.append(f"call {self.calls}: {len(trace.ops)} ops, {len(self.captured)} captured")
            for i, ((op, now), (_, then)) in enumerate(zip(trace.ops, self.captured)):
                if now != then:  # name the first argument that differs, briefly
                    j = next((j for j, (a, b) in enumerate(zip(now, then)) if a != b), len(then))
                    self.problems.append(f"call {self.calls}, op {i} {op}, argument {j}: "
                                         f"{str(now[j:j + 1])[:80]} would replay as {str(then[j:j + 1])[:80]}")
                    break
        self.calls += 1


def graph_path_on_cpu(monkeypatch):
    """The graph path on the CPU: fast_path says graph, Graphed is audited, SGD is the fused kernel
    (the GPU's; on the CPU only the fused one reads a tensor learning rate without a host sync)."""
    Audited.made = []
    monkeypatch.setattr(capture, "fast_path", lambda device, world_size, graph=None, compile=None: (True, False))
    monkeypatch.setattr(capture, "Graphed", Audited)
    plain = train.make_optimizer

    def fused(model, cfg, device):
        opt = plain(model, cfg, device)
        for group in opt.param_groups:
            group["fused"] = True
        return opt
    monkeypatch.setattr(train, "make_optimizer", fused)
    return Audited.made


def checked(made, names):
    for a in made:
        assert not a.problems, f"{a.name}: {a.problems[:3]}"
    replays = {a.name: a.replays for a in made}
    for name in names:
        assert replays.get(name, 0) >= 1, f"{name} was never replayed: {replays}"


PARAMS = TINY_PARAMS.replace("epochs: 2", "epochs: 3").replace("  base_resnet18: {model: resnet18}\n", """\
  base_resnet18: {model: resnet18}
  lsr_resnet18: {model: resnet18, method: lsr}
  reg_resnet18: {model: resnet18, method: reg, alpha: 0.1, temperature: 20, multiplier: 100}
""")


@pytest.mark.parametrize("name,teacher", [("base_resnet18", None), ("lsr_resnet18", None), ("reg_resnet18", None),
                                          ("kd_r18_r18", "cache"), ("kd_r18_r18", "online")])
def test_training_replays_as_captured(project, monkeypatch, name, teacher):
    write_params("params.yaml", PARAMS)
    cfg = Params.load("params.yaml").config(name, 230)
    data = DeviceData(datasets.load("data/prepared/embedded.npz"), CPU)
    if teacher == "cache":  # a replay cache: the step looks rows up by (epoch tensor, index)
        logits = np.random.default_rng(0).standard_normal((3, len(data.y_train), 20)).astype(np.float16)
        teacher = cache.CacheTeacher(logits, CPU)
    elif teacher == "online":  # the teacher network inside the captured step (bench's train_kd_online)
        torch.manual_seed(1)
        teacher = train.OnlineTeacher(train.build_model("resnet18", 20, width=0.125))
    made = graph_path_on_cpu(monkeypatch)
    with monkeypatch.context() as m:  # the same maths run eagerly: fused SGD, the lr a Python float
        m.setattr(capture, "fast_path", lambda device, world_size, graph=None, compile=None: (False, False))
        eager = fit(cfg, data, "eager", CPU, teacher=teacher)
    made.clear()
    fast = fit(cfg, data, "fast", CPU, teacher=teacher)
    checked(made, ["TrainStep.__init__.<locals>.<lambda>", "Evaluator._pass"])
    step = next(a for a in made if a.name.startswith("TrainStep"))
    assert step.calls == 3 * (len(data.y_train) // cfg.batch_size)  # every full batch went the graph way
    # ...and computes exactly what the same maths does eagerly
    a, b = torch.load("eager/last.pt", weights_only=True), torch.load("fast/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["history"] == a["history"] and fast["best_top1"] == eager["best_top1"]


@pytest.mark.parametrize("policy", ["replay", "clean"])
def test_cache_passes_replay_as_captured(project, monkeypatch, policy):
    write_params("params.yaml", PARAMS)
    cfg = Params.load("params.yaml").config("kd_r18_r18", 230)
    data = DeviceData(datasets.load("data/prepared/embedded.npz"), CPU)
    torch.manual_seed(0)
    model = train.build_model("resnet18", 20, width=0.125)
    args = dict(ddata=data, policy=policy, attrs={}, run_key=augment.run_key(230, cfg.identity), epochs=4,
                spec=cfg.aug_spec, batch_size=512, log=lambda *a: None)  # 1600 = 3 x 512 + a partial batch
    cache.write("eager.h5", model, **args)
    made = graph_path_on_cpu(monkeypatch)
    cache.write("fast.h5", model, **args)
    if policy == "replay":  # four epochs: warm-up, capture, two replays
        checked(made, ["_logit_blocks.<locals>.one_pass"])
    else:  # one pass: never replayed, but still capturable
        assert [a.calls for a in made] == [1] and not made[0].problems
    with h5py.File("eager.h5") as a, h5py.File("fast.h5") as b:
        assert np.array_equal(a["logits"][...], b["logits"][...])
