"""`tfkd bench`: throughput of every stage in ONE run, on the same data, as ratios.

Rows (img/s): teacher inference as cache writing does it (steady state, and a whole replay cache
file end to end, HDF5 included); student training with CE, LSR, Tf-KD reg, KD from a cached
[N, K] logit table and KD with the teacher run online; and a reference-style loop (fp32, eager,
batch 128, the teacher run online with autograd on, as the reference code did) as the baseline.
Every product row runs the code of the real stages (step.TrainStep, cache._logit_blocks and
cache.write) with the same fast path; only the reference row turns off what the product adds.

`check` trains a few steps eagerly and with each fast form from the same weights on the same
batches and compares the losses and the weights: the fast path must keep the maths.
"""
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import torch

from . import __version__, augment, cache, capture
from .config import RunConfig
from .losses import Objective
from .step import TrainStep
from .device import device_name
from .precision import PrecisionPolicy
from .train import DeviceData, OnlineTeacher, make_optimizer, model_for

# A fast form keeps the maths when, after `check`'s steps, every step's loss is within LOSS_RTOL of
# the eager step's and the weights within WEIGHT_RTOL (relative L2), or within what bf16 alone
# changes (check() measures it on a GPU): rounding, not a bug.
LOSS_RTOL, WEIGHT_RTOL = 2e-2, 1e-2


def _timed(fn, steps, warmup, device):
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batches(n, bs, device):
    """next_index() -> the next batch of sample indices, cycling over one fixed order."""
    order = augment.epoch_order(1, 0, n, device)
    state = {"i": 0}

    def next_index():
        i = state["i"]
        state["i"] = (i + bs) % max(n - bs, 1)
        return order[i:i + bs]
    return next_index


def _student(cfg, data, device, objective, ddata, teacher, graph, compile, mixed=True):
    """A fresh student and its TrainStep; `mixed=False`: the bare fp32 model, eager."""
    model = model_for(cfg, data, device)
    opt = make_optimizer(model, cfg, device)
    net = PrecisionPolicy(model) if mixed else model
    step = TrainStep(net, opt, objective, ddata, augment.AugmentSpec(), teacher, cfg.batch_size, graph,
                     capture.compiled(net, compile))
    step.start_epoch(1, 0)
    return model, step


def run(data, device, student="resnet18", teacher="resnet18", width=1.0, batch_size=128,
        infer_batch_size=1024, steps=50, warmup=5, cache_epochs=10, graph=None, compile=None, log=print):
    graph, compile = capture.fast_path(device, 1, graph, compile)
    ddata = DeviceData(data, device)
    n, k = len(data.y_train), data.num_classes
    spec = augment.AugmentSpec()
    cfg = RunConfig(name="bench", role="distill", model=student, width=width, batch_size=batch_size)
    tcfg = RunConfig(name="bench-teacher", role="train", model=teacher, width=width)
    tmodel = model_for(tcfg, data, device).eval()
    results = {}

    def record(label, rate):
        results[label] = rate
        log(f"  {label}: {rate:,.0f} img/s")

    # 1. cache writing: the teacher in eval mode over every epoch's augmented views (replay policy).
    # Steady state, after two epochs (compilation, capture). Each next() hands over one epoch and
    # launches the next pass, so after a sync `cache_epochs` calls span `cache_epochs` passes.
    blocks = cache._logit_blocks(tmodel, ddata, "replay", 1, cache_epochs + 3, spec, infer_batch_size, graph, compile)
    for _ in range(2):
        next(blocks)
    seconds = _timed(lambda: next(blocks), cache_epochs, 0, device)
    record("cache_write", cache_epochs * n / seconds)
    # End to end: one replay cache file of `cache_epochs` epochs, HDF5 write and start-up included.
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache.write(os.path.join(tmp, "bench.h5"), tmodel, ddata, "replay", {}, 1, cache_epochs, spec,
                    infer_batch_size, log=lambda *a: None, graph=graph, compile=compile)
        record("cache_file", cache_epochs * n / (time.perf_counter() - t0))

    # 2. student training: the step of tfkd train / distill, one row per kind of target
    def train_rate(label, objective, teacher=None):
        _, step = _student(cfg, data, device, objective, ddata, teacher, graph, compile)
        nxt = _batches(n, batch_size, device)
        record(label, steps * batch_size / _timed(lambda: step(nxt(), 0.1), steps, warmup, device))

    table = torch.randn(n, k, device=device).half()  # a cached table: the lookup cost is what matters
    train_rate("train_ce", Objective("ce", k).to(device))
    train_rate("train_lsr", Objective("lsr", k, label_smoothing=0.1).to(device))
    train_rate("train_reg", Objective("reg", k, alpha=0.1, temperature=20.0, multiplier=100.0).to(device))
    kd = Objective("kd", k, alpha=0.9, temperature=4.0).to(device)
    train_rate("train_kd_cache", kd, cache.CacheTeacher(table.cpu().numpy(), device))
    train_rate("train_kd_online", kd, OnlineTeacher(tmodel, round_to=None))

    # 3. the reference code's way: fp32, eager, batch 128, teacher online with autograd on
    model = model_for(cfg, data, device).to(memory_format=torch.contiguous_format)
    opt = make_optimizer(model, cfg, device)
    nxt, seeds = _batches(n, 128, device), augment.seeds(1, 0)

    def reference_step():
        index = nxt()
        x, y = ddata.view(index, seeds, spec).contiguous(), ddata.y_train[index]
        loss = kd(model(x), y, tmodel(x).detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the reference synchronised every step (tqdm, running averages)
    record("reference_kd_online_fp32", steps * 128 / _timed(reference_step, steps, warmup, device))

    base = results["reference_kd_online_fp32"]
    ratios = {"kd_cache_vs_ce": results["train_kd_cache"] / results["train_ce"],
              "kd_cache_vs_reference": results["train_kd_cache"] / base,
              "kd_cache_vs_kd_online": results["train_kd_cache"] / results["train_kd_online"],
              "ce_vs_reference": results["train_ce"] / base}
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "package_version": __version__, "command": " ".join(["tfkd"] + sys.argv[1:]),
            "dataset": data.name, "student": student, "teacher": teacher, "width": width,
            "batch_size": batch_size, "infer_batch_size": infer_batch_size, "steps": steps,
            "cache_epochs": cache_epochs, "graph": graph, "compile": compile,
            "images_per_second": results, "ratios": ratios}


