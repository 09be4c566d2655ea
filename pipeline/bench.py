"""`tfkd bench`: throughput of every stage in ONE run, on the same data, as ratios.

Rows (img/s): teacher inference as cache writing does it (steady state, and a whole replay cache
file end to end, HDF5 included); student training with CE, LSR, Tf-KD reg, KD from a cached
[N, K] logit table and KD with the teacher run online; and a reference-style loop (fp32, eager,
batch 128, the teacher run online with autograd on, as the reference code did) as the baseline.
Every product row runs the code of the real stages (step.TrainStep, cache._logit_blocks and
cache.write) with the same fast path; only the reference row turns off what the product adds.

`check` trains a few steps eagerly and with each fast form from the same weights on the same
batches and compares the losses and the weights: the fast path must keep the maths.

`acceptance` (`tfkd acceptance`) runs both, then the paper's base_resnet18 run under a time cap,
and sets each figure beside its target (TARGETS) with PASS / MISS.
"""
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from . import __version__, augment, cache, capture
from .config import RunConfig
from .errors import TfkdError, one_line
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
    def objective(**loss):
        return Objective(dataclasses.replace(cfg, **loss), k).to(device)
    train_rate("train_ce", objective(method="ce"))
    train_rate("train_lsr", objective(method="lsr", label_smoothing=0.1))
    train_rate("train_reg", objective(method="reg", alpha=0.1, temperature=20.0, multiplier=100.0))
    kd = objective(method="kd", alpha=0.9, temperature=4.0)
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
    objective = Objective(cfg, data.num_classes).to(device)
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
            failed[name] = one_line(e, 300)
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


# ---- `tfkd acceptance`: the check, every bench row and the paper's ResNet18 run, against the targets ----

# What a GPU run is judged against: (key, what, threshold, unit); at most `threshold` for seconds,
# at least `threshold` for everything else.
TARGETS = [("train_ce", "ResNet18 training, CE, batch 128", 40_000, "img/s"),
           ("train_lsr", "ResNet18 training, LSR, batch 128", 40_000, "img/s"),
           ("train_reg", "ResNet18 training, Tf-KD reg, batch 128", 40_000, "img/s"),
           ("train_kd_cache", "ResNet18 training, KD from the cache, batch 128", 40_000, "img/s"),
           ("ce_vs_reference", "CE vs the reference-style loop", 3.0, "x"),
           ("lsr_vs_reference", "LSR vs the reference-style loop", 3.0, "x"),
           ("reg_vs_reference", "reg vs the reference-style loop", 3.0, "x"),
           ("kd_cache_vs_reference", "KD from the cache vs the reference-style loop", 3.0, "x"),
           ("kd_cache_vs_ce", "KD from the cache vs CE", 0.97, "x"),
           ("cache_write", "cache writing, ResNet18 teacher", 250_000, "img/s"),
           ("train_seconds", "the training run, all epochs", 240, "s"),
           ("best_top1", "the training run, best top-1", 75.6, "%")]
TRAIN_TARGETS = ("train_seconds", "best_top1")


