"""`tfkd report`: every experiment of params.yaml beside the paper's number, as runs/results.md,
runs/results.json (dvc metrics) and runs/results.png.

Reads params.yaml through config.Params (each entry's own settings, its overrides included) and
runs/<exp>.json / .tsv through layout (the schema write_summary writes); imports no torch.
"""
import datetime
import itertools
import json
import math
import os
import statistics

from . import layout, paper
from .config import Params
from .files import atomic_path, write_text

# The setting the reported numbers were measured in, by the entries' dataset group (params.own_dataset:
# None for the CIFAR matrix, "imagenet" for the ImageNet entries).
PAPER_SETTINGS = {None: {"dataset": "cifar100", "epochs": 200, "width": 1.0, "num_classes": 100,
                         "what": "full CIFAR-100"},
                  "imagenet": {"dataset": "imagenet", "epochs": 90, "width": 1.0, "num_classes": 1000,
                               "what": "ImageNet"}}
COMPARED = ("dataset", "epochs", "width", "loss_form", "cache_policy")  # decide comparability
DASH = "—"


def setting(params):
    """The active profile's name and its settings that decide comparability (defaults < profile)."""
    common = params.common()
    return {"profile": params.profile_name, "paper_setting": PAPER_SETTINGS.get(params.own_dataset),
            **{k: getattr(common, k) for k in COMPARED},
            "seeds": params.seeds, "only": params.profile.get("only"), "profile_note": params.profile.get("note")}


def not_comparable(s, num_classes=None):
    """Why the active profile's numbers cannot be set beside the paper's; None if they can.
    `num_classes`: the dataset's class count where a measured run says it."""
    why, paper = [], s["paper_setting"]
    if paper is None:
        return f"the paper has no setting for dataset `{s['dataset']}`'s own entries"
    if s["dataset"] != paper["dataset"]:
        why.append(f"dataset `{s['dataset']}`" + (f" has K={num_classes} classes" if num_classes else "")
                   + f" (the paper: {paper['what']}, K={paper['num_classes']})")
        if s["loss_form"] == "reference" and num_classes != paper["num_classes"]:
            why.append("the reference's KL loss is averaged over batch x K classes, so a different K "
                       "rescales the KD / reg terms: even the losses differ")
    if s["epochs"] != paper["epochs"]:
        why.append(f"{s['epochs']} epochs (the paper: {paper['epochs']})")
    if s["width"] != paper["width"]:
        why.append(f"width x{s['width']:g} (the paper: full-size models)")
    if s["cache_policy"] == "clean":
        why.append("clean caches: the teacher's logits of the un-augmented images, not of each view the "
                   "student sees (the reference ran its teacher online)")
    return "; ".join(why) or None


def own_settings(cfg, s):
    """An entry's settings that differ from its profile's (its own epochs, loss_form ...), in words."""
    return ", ".join(f"its own {k} {getattr(cfg, k)} (profile: {s[k]})" for k in COMPARED if getattr(cfg, k) != s[k])