def check(data, device, model_name="resnet18", width=1.0, batch_size=128, steps=8, lr=0.01, graph=None,
          compile=None, fp32_reference=None, log=print):
    """Eager vs each fast form (graph; graph + compile; compile alone on CPU): the same `steps`
    KD-free CE steps from the same weights on the same batches. Returns a JSON-able report.

    A form keeps the maths when its losses and weights are as close to eager as LOSS_RTOL /
    WEIGHT_RTOL, or as bf16 itself moves them: on a GPU the same eager steps also run in fp32, and
    that distance widens the tolerance ("to bf16 tolerance"). `fp32_reference`: None = on a GPU."""
    graph, compile = capture.fast_path(device, 1, graph, compile)
    if fp32_reference is None:
        fp32_reference = device.type == "cuda"  # on the CPU the eager step is fp32 already
    forms = [("eager", False, False)] + [("eager_fp32", False, False)] * fp32_reference
    if graph:
        forms.append(("graph", True, False))
    if compile:
        forms.append(("graph+compile" if graph else "compile", graph, True))
    ddata = DeviceData(data, device)
    cfg = RunConfig(name="check", role="train", model=model_name, width=width, batch_size=batch_size)
    objective = Objective("ce", data.num_classes).to(device)
    order = augment.epoch_order(1, 0, len(data.y_train), device)

    runs, failed = {}, {}
    for name, g, c in forms:
        try:
            model, step = _student(cfg, data, device, objective, ddata, None, g, c, mixed=name != "eager_fp32")
            sums = []
            for i in range(steps):
                step(order[i * batch_size:(i + 1) * batch_size], lr)
                sums.append(step.loss_sum.item())
        except Exception as e:  # a fast form that cannot run here is a finding, not the end of the bench
            if name.startswith("eager"):
                raise
            failed[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            log(f"  {name}: FAILED ({failed[name]})")
            continue
        losses = [(b - a) / batch_size for a, b in zip([0.0] + sums, sums)]
        runs[name] = (losses, torch.cat([p.detach().float().flatten() for p in model.parameters()]))
    eager_losses, eager_weights = runs.pop("eager")

    def distance(losses, weights):
        return (max(abs(a - b) / abs(b) for a, b in zip(losses, eager_losses)),
                ((weights - eager_weights).norm() / eager_weights.norm()).item())
    bf16 = distance(*runs.pop("eager_fp32")) if "eager_fp32" in runs else None
    loss_tol, weight_tol = (max(LOSS_RTOL, bf16[0]), max(WEIGHT_RTOL, bf16[1])) if bf16 else (LOSS_RTOL, WEIGHT_RTOL)
    report = {"device": device_name(device), "model": model_name, "width": width, "batch_size": batch_size,
              "steps": steps, "lr": lr, "loss_rtol": loss_tol, "weight_rtol": weight_tol,
              "bf16_vs_fp32": {"max_loss_rel_err": bf16[0], "weights_rel_l2_err": bf16[1]} if bf16 else None,
              "eager_losses": eager_losses,
              "forms": {name: {"ok": False, "error": error} for name, error in failed.items()}}
    if bf16:
        log(f"  eager bf16 vs fp32 over {steps} steps: loss rel err {bf16[0]:.2e}, weights rel L2 err {bf16[1]:.2e}")
    for name, (losses, weights) in runs.items():
        loss_err, weight_err = distance(losses, weights)
        ok = loss_err <= loss_tol and weight_err <= weight_tol
        report["forms"][name] = {"losses": losses, "max_loss_rel_err": loss_err,
                                 "weights_rel_l2_err": weight_err, "ok": ok}
        log(f"  {name} vs eager over {steps} steps: loss rel err {loss_err:.2e}, weights rel L2 err "
            f"{weight_err:.2e} -> {'OK' if ok else 'MISMATCH'}")
    return report


def usable(report, graph, compile):
    """(graph, compile) for the timed rows after `check`: a form that failed to run is turned off,
    so the bench still measures what works (and then reports the failure)."""
    forms = report["forms"]
    if "error" in forms.get("graph", {}):
        graph = False
    if any("error" in forms.get(name, {}) for name in ("graph+compile", "compile")):
        compile = False
    return graph, compile


def table(result):
    base = result["images_per_second"]["reference_kd_online_fp32"]
    lines = ["| stage | img/s | × reference |", "|---|---:|---:|"]
    for name, rate in result["images_per_second"].items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / base:.2f} |")
    lines.append("")
    lines += [f"{k}: {v:.3f}" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def dump(result, path):
    from .files import write_text
    write_text(path, json.dumps(result, indent=2) + "\n")
