"""`tfkd bench`: throughput of every stage in ONE run, on the same data, as ratios.

Rows (img/s): teacher inference as cache writing does it; student training with CE; with KD from
a cached [N, K] logit table; with the teacher run online; and a reference-style loop (fp32, eager,
batch 128, the teacher run online with autograd on, as the reference code did) as the baseline.
Every training row runs the same step as `tfkd train` (train.train_step) on augmented views made on
the device; only the reference row turns off what the product adds (bf16, channels_last).
"""
import datetime
import json
import platform
import sys
import time

import torch

from . import __version__, augment
from .cache import CacheTeacher
from .config import RunConfig
from .losses import Objective
from .train import DeviceData, Mixed, OnlineTeacher, device_name, forward, make_optimizer, model_for, train_step


def _timed(fn, steps, warmup, device):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run(data, device, student="resnet18", teacher="resnet18", width=1.0, batch_size=128,
        infer_batch_size=1024, steps=50, warmup=5, log=print):
    ddata = DeviceData(data, device)
    n, k = len(data.y_train), data.num_classes
    spec = augment.AugmentSpec()
    cfg = RunConfig(name="bench", role="distill", model=student, width=width, batch_size=batch_size)
    tcfg = RunConfig(name="bench-teacher", role="train", model=teacher, width=width)
    tmodel = model_for(tcfg, data, device).eval()
    table = torch.randn(n, k, device=device).half()  # a cached clean table: read cost is what matters
    results = {}

    def batches(bs):
        order = augment.epoch_order(1, 0, n, device)
        state = {"i": 0}

        def next_index():
            i = state["i"]
            state["i"] = (i + bs) % max(n - bs, 1)
            return order[i:i + bs]
        return next_index

    # 1. cache writing: eval-mode teacher over augmented views (the replay policy's work)
    nxt = batches(infer_batch_size)

    @torch.no_grad()
    def infer():
        forward(tmodel, ddata.view(nxt(), 1, 0, spec)).half()
    seconds = _timed(infer, steps, warmup, device)
    results["cache_write"] = steps * infer_batch_size / seconds
    log(f"  cache writing ({teacher}, eval, batch {infer_batch_size}): {results['cache_write']:,.0f} img/s")

    def train_rate(label, objective, teacher_of, reference=False, bs=batch_size):
        model = model_for(cfg, data, device)
        if reference:
            model = model.to(memory_format=torch.contiguous_format)
        opt = make_optimizer(model, cfg, device)
        net = Mixed(model)  # the precision policy of tfkd train
        nxt = batches(bs)

        def step():
            index = nxt()
            x, y = ddata.view(index, 1, 0, spec), ddata.y_train[index]
            if reference:
                x = x.contiguous()
                t = tmodel(x).detach() if teacher_of else None  # fp32, autograd on, as the reference
                out = model(x)
                loss = objective(out, y, t)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()  # the reference synchronised every step (tqdm, running averages)
            else:
                train_step(net, opt, objective, x, y, teacher_of(index, x) if teacher_of else None)
        seconds = _timed(step, steps, warmup, device)
        results[label] = steps * bs / seconds
        log(f"  {label}: {results[label]:,.0f} img/s")

    ce = Objective("ce", k).to(device)
    kd = Objective("kd", k, alpha=0.9, temperature=4.0).to(device)
    cached = CacheTeacher(table.cpu().numpy(), device)
    online = OnlineTeacher(tmodel, round_to=None)
    train_rate("train_ce", ce, None)
    train_rate("train_kd_cache", kd, lambda index, x: cached.logits(0, index))
    train_rate("train_kd_online", kd, lambda index, x: online.logits(0, index, x))
    train_rate("reference_kd_online_fp32", kd, True, reference=True, bs=128)
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
            "images_per_second": results, "ratios": ratios}


def table(result):
    rows = [("| stage | img/s | × reference |", "|---|---:|---:|")]
    base = result["images_per_second"]["reference_kd_online_fp32"]
    lines = list(rows[0])
    for name, rate in result["images_per_second"].items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / base:.2f} |")
    lines.append("")
    lines += [f"{k}: {v:.3f}" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def dump(result, path):
    from .files import write_text
    write_text(path, json.dumps(result, indent=2) + "\n")