def acceptance_data(params, source):
    """The profile's prepared dataset data/prepared/<dataset>.npz, made from `source` when it is not
    there: a raw npz (x_train, y_train, x_test, y_test, imported by data.prepare as `tfkd prepare npz`
    does) or an already prepared dataset. A prepared file with other content is never replaced."""
    from . import data, stages
    target = stages.prepared_path(params.dataset)
    if source is None or (os.path.exists(target) and os.path.samefile(source, target)):
        return data.load(target)
    try:
        given = data.load(source)
    except TfkdError:
        given = None  # not a prepared dataset: a raw npz
    if given is not None and given.name != params.dataset:
        raise TfkdError(f"{source} is the prepared dataset {given.name!r}, the profile's is {params.dataset!r}: "
                        f"pass the raw npz instead, or prepare it with --name {params.dataset}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
        made = os.path.join(tmp, os.path.basename(target))
        if given is None:
            given = data.prepare("npz", made, source=source, name=params.dataset)
        else:
            shutil.copyfile(source, made)
        if os.path.exists(target):
            if data.load(target).fingerprint != given.fingerprint:
                raise TfkdError(f"{target} exists and holds other data than {source}: move it away, "
                                f"or pass --data {target} to use it")
        else:
            os.replace(made, target)
    return data.load(target)


def acceptance_train(params, name, device, time_cap, graph, compile, log=print):
    """Train experiment `name` (first seed), stopping after the epoch in which `time_cap` seconds
    pass. Cut short, it keeps its last checkpoint (the same command resumes it), writes no
    metrics.json and its summary runs/<name>.json names no result: the report shows it as partial."""
    from . import stages
    from .train import fit
    seed = params.seeds[0]
    cfg, folder = params.config(name, seed), stages.run_dir(name, seed)
    t0 = time.perf_counter()
    metrics = fit(cfg, DeviceData(stages.load_data(cfg.dataset), device), folder, device, log=log, graph=graph,
                  compile=compile, time_cap=time_cap)
    cut = metrics is None
    stages.write_summary(params, name, [] if cut else [seed])
    wall = time.perf_counter() - t0
    out = {"experiment": name, "seed": seed, "epochs": params.config(name, seed).epochs, "time_cap_seconds": time_cap,
           "wall_seconds": wall, "partial": cut, "run_dir": folder,
           "summary": os.path.join("runs", f"{name}.json")}
    if cut:
        rows = []
        if os.path.exists(os.path.join(folder, "history.tsv")):
            with open(os.path.join(folder, "history.tsv")) as f:
                rows = [line.split("\t") for line in f.read().splitlines()[1:]]
        out.update(epochs_done=len(rows), best_top1_so_far=max((float(r[-1]) for r in rows), default=None))
        return out
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(folder, "timing.json")) as f:
        timing = json.load(f)
    out.update(epochs_done=metrics["epochs"], best_top1=metrics["best_top1"], best_epoch=metrics["best_epoch"],
               final_top1=metrics["final_top1"], train_seconds=timing["total_seconds"],
               images_per_second=timing["images_per_second"])
    return out


def not_at_target_setting(params, name, ds, device, bench_result):
    """Why these figures are not at the targets' setting (one GPU, full CIFAR-100, the paper's
    ResNet18 at batch 128, 200 epochs); an empty list when they are."""
    cfg = params.config(name, params.seeds[0])
    why = []
    if device.type != "cuda":
        why.append(f"device {device_name(device)} (the targets are for a GPU)")
    if (len(ds.y_train), ds.num_classes) != (50_000, 100):
        why.append(f"dataset {ds.name}: {len(ds.y_train):,} train images, {ds.num_classes} classes "
                   f"(full CIFAR-100: 50,000, 100)")
    if (cfg.model, cfg.width, cfg.batch_size, cfg.epochs) != ("resnet18", 1.0, 128, 200):
        why.append(f"{name}: {cfg.model} width {cfg.width:g}, batch {cfg.batch_size}, {cfg.epochs} epochs "
                   f"(the paper: resnet18 width 1, batch 128, 200 epochs)")
    if bench_result["steps"] < 100:
        why.append(f"{bench_result['steps']} timed steps per bench row")
    return why


def verdicts(bench_result, trained):
    """Every target with the measured figure and PASS / MISS (NO RESULT for a run cut short)."""
    rates, ratios = bench_result["images_per_second"], dict(bench_result["ratios"])
    base = rates["reference_kd_online_fp32"]
    ratios.update(lsr_vs_reference=rates["train_lsr"] / base, reg_vs_reference=rates["train_reg"] / base)
    measured = {**rates, **ratios, "train_seconds": trained.get("train_seconds"), "best_top1": trained.get("best_top1")}
    rows = []
    for key, what, threshold, unit in TARGETS:
        value = measured[key]
        if value is None:
            verdict = f"NO RESULT (partial: {trained['epochs_done']}/{trained['epochs']} epochs)"
        else:
            verdict = "PASS" if (value <= threshold if unit == "s" else value >= threshold) else "MISS"
        rows.append({"key": key, "what": what, "target": f"{'≤' if unit == 's' else '≥'} {threshold:,g} {unit}",
                     "threshold": threshold, "unit": unit, "measured": value, "verdict": verdict})
    return rows


