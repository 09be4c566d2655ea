"""The project layout, and the per-experiment summary: what a stage writes where. Imports no torch,
so a stage with nothing to do (an experiment its profile skips) returns in a fraction of a second.

    data/prepared/<dataset>.npz     tfkd prepare (data/prepared/<name>.index.json: an ImageFolder index)
    runs/<exp>/s<seed>/             tfkd train / distill: checkpoints, metrics.json, timing.json, history.tsv
    runs/<exp>.json, runs/<exp>.tsv the experiment's summary over seeds (dvc metrics / dvc plots)
    cache/<exp>/s<seed>.h5          tfkd cache: the teacher logits a distill run reads
"""
import csv
import json
import os
import statistics

from .errors import TfkdError
from .files import write_text


def prepared_path(dataset):
    return os.path.join("data", "prepared", f"{dataset}.npz")


def index_path(name):
    """An indexed ImageFolder tree (tfkd prepare imagefolder): its images stay where they are."""
    return os.path.join("data", "prepared", f"{name}.index.json")


def run_dir(name, seed, runs="runs"):
    return os.path.join(runs, name, f"s{seed}")


def cache_path(name, seed):
    return os.path.join("cache", name, f"s{seed}.h5")


# runs/<exp>/s<seed>/history.tsv, one row per epoch; runs/<exp>.tsv is the same with a seed column.
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
# runs/<exp>.json: the experiment's summary over seeds, the one schema write_summary writes and
# `tfkd report` reads. Per seed: {"best_top1", "final_top1"}; over seeds: their mean and std.
SUMMARY_KEYS = ("experiment", "role", "profile", "dataset", "num_classes", "model", "method", "teacher",
                "epochs", "loss_form", "seeds", "best_top1", "best_top1_std", "final_top1", "final_top1_std")


def skip(params, name, log, stage="run"):
    """True for an experiment outside the active profile's `only` list. Its `stage` ("run": train
    or distill, or "cache") leaves a marker where its output would be (DVC needs its outputs) and
    a run an empty summary, which the report shows as missing: never a result."""
    if params.selected(name):
        return False
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's; rank 0 writes (no torch needed to know)
        return True
    folder = "cache" if stage == "cache" else "runs"
    write_text(os.path.join(folder, name, "SKIPPED"), f"not in profile {params.profile_name}\n")
    if stage == "run":
        write_summary(params, name, [])
    log(f"[{name}] skipped: not in profile {params.profile_name!r} (its 'only' list, or an entry of another dataset)")
    return True


def write_history(path, rows, columns=HISTORY_COLUMNS):
    """A history TSV: a header of `columns`, then one line per row (floats to 6 significant digits)."""
    lines = ["\t".join(columns)] + ["\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row)
                                    for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def read_history(path):
    """The rows of a history TSV as dicts of numbers (epoch and seed as ints); [] if absent."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [{k: int(v) if k in ("epoch", "seed") else float(v) for k, v in row.items()}
                for row in csv.DictReader(f, delimiter="\t")]


def write_summary(params, name, seeds):
    """runs/<name>.json (metrics over `seeds`, the finished ones) and runs/<name>.tsv (their curves)."""
    cfg = params.config(name, params.seeds[0])
    summary = {"experiment": name, "role": cfg.role, "profile": params.profile_name, "dataset": cfg.dataset,
               "num_classes": None, "model": cfg.model, "method": cfg.method, "teacher": cfg.teacher or None,
               "epochs": cfg.epochs, "loss_form": cfg.loss_form, "seeds": {}}
    rows = []
    for seed in seeds:
        with open(os.path.join(run_dir(name, seed), "metrics.json")) as f:
            m = json.load(f)
        summary["num_classes"] = m["num_classes"]
        summary["seeds"][str(seed)] = {"best_top1": m["best_top1"], "final_top1": m["final_top1"]}
        history = read_history(os.path.join(run_dir(name, seed), "history.tsv"))
        rows += [[seed] + [r[c] for c in HISTORY_COLUMNS] for r in history]
    for key in ("best_top1", "final_top1"):
        values = [s[key] for s in summary["seeds"].values()]
        summary[key] = statistics.fmean(values) if values else None
        summary[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
    assert tuple(summary) == SUMMARY_KEYS  # the schema is this one tuple
    write_text(os.path.join("runs", f"{name}.json"), json.dumps(summary, indent=2) + "\n")
    write_history(os.path.join("runs", f"{name}.tsv"), rows, ("seed",) + HISTORY_COLUMNS)
    return summary


def read_summary(path, fix):
    """runs/<name>.json as write_summary wrote it; None if absent; a one-line TfkdError naming the
    file and `fix` if it is damaged or of another schema."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            summary = json.load(f)
        why = None if isinstance(summary, dict) else f"holds a {type(summary).__name__}, not a summary"
    except json.JSONDecodeError as e:
        why = f"{e.msg} at line {e.lineno}"
    except (ValueError, UnicodeDecodeError) as e:
        why = type(e).__name__
    if why is None and not isinstance(summary.get("seeds"), dict):
        why = "no 'seeds' mapping"
    if why:
        raise TfkdError(f"{path} is truncated or not a run summary ({why}): {fix}")
    return summary