def mean_std(values):
    """(mean, sample std) over seeds; std is None for a single seed, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def read_curve(runs_dir, name):
    """Seed-mean test accuracy per epoch from runs/<name>.tsv: ([epochs], [acc]); empty if none."""
    by_epoch = {}
    for row in layout.read_history(os.path.join(runs_dir, f"{name}.tsv")):
        by_epoch.setdefault(row["epoch"], []).append(row["test_acc"])
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]


def read_partial(runs_dir, name, seeds):
    """(epochs done, best test top-1 so far) of an unfinished run: the furthest of its seeds'
    history.tsv (written every epoch); None when none has an epoch yet."""
    best = None
    for seed in seeds:
        rows = layout.read_history(os.path.join(layout.run_dir(name, seed, runs_dir), "history.tsv"))
        if rows and (best is None or len(rows) > best[0]):
            best = (len(rows), max(r["test_acc"] for r in rows))
    return best


def _sub(a, b):
    return None if a is None or b is None else round(a - b, 2)


def build_report(params_path="params.yaml", runs_dir="runs"):
    """Every experiment of params.yaml for the profile's dataset as a row: ours (best, final), the
    paper's, and the gains."""
    params = Params.load(params_path)
    s = setting(params)
    # The entries of the profile's dataset (params.yaml's ImageNet entries are not CIFAR's, and back)
    entries = [(name, params.config(name, params.seeds[0])) for name in params.experiments()
               if params.entry(name).get("dataset") == params.own_dataset]
    # A model's baseline: its plain cross-entropy train entry (base_<model> in the real matrix).
    baseline = {}
    for name, cfg in entries:
        if cfg.role == "train" and cfg.method == "ce":
            baseline.setdefault(cfg.model, name)

    rows, num_classes = {}, None
    for name, cfg in entries:
        fix = (f"rerun 'tfkd {cfg.role} {name}' to rewrite it, or delete it to report the experiment as not run")
        run = layout.read_summary(os.path.join(runs_dir, f"{name}.json"), fix) or {}
        seeds = {k: v for k, v in run["seeds"].items() if v.get("best_top1") is not None} if run else {}
        num_classes = num_classes or (run.get("num_classes") if seeds else None)
        best, best_std = mean_std([v["best_top1"] for v in seeds.values()])
        final, final_std = mean_std([v["final_top1"] for v in seeds.values()])
        status = "measured" if seeds else "not run" if params.selected(name) else f"skipped by profile {s['profile']}"
        ptop1, pstd = paper.paper_top1(name)
        notes = [n for n in (own_settings(cfg, s), cfg.note, paper.NOTES.get(name)) if n]
        partial = None if seeds else read_partial(runs_dir, name, s["seeds"])
        if partial:  # cut short (e.g. by a time cap): shown as unfinished, never as a result
            status = f"partial: {partial[0]}/{cfg.epochs} epochs"
            notes.insert(0, f"best so far {partial[1]:.2f} after {partial[0]} epochs: not a result")
        if seeds and (run.get("profile"), run.get("dataset")) != (s["profile"], s["dataset"]):
            notes.insert(0, f"run under profile {run.get('profile')} on {run.get('dataset')}")
        rows[name] = {
            "table": paper.table_of(name), "role": cfg.role, "model": cfg.model, "method": cfg.method,
            "teacher": cfg.teacher or None, "status": status, "n_seeds": len(seeds),
            "epochs": cfg.epochs, "epochs_done": partial[0] if partial else None,
            "best_top1": best, "best_top1_std": best_std, "final_top1": final, "final_top1_std": final_std,
            "paper_top1": ptop1, "paper_top1_std": pstd, "best_minus_paper": _sub(best, ptop1),
            "baseline": None if name == baseline.get(cfg.model) else baseline.get(cfg.model),
            "paper_gain": paper.paper_gain(name, cfg.model), "note": "; ".join(notes),
        }
    for row in rows.values():  # second pass: the baselines' numbers are all known now
        base = rows.get(row["baseline"]) or {}
        row["baseline_best_top1"] = base.get("best_top1")
        row["gain"] = _sub(row["best_top1"], row["baseline_best_top1"])

    measured = [n for n, r in rows.items() if r["status"] == "measured"]
    return {"generated": datetime.datetime.now().isoformat(timespec="seconds"), **s,
            "not_comparable": not_comparable(s, num_classes),
            "measured": len(measured), "missing": len(rows) - len(measured),
            "missing_experiments": [n for n in rows if n not in measured], "experiments": rows}


def fmt(mean, std=None, n=None, sign=False):
    """'76.00', '76.00 ± 0.20 (n=2)' or '+0.13'; a missing value is a dash, never a zero."""
    if mean is None:
        return DASH
    text = f"{mean:+.2f}" if sign else f"{mean:.2f}"
    if std is not None:
        text += f" ± {std:.2f}"
    return text + (f" (n={n})" if n and n > 1 else "")


def grouped(rows):
    """[(table title, [(name, row)])] in the paper's table order, params.yaml order within one."""
    titles = [t for t, _ in paper.TABLES] + [paper.OTHER]
    groups = [(t, [(n, r) for n, r in rows.items() if r["table"] == t]) for t in titles]
    return [(t, members) for t, members in groups if members]