def git_commit():
    """(commit, dirty) of the code's own repository; (None, None) outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip())


def summary(result):
    """The acceptance result for a person: what ran where, then one line per target."""
    commit = (result["git_commit"] or "unknown")[:12] + (" (uncommitted changes)" if result["git_dirty"] else "")
    lines = [f"# tfkd acceptance, {result['date']}", "",
             f"device {result['device']}, torch {result['torch']}, commit {commit}",
             f"command: {result['command']}", ""]
    if result["not_at_target_setting"]:
        lines += ["NOT the targets' setting, so these verdicts are for the record only: "
                  + "; ".join(result["not_at_target_setting"]) + ".", ""]
    check = result["check"]
    lines.append("fast step vs eager: " + ("not run (no fast path on this device)" if check is None else
                 ", ".join(f"{n} {'OK' if f['ok'] else 'FAILED' if 'error' in f else 'MISMATCH'}"
                           for n, f in check["forms"].items())))
    lines += ["", "| target | wanted | measured | verdict |", "|---|---|---|---|"]
    for row in result["targets"]:
        value = "—" if row["measured"] is None else f"{row['measured']:,.{2 if row['unit'] in ('x', '%') else 0}f}"
        lines.append(f"| {row['what']} | {row['target']} | {value} | {row['verdict']} |")
    t = result["training"]
    lines.append("")
    if t["partial"]:
        so_far = t["best_top1_so_far"]
        lines.append(f"{t['experiment']}: PARTIAL, cut at the time cap of {t['time_cap_seconds']:g} s after "
                     f"{t['epochs_done']}/{t['epochs']} epochs (best so far "
                     f"{'—' if so_far is None else f'{so_far:.2f} %'}: not a result); rerun to resume")
    else:
        lines.append(f"{t['experiment']}: {t['epochs_done']} epochs in {t['train_seconds']:.0f} s (this call "
                     f"{t['wall_seconds']:.0f} s), best top-1 {t['best_top1']:.2f} % (epoch {t['best_epoch']}), "
                     f"final {t['final_top1']:.2f} %, {t['images_per_second']:,.0f} img/s")
    lines += [f"metrics: {t['run_dir']}/ and {t['summary']} (tfkd report)", "", "bench rows:", "", table(result["bench"])]
    return "\n".join(lines) + "\n"


def acceptance(params, source, device, time_cap, experiment="base_resnet18", steps=None, cache_epochs=None,
               graph=None, compile=None, out="runs/acceptance.json", log=print):
    """The whole acceptance run, phase by phase; writes `out` (JSON) and the summary beside it (.md).
    Returns the result; its `problems` say what should fail the command."""
    from .files import write_text
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    gpu = device.type == "cuda"
    if params.role_of(experiment) != "train":
        raise TfkdError(f"{experiment} is a distill experiment; the acceptance run trains a train entry")
    if not params.selected(experiment):
        raise TfkdError(f"{experiment} is not in the 'only' list of profile {params.profile_name!r}; "
                        f"add it there or pick another --profile")
    cfg = params.config(experiment, params.seeds[0])
    ds = acceptance_data(params, source)
    log(f"data: {ds.name}, {len(ds.y_train):,} train / {len(ds.y_test):,} test images")
    graph, compile = capture.fast_path(device, 1, graph, compile)
    checked = None
    if graph or compile:
        log("check: the fast step against the eager step")
        checked = check(ds, device, cfg.model, cfg.width, cfg.batch_size, graph=graph, compile=compile, log=log)
        graph, compile = usable(checked, graph, compile)
    log(f"bench: {cfg.model} student and teacher, width {cfg.width:g}, batch {cfg.batch_size}")
    bench_result = run(ds, device, cfg.model, cfg.model, cfg.width, cfg.batch_size,
                       infer_batch_size=1024 if gpu else 256, steps=steps or (300 if gpu else 5),
                       warmup=5 if gpu else 1, cache_epochs=cache_epochs or (10 if gpu else 2), graph=graph,
                       compile=compile, log=log)
    log(f"train: {experiment}, profile {params.profile_name}, {cfg.epochs} epochs, time cap {time_cap:g} s")
    trained = acceptance_train(params, experiment, device, time_cap, graph, compile, log=log)
    commit, dirty = git_commit()
    result = {"date": started, "device": device_name(device), "torch": torch.__version__,
              "python": platform.python_version(), "package_version": __version__, "git_commit": commit,
              "git_dirty": dirty, "command": shlex.join(["tfkd"] + sys.argv[1:]), "profile": params.profile_name,
              "dataset": {"name": ds.name, "fingerprint": ds.fingerprint, "train_images": len(ds.y_train)},
              "not_at_target_setting": not_at_target_setting(params, experiment, ds, device, bench_result),
              "targets": verdicts(bench_result, trained), "check": checked, "bench": bench_result,
              "training": trained, "problems": []}
    if checked and not all(f["ok"] for f in checked["forms"].values()):
        bad = ", ".join(n for n, f in checked["forms"].items() if not f["ok"])
        result["problems"].append(f"the fast step is not the eager step ({bad}; see 'check' in {out}): "
                                  f"use --no-graph / --no-compile until it is fixed")
    if trained["partial"]:
        result["problems"].append(f"{experiment} was cut at the time cap after {trained['epochs_done']}/"
                                  f"{trained['epochs']} epochs: a partial run, not a result; rerun the same "
                                  f"command (or raise --time-cap) to resume it")
    write_text(out, json.dumps(result, indent=2) + "\n")
    write_text(os.path.splitext(out)[0] + ".md", summary(result))
    return result


TEMPERATURES = (1, 4, 10, 20, 40)  # the paper's range
TOPK = (5, 10, 20)


@torch.no_grad()
def _view_logits(models, ddata, n, key, spec, batch=500):
    """Each model's float32 logits on the same `n` augmented training views (epoch 0 of run `key`)."""
    index = augment.epoch_order(key, 0, len(ddata.y_train), ddata.device)[:n]
    seeds = torch.tensor(augment.seeds(key, 0))
    outs = [[] for _ in models]
    for part in index.split(batch):
        x = ddata.view(part, seeds, spec)
        for out, model in zip(outs, models):
            out.append(model(x).float())
    return ddata.y_train[index], [torch.cat(o) for o in outs]


