"""The project layout, and the per-experiment summary: what a stage writes where. Imports no torch,
so a stage with nothing to do (an experiment its profile skips) returns in a fraction of a second.

    data/prepared/<dataset>.npz     tfkd prepare
    runs/<exp>/s<seed>/             tfkd train / distill: checkpoints, metrics.json, timing.json, history.tsv
    runs/<exp>.json, runs/<exp>.tsv the experiment's summary over seeds (dvc metrics / dvc plots)
    cache/<exp>/s<seed>.h5          tfkd cache: the teacher logits a distill run reads
"""
import json
import os
import statistics

from .files import write_text


def prepared_path(dataset):
    return os.path.join("data", "prepared", f"{dataset}.npz")


def run_dir(name, seed):
    return os.path.join("runs", name, f"s{seed}")


def cache_path(name, seed):
    return os.path.join("cache", name, f"s{seed}.h5")


def skip(params, name, log, folder="runs"):
    """Experiments outside the active profile's `only` list leave a marker (DVC needs its outputs)
    and an empty summary, which the report shows as missing: never a result."""
    if params.selected(name):
        return False
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's; rank 0 writes (no torch needed to know)
        return True
    write_text(os.path.join(folder, name, "SKIPPED"), f"not in profile {params.profile_name}\n")
    if folder == "runs":
        write_summary(params, name, [])
    log(f"[{name}] skipped: not in the 'only' list of profile {params.profile_name!r}")
    return True


def write_summary(params, name, seeds):
    """runs/<name>.json (metrics over seeds) and runs/<name>.tsv (per-epoch curves, all seeds)."""
    role = params.role_of(name)
    entry = params.raw[role][name] or {}
    summary = {"experiment": name, "role": role, "profile": params.profile_name, "dataset": params.dataset,
               "model": entry.get("model"), "method": entry.get("method", "kd" if role == "distill" else "ce"),
               "teacher": entry.get("teacher"), "seeds": {}}
    rows = []
    for seed in seeds:
        folder = run_dir(name, seed)
        with open(os.path.join(folder, "metrics.json")) as f:
            m = json.load(f)
        summary["seeds"][str(seed)] = {"best_top1": m["best_top1"], "final_top1": m["final_top1"]}
        with open(os.path.join(folder, "history.tsv")) as f:
            rows += [[seed] + line.rstrip("\n").split("\t") for line in list(f)[1:]]
    for key in ("best_top1", "final_top1"):
        values = [s[key] for s in summary["seeds"].values()]
        summary[key] = statistics.fmean(values) if values else None
        summary[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
    write_text(os.path.join("runs", f"{name}.json"), json.dumps(summary, indent=2) + "\n")
    header = "\t".join(("seed", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"))
    write_text(os.path.join("runs", f"{name}.tsv"), "\n".join([header] + ["\t".join(map(str, r)) for r in rows]) + "\n")
    return summary