def markdown(s):
    lines = [f"# tfkd results ({s['generated'][:10]})", "",
             f"Profile **{s['profile']}**: dataset `{s['dataset']}`, {s['epochs']} epochs, width x{s['width']:g}, "
             f"seeds {s['seeds']}. Generated {s['generated']}. "
             f"{s['measured']} experiments measured, {s['missing']} not yet.", ""]
    if s["profile_note"]:
        lines += [f"Profile {s['profile']}: {s['profile_note']}.", ""]
    if s["not_comparable"]:
        lines += [f"> **These numbers are NOT comparable with the paper.** {s['not_comparable'][0].upper()}"
                  f"{s['not_comparable'][1:]}. They check that the pipeline runs; the paper column is context only.", ""]
    lines += [f"Top-1 test accuracy (%); the paper's numbers are on {(s['paper_setting'] or {}).get('what', 'other data')}. *best*: best epoch (what the paper reports); "
              "*final*: last epoch; ± is the std over seeds. *Δ paper* = best − paper; *gain* = best − our "
              "baseline of the same model, *paper gain* the same in the paper.", ""]
    head = ("| experiment | teacher | status | best | final | paper | Δ paper | baseline (ours) | gain | paper gain | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    for title, members in grouped(s["experiments"]):
        lines += [f"## {title}", "", head]
        for name, r in members:
            lines.append("| " + " | ".join([
                f"`{name}`", r["teacher"] or DASH, r["status"],
                fmt(r["best_top1"], r["best_top1_std"], r["n_seeds"]), fmt(r["final_top1"], r["final_top1_std"]),
                fmt(r["paper_top1"], r["paper_top1_std"]), fmt(r["best_minus_paper"], sign=True),
                f"{fmt(r['baseline_best_top1'])} ({r['baseline']})" if r["baseline"] else DASH,
                fmt(r["gain"], sign=True), fmt(r["paper_gain"], sign=True), r["note"].replace("|", "/")]) + " |")
        lines.append("")
    lines += ["## Not yet measured", ""]
    todo = [n for n in s["missing_experiments"] if s["experiments"][n]["status"] == "not run"]
    cut = [n for n in s["missing_experiments"] if s["experiments"][n]["epochs_done"]]
    if cut:  # the actionable ones first: the active profile should have run them
        lines.append(f"- in profile {s['profile']}, unfinished (rerun to resume): " + ", ".join(
            f"`{n}` ({s['experiments'][n]['epochs_done']}/{s['experiments'][n]['epochs']} epochs)" for n in cut))
    if todo:
        lines.append(f"- in profile {s['profile']}, not run yet: " + ", ".join(f"`{n}`" for n in todo))
    todo += cut
    for title, members in grouped({n: s["experiments"][n] for n in s["missing_experiments"] if n not in todo}):
        lines.append(f"- {title}: " + ", ".join(f"`{n}`" for n, _ in members))
    if not s["missing_experiments"]:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def plot(rep, runs_dir, path):
    """Left: seed-mean test-accuracy curves, one small panel per model (baseline vs methods).
    Right: each method's gain over its model's baseline, ours as bars, the paper's as markers."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas by default
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    rows = rep["experiments"]
    titles = [t for t, _ in paper.TABLES] + [paper.OTHER]
    color = {t: c for t, c in zip(titles, ["black", "tab:blue", "tab:red", "tab:green", "tab:purple", "tab:gray"])}
    style = {t: ls for t, ls in zip(titles, ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), "-"])}
    curves = {n: read_curve(runs_dir, n) for n, r in rows.items() if r["status"] == "measured"}
    curves = {n: c for n, c in curves.items() if c[0]}
    models = list(dict.fromkeys(rows[n]["model"] for n in curves))
    # Bars: the methods the active profile runs (all of them when it has no `only` list).
    bars = [(n, r) for _, members in grouped(rows) for n, r in members
            if r["baseline"] and (r["status"] == "measured" or rep["only"] is None or n in rep["only"])]

    nrow = max(1, math.ceil(len(models) / 2))
    fig = Figure(figsize=(17, max(3.2 * nrow, 0.3 * len(bars) + 2, 5)), layout="constrained")
    gs = fig.add_gridspec(nrow, 3, width_ratios=[1, 1, 1.25])
    for i, model in enumerate(models):
        ax = fig.add_subplot(gs[i // 2, i % 2])
        # One colour per line (a model has at most 10 methods); the line style tells the paper table.
        others = itertools.cycle(f"C{k}" for k in range(10))  # matplotlib's default colour cycle
        for n in curves:
            if rows[n]["model"] == model:
                base = rows[n]["baseline"] is None
                ax.plot(*curves[n], color="black" if base else next(others), lw=2.2 if base else 1.2,
                        ls=style[rows[n]["table"]], marker="o" if len(curves[n][0]) < 15 else None, ms=3,
                        label=n)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("test top-1 (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    if not models:
        ax = fig.add_subplot(gs[:, :2])
        ax.text(0.5, 0.5, "no measured runs yet", ha="center", va="center")
        ax.set_axis_off()

    ax = fig.add_subplot(gs[:, 2])
    ys = list(range(len(bars)))[::-1]
    for y, (n, r) in zip(ys, bars):
        if r["gain"] is not None:
            ax.barh(y, r["gain"], color=color[r["table"]], alpha=0.8)
            # the value as text too: a gain of 0.00 has no visible bar, yet it was measured
            ax.text(r["gain"], y, f" {r['gain']:+.2f} ", va="center", fontsize=6,
                    ha="left" if r["gain"] >= 0 else "right")
        if r["paper_gain"] is not None:
            ax.plot(r["paper_gain"], y, "D", color="orange", mec="black", ms=5)
    def why(r):
        if r["gain"] is not None:
            return ""
        if r["status"] == "measured":
            return "  (no baseline run)"
        return "  (unfinished)" if r["epochs_done"] else "  (not run)"
    why = {n: why(r) for n, r in bars}
    ax.set_yticks(ys, [n + why[n] for n, _ in bars], fontsize=7)
    for label, (_, r) in zip(ax.get_yticklabels(), bars):
        label.set_color(color[r["table"]])
    handles = [ax.plot([], [], "D", color="orange", mec="black")[0]]
    handles += [Patch(color=color[t], alpha=0.8) for t in titles if any(r["table"] == t for _, r in bars)]
    labels = ["paper's gain (CIFAR-100, 200 epochs)"] + [t for t in titles if any(r["table"] == t for _, r in bars)]
    ax.axvline(0, color="black", lw=0.8)
    ax.margins(x=0.12)  # room for the value labels at the bar ends
    ax.set_xlabel("gain over the model's baseline, best top-1 (points)", fontsize=8)
    ax.set_title("gain over baseline: ours (bars) vs paper (diamonds)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles, labels, fontsize=7, loc="outside lower right", ncol=3)

    title = (f"tfkd: profile {rep['profile']}, {rep['dataset']}, {rep['epochs']} epochs, width x{rep['width']:g}, "
             f"{rep['measured']} measured / {rep['missing']} missing")
    if rep["not_comparable"]:
        title += "\nNOT comparable with the paper (full CIFAR-100, 200 epochs, full-size models): see results.md"
    fig.suptitle(title, fontsize=11, color="darkred" if rep["not_comparable"] else "black")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_report(params_path="params.yaml", runs_dir="runs", out_dir=None):
    """Write results.md, results.json and results.png into out_dir (default: runs_dir)."""
    out_dir = runs_dir if out_dir is None else out_dir
    rep = build_report(params_path, runs_dir)
    paths = {ext: os.path.join(out_dir, f"results.{ext}") for ext in ("md", "json", "png")}
    write_text(paths["md"], markdown(rep))
    write_text(paths["json"], json.dumps(rep, indent=2) + "\n")
    plot(rep, runs_dir, paths["png"])
    rep["paths"] = paths
    return rep