def compact_errors(data, teacher_path, student_path, n=10000, ks=TOPK, temperatures=TEMPERATURES, batch=128,
                   bits=(0,)):
    """How far the KD loss and its gradient (w.r.t. the student's logits) from compact rows
    (compact.py) are from those from the full logits, on real views of a real teacher and student:
    per batch of `batch`, |loss error| / loss and ||grad error|| / ||grad||; the median and the
    worst batch, for each k, tail coding (`bits`: 0, the tail model) and T. The reference form's
    factor T^2 * multiplier / K cancels."""
    from . import checkpoint, compact
    models, configs = [], []
    for path in (teacher_path, student_path):
        ckpt = checkpoint.read(path)
        models.append(checkpoint.load_model(path, ckpt["model_name"], ckpt["width"], data.num_classes,
                                            data.channels)[0])
        configs.append(ckpt)
    ddata = DeviceData(data, torch.device("cpu"))
    spec = RunConfig(name="", role="train", model="", augment=configs[0]["config"]["augment"]).aug_spec
    labels, (zt, zs) = _view_logits(models, ddata, n, 1, spec)
    rows = []
    for t in temperatures:
        cfg = RunConfig(name="bench", role="distill", model="", method="kd", alpha=1.0, temperature=t)
        objective = Objective(cfg, data.num_classes)
        for k, b in [(k, b) for k in ks for b in bits]:
            rebuilt = compact.rebuild_logits(compact.compress(zt, k, bits=b), t)
            loss_err, grad_err = [], []
            for i in range(0, len(zt), batch):
                got = []
                for teacher in (zt[i:i + batch], rebuilt[i:i + batch]):
                    s = zs[i:i + batch].clone().requires_grad_()
                    loss = objective(s, labels[i:i + batch], teacher)
                    got.append((loss.item(), torch.autograd.grad(loss, s)[0]))
                (loss, grad), (approx, approx_grad) = got
                loss_err.append(abs(approx - loss) / loss)
                grad_err.append(((approx_grad - grad).norm() / grad.norm()).item())
            rows.append({"T": t, "k": k, "bits": b, "bytes_per_row": compact.row_bytes(k, data.num_classes, b),
                         "full_bytes_per_row": 2 * data.num_classes,
                         "loss_rel_err_median": float(np.median(loss_err)), "loss_rel_err_max": max(loss_err),
                         "grad_rel_err_median": float(np.median(grad_err)), "grad_rel_err_max": max(grad_err)})
    p = torch.softmax(zt, 1)
    return {"dataset": data.name, "num_classes": data.num_classes, "views": len(zt),
            "teacher": teacher_path, "teacher_test_acc": configs[0].get("test_acc"),
            "student": student_path, "student_test_acc": configs[1].get("test_acc"),
            "teacher_top1_prob_mean": p.amax(1).mean().item(),
            "teacher_mass_beyond_top10_mean": (1 - p.topk(min(10, data.num_classes)).values.sum(1)).mean().item(),
            "rows": rows}
