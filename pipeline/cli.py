"""`tfkd`: one click group, one subcommand per pipeline stage (see `tfkd --help`)."""
import os
import sys
import traceback

import click

from . import __version__, layout
from .config import TAIL_BITS
from .errors import TfkdError

PARAMS = click.option("--params", "params_path", default="params.yaml", show_default=True,
                      type=click.Path(dir_okay=False), help="The experiment matrix to read.")
SEEDS = click.option("--seed", "seeds", type=int, multiple=True,
                     help="Run only this seed (repeatable); default: every seed in params.yaml.")
DEVICE = click.option("--device", default="auto", show_default=True,
                      help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N.")
OVERWRITE = click.option("--overwrite", is_flag=True,
                         help="Replace a run made with other settings (never done silently).")
GRAPH = click.option("--graph/--no-graph", default=None, envvar="TFKD_GRAPH",
                     help="Capture the whole training step (and each evaluation or cache pass) in one "
                          "CUDA graph; env TFKD_GRAPH=0/1.  [default: on for one CUDA device; off on CPU "
                          "and under torchrun]")
COMPILE = click.option("--compile/--no-compile", default=None, envvar="TFKD_COMPILE",
                       help="torch.compile the model (compiled once per batch shape on first use; on CPU "
                            "it needs a C++ compiler); env TFKD_COMPILE=0/1.  [default: as --graph]")
WORKERS = click.option("--workers", type=click.IntRange(min=0), default=None, envvar="TFKD_WORKERS",
                       help="DataLoader workers per rank for a streamed ImageFolder dataset (the views are "
                            "the same for any count); env TFKD_WORKERS.  [default: 0 on CPU; on GPU a share "
                            "of the node's cores, at most 8]")
SYNC_BN = click.option("--sync-bn", is_flag=True,
                       help="Under torchrun on GPUs: BatchNorm statistics over the global batch "
                            "(default: per rank, as torchvision's reference).")


class Group(click.Group):
    """Turns TfkdError into one line on stderr and exit status 2 (tracebacks only with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TfkdError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            rank = os.environ.get("RANK") if "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1" else None
            click.echo(f"tfkd: error: {f'rank {rank}: ' if rank is not None else ''}{e}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except OSError as e:
            from .files import no_space, no_space_error
            if not no_space(e):
                raise self._other(ctx, e)
            click.echo(f"tfkd: error: {no_space_error(e.filename or 'a file', e)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("tfkd: interrupted; rerun the same command to resume from the last checkpoint", err=True)
            sys.exit(130)
        except Exception as e:
            raise self._other(ctx, e)
        finally:
            world = sys.modules.get("pipeline.distributed")  # a stage that never imported torch has none
            if world is not None:
                world.shutdown()

    @staticmethod
    def _other(ctx, e):
        """An unexpected error: its traceback with --debug, else one line and exit status 1."""
        if ctx.obj and ctx.obj.get("debug"):
            return e
        click.echo(f"tfkd: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        return SystemExit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfkd")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.pass_context
def main(ctx, debug):
    """tfkd: the experiments of "Revisiting Knowledge Distillation via Label Smoothing
    Regularization" (Yuan et al., CVPR 2020) as a two-stage logit-cache pipeline.

    \b
    Stage one: `train` every teacher once (its run is also the baseline and, through
    checkpoints after epochs 1 and 50, the defective teachers), then `cache` its logits.
    Stage two: `distill` students from the cached logits; no teacher network is loaded.
    Experiments live in params.yaml; `dvc repro` runs them all, each stage is a subcommand.
    train, cache and distill also run data-parallel under torchrun (see README, Scaling out).
    """
    ctx.ensure_object(dict)["debug"] = debug


def _params(path):
    from .config import Params
    return Params.load(path)


def _device(name):
    """The device of this process: under torchrun, this rank's (after joining the process group)."""
    from . import distributed
    from .device import pick_device
    return distributed.init(name) or pick_device(name)


@main.command()
@click.argument("kind", required=False)
@click.option("--source", type=click.Path(), help="npz file, Tiny-ImageNet folder, ImageFolder tree or download folder.")
@click.option("--name", help="Name of the prepared dataset (default: KIND), e.g. cifar100 for an npz import.")
@click.option("--out", type=click.Path(dir_okay=False), help="Output file (default data/prepared/NAME.npz).")
@click.option("--overwrite", is_flag=True, help="Replace a file at --out that is not a prepared dataset.")
@PARAMS
def prepare(kind, source, name, out, overwrite, params_path):
    """Turn a dataset into uint8 arrays + labels + class names + a fingerprint.

    \b
    KIND: embedded (the committed CIFAR-100 subset), cifar100, cifar10 (torchvision download),
    npz (--source FILE with x_train, y_train, x_test, y_test), tinyimagenet (--source the
    tiny-imagenet-200 folder as distributed), imagefolder (--source a tree of train/ and val/, one
    folder per class, e.g. ImageNet: indexed, not copied, into data/prepared/NAME.index.json; its
    images are streamed from there). Without KIND: the active profile's dataset.
    Offline CIFAR-100:  tfkd prepare npz --source cifar100.npz --name cifar100
    ImageNet:           tfkd prepare imagefolder --source /data/imagenet --name imagenet
    """
    from . import data
    if kind is None:
        p = _params(params_path)
        kind, source = p.dataset, source or p.profile.get("source")
        if kind not in data.KNOWN and not source:
            raise TfkdError(f"profile {p.profile_name}'s dataset {kind} has no source: set profiles.{p.profile_name}"
                            f".source to its ImageFolder tree (train/ and val/ inside) or an .npz, e.g. "
                            f"dvc exp run -S profiles.{p.profile_name}.source=/data/{kind}")
        if kind not in data.KNOWN and os.path.isdir(source):
            kind, name = "imagefolder", kind  # a profile's ImageFolder tree, e.g. dataset: imagenet
        elif kind not in data.KNOWN:  # a named npz import, e.g. dataset: cifar100 with source: x.npz
            kind, name = "npz", kind
        elif kind == "cifar100" and source and str(source).endswith(".npz"):
            kind, name = "npz", "cifar100"
    if kind == "imagefolder":
        from . import imagefolder
        if not source:
            raise TfkdError("tfkd prepare imagefolder needs --source ROOT (with train/ and val/ inside); for a "
                            "profile's dataset, set its `source` in params.yaml")
        out = out or layout.index_path(name or "imagefolder")
        if os.path.exists(out) and not overwrite and imagefolder.indexed(out) != os.path.realpath(source):
            raise TfkdError(f"{out} exists and is not an index of {source}; pass --overwrite to replace it")
        info = imagefolder.index_tree(source, out)
        click.echo(f"indexed {source}: {info['train']} train / {info['val']} val images, {info['classes']} classes, "
                   f"fingerprint {info['fingerprint'][:12]} -> {out}")
        return
    name = name or kind
    out = out or layout.prepared_path(name)
    ds = data.prepare(kind, out, source=source, name=name, overwrite=overwrite)
    click.echo(f"prepared {ds.name}: {len(ds.y_train)} train / {len(ds.y_test)} test images, "
               f"{ds.image_size}x{ds.image_size}x{ds.channels}, {ds.num_classes} classes, "
               f"fingerprint {ds.fingerprint[:12]} -> {out}")


def run_options(command):
    """The arguments and options of `train` and `distill`, which run an experiment the same way."""
    for option in reversed((click.argument("experiment"), SEEDS, PARAMS, DEVICE, OVERWRITE, SYNC_BN, GRAPH, COMPILE,
                            WORKERS)):
        command = option(command)
    return command


WRONG_ROLE = {"train": "{0} is a distill experiment: run 'tfkd cache {0}' then 'tfkd distill {0}'",
              "distill": "{0} is a train experiment: run 'tfkd train {0}'"}


def _run_experiment(role, experiment, seeds, params_path, device, overwrite, sync_bn, graph, compile, workers):
    p = _params(params_path)
    if p.role_of(experiment) != role:
        raise TfkdError(WRONG_ROLE[role].format(experiment))
    if layout.skip(p, experiment, click.echo):
        return  # before torch is imported: a skipped stage under dvc repro costs almost nothing
    from . import stages
    stages.run_experiment(p, experiment, seeds, _device(device), overwrite, sync_bn=sync_bn, graph=graph,
                          compile=compile, workers=workers)


@main.command()
@run_options
def train(experiment, seeds, params_path, device, overwrite, sync_bn, graph, compile, workers):
    """Train EXPERIMENT (a `train:` entry of params.yaml) from scratch: baseline CE, label
    smoothing (method: lsr) or Tf-KD reg (method: reg).

    Keeps the checkpoints named in `checkpoints` (default after epochs 1 and 50: the defective
    teachers), the final and the best-on-test one, each with optimizer and RNG state; resumes
    from runs/EXPERIMENT/s<seed>/last.pt when interrupted. Writes metrics.json (results only),
    timing.json and history.tsv per seed, and runs/EXPERIMENT.json over seeds.

    \b
    Data-parallel: torchrun --nproc_per_node N -m pipeline train EXPERIMENT
    (batch_size stays the global batch; each rank takes batch_size/N of every step).
    """
    _run_experiment("train", experiment, seeds, params_path, device, overwrite, sync_bn, graph, compile, workers)


@main.command("cache")
@click.argument("experiment", required=False)
@SEEDS
@PARAMS
@DEVICE
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Without EXPERIMENT: a teacher checkpoint: ours, the reference code's .pth.tar (zip or legacy format, with or without 'module.') or a plain state_dict.")
@click.option("--model", help="With --checkpoint: the teacher's architecture.")
@click.option("--width", type=float, default=1.0, show_default=True, help="With --checkpoint: width multiplier.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help="With --checkpoint: a prepared dataset.")
@click.option("--out", type=click.Path(dir_okay=False), help="With --checkpoint: the cache file to write.")
@OVERWRITE
@GRAPH
@COMPILE
@WORKERS
def cache_cmd(experiment, seeds, params_path, device, checkpoint, model, width, data_path, out, overwrite,
              graph, compile, workers):
    """Write a teacher's per-sample logits to HDF5 (stage one's output).

    \b
    tfkd cache EXPERIMENT      for a distill entry: its teacher checkpoint -> cache/EXPERIMENT/s<seed>.h5,
                               with the entry's cache_policy: 'replay' (logits of exactly the
                               student's augmented view of every epoch: equals online KD) or
                               'clean' (one vector per un-augmented image: cheaper, approximate).
                               With cache_topk: k > 0, each row is stored compact (its top-k
                               and a tail model: ~4k bytes instead of 2K; with cache_tail_bits:
                               b, also every logit to b bits, for high-T KD; see BENCHMARKS.md).
    tfkd cache --checkpoint FILE --model M --data data/prepared/X.npz --out cache/NAME.h5
                               any external checkpoint -> a clean cache (--data may be an
                               ImageFolder index, data/prepared/NAME.index.json).
    Under torchrun the ranks share the teacher inference; rank 0 writes the one file.
    """
    if experiment:
        p = _params(params_path)
        if p.role_of(experiment) == "distill" and layout.skip(p, experiment, click.echo, "cache"):
            return
        from . import stages
        stages.make_cache(p, experiment, seeds, _device(device), graph=graph, compile=compile, workers=workers)
        return
    from . import stages
    dev = _device(device)
    missing = [f"--{n}" for n, v in (("checkpoint", checkpoint), ("model", model), ("data", data_path), ("out", out)) if not v]
    if missing:
        raise TfkdError(f"give an EXPERIMENT, or {' '.join(missing)} for an external checkpoint")
    if os.path.exists(out) and not overwrite:
        raise TfkdError(f"{out} exists; pass --overwrite to replace it")
    from . import cache, distributed
    from .checkpoint import load_model
    from .config import RunConfig
    ddata = stages.external_data(data_path, dev, workers)
    teacher, ckpt = load_model(checkpoint, model, width, ddata.data.num_classes, ddata.data.channels)
    attrs = stages.describe_teacher(teacher.to(dev), ddata, checkpoint, ckpt, model, width, "external", 0, {},
                                    RunConfig.eval_batch_size)
    cache.write(out, teacher, ddata, "clean", attrs, graph=graph, compile=compile)
    if distributed.current().is_main:
        click.echo(f"wrote {out} (teacher {model}, test {attrs['teacher_test_acc']:.2f}%)")


@main.command()
@run_options
def distill(experiment, seeds, params_path, device, overwrite, sync_bn, graph, compile, workers):
    """Train the student of EXPERIMENT (a `distill:` entry) from its cache: normal KD, Re-KD,
    De-KD or Tf-KD self; they differ only in the teacher the entry names.

    \b
    Loss (loss_form: reference, the default, as the reference code computed it):
        (1-alpha)*CE + alpha*T^2*multiplier*KLDivLoss_mean(log_softmax(s/T), softmax(t/T))
    where KLDivLoss_mean divides by batch x classes. loss_form: paper uses the per-sample KL
    with no T^2 and no multiplier (Eq. 3): the reference's alpha/T/multiplier do not carry over.
    The cache is checked against the dataset and the run before the first step.
    Data-parallel like train: torchrun --nproc_per_node N -m pipeline distill EXPERIMENT
    """
    _run_experiment("distill", experiment, seeds, params_path, device, overwrite, sync_bn, graph, compile, workers)


@main.command("bench-compact")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A prepared dataset (data/prepared/NAME.npz) the checkpoints were trained on.")
@click.option("--teacher", required=True, type=click.Path(exists=True, dir_okay=False), help="Teacher checkpoint.")
@click.option("--student", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A student checkpoint whose logits the KD loss and gradient are taken at.")
@click.option("--views", default=10000, show_default=True, help="Augmented training views compared.")
@click.option("--k", "ks", type=click.IntRange(min=1), multiple=True, default=(5, 10, 20), show_default=True,
              help="Top-k sizes to compare (repeatable).")
@click.option("--bits", "bits", type=click.Choice([str(b) for b in TAIL_BITS]), multiple=True, default=("0", "4"),
              show_default=True, help="Tail codings to compare (cache_tail_bits; 0: the tail model; repeatable).")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the result as JSON here.")
def bench_compact(data_path, teacher, student, views, ks, bits, out):
    """How far the KD loss and its gradient from compact cache rows (cache_topk: each row's
    top-k and a tail model, or with cache_tail_bits every logit coded) are from the full logits',
    on real views, at the paper's temperatures (see BENCHMARKS.md)."""
    import json
    from . import bench as b, data
    result = b.compact_errors(data.load(data_path), teacher, student, views, ks, bits=tuple(int(x) for x in bits))
    click.echo(f"{result['dataset']}, {result['num_classes']} classes, {result['views']} views; teacher top-1 prob "
               f"{result['teacher_top1_prob_mean']:.3f}, mass beyond its top 10 {result['teacher_mass_beyond_top10_mean']:.3f}")
    click.echo("| T | k | tail bits | bytes/row (full) | KD loss rel. error median / max | gradient rel. error median / max |")
    click.echo("|---|---|---|---|---|---|")
    for r in result["rows"]:
        click.echo(f"| {r['T']} | {r['k']} | {r['bits']} | {r['bytes_per_row']} ({r['full_bytes_per_row']}) | "
                   f"{r['loss_rel_err_median']:.2e} / {r['loss_rel_err_max']:.2e} | "
                   f"{r['grad_rel_err_median']:.2e} / {r['grad_rel_err_max']:.2e} |")
    if out:
        from .files import write_text
        write_text(out, json.dumps(result, indent=2) + "\n")


@main.command("bench-loader")
@click.argument("index_path", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, multiple=True, default=(0, 1, 2), show_default=True,
              help="DataLoader worker counts to measure (repeatable).")
@click.option("--size", default=224, show_default=True, help="Crop size of the views.")
@click.option("--resize", default=256, show_default=True, help="Shorter side before the centre crop (val).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--steps", default=20, show_default=True, help="Timed batches, after a first one timed apart.")
@click.option("--split", type=click.Choice(("train", "val")), default="train", show_default=True)
@click.option("--threads", type=int, default=None,
              help="torch threads of this process (workers use 1 each; with 0 workers use 1).")
def bench_loader(index_path, workers, size, resize, batch_size, steps, split, threads):
    """Images/s of the streaming ImageFolder loader (decode + view, CPU) over INDEX_PATH, one JSON
    line per worker count (see BENCHMARKS.md)."""
    import json
    import torch
    from . import imagefolder
    if threads:
        torch.set_num_threads(threads)
    index = imagefolder.load_index(index_path)
    for w in workers:
        click.echo(json.dumps(imagefolder.throughput(index, w, batch_size, steps, size, resize, split)))


@main.command("stages")
@PARAMS
def stages_cmd(params_path):
    """Print the dvc.yaml stages of the active profile's experiments, one per line.

    
    dvc repro $(tfkd stages)   runs just those (and what they depend on), so the stages of the
    experiments a profile skips are not even launched (make run does this); plain `dvc repro`
    runs every stage, the skipped ones leaving a SKIPPED marker.
    """
    p = _params(params_path)
    for role in ("train", "distill"):
        for name in p.experiments(role):
            if p.selected(name):
                click.echo("\n".join(f"{stage}@{name}" for stage in (("cache", "distill") if role == "distill"
                                                                     else ("train",))))


@main.command()
@PARAMS
@click.option("--runs", "runs_dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where runs/<exp>.json and runs/<exp>.tsv are.")
@click.option("--out", "out_dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where to write results.md, results.json and results.png.")
def report(params_path, runs_dir, out_dir):
    """Set every experiment of params.yaml beside the paper's CIFAR-100 number.

    \b
    Writes, atomically:
      results.md    the paper's tables: best and final top-1 (mean ± std over seeds), the
                    paper's number, best − paper, the gain over the model's baseline;
                    runs that are missing show as "not run", never as zero, and runs
                    cut short as "partial: N/200 epochs" (from their history.tsv)
      results.json  the same rows as data (dvc metrics show)
      results.png   test-accuracy curves per model, and each method's gain vs the paper's
    A header says when the active profile (subset, epochs, width) makes the numbers
    NOT comparable with the paper. Reads only params.yaml and runs/; needs no GPU.
    """
    from .report import write_report
    rep = write_report(params_path, runs_dir, out_dir)
    click.echo(rep["paths"]["md"])
    click.echo(f"{rep['measured']} experiments measured, {rep['missing']} missing (profile {rep['profile']}"
               + (", NOT comparable with the paper)" if rep["not_comparable"] else ")"))


@main.command()
@click.option("--student", default="resnet18", show_default=True, help="Student architecture.")
@click.option("--teacher", default="resnet18", show_default=True, help="Teacher architecture.")
@click.option("--width", type=float, default=None, help="Width multiplier (default: 1 on GPU, 0.125 on CPU).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Training batch size.")
@click.option("--steps", type=int, default=None,
              help="Timed steps per row (default: 300 on GPU, about a second a row; 5 on CPU).")
@click.option("--cache-epochs", type=int, default=None,
              help="Replay epochs timed for cache writing (default: 10 on GPU, 2 on CPU).")
@click.option("--data", "data_path", default="data/prepared/embedded.npz", show_default=True,
              type=click.Path(dir_okay=False), help="A prepared dataset (its training set is used).")
@click.option("--out", default="runs/bench.json", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the JSON result.")
@DEVICE
@GRAPH
@COMPILE
def bench(student, teacher, width, batch_size, steps, cache_epochs, data_path, out, device, graph, compile):
    """Measure img/s of every stage in one run on the same data, with ratios.

    \b
    cache_write               the teacher in eval mode over augmented views (steady state)
    cache_file                a whole replay cache file, HDF5 write and start-up included
    train_ce / _lsr / _reg    student training: cross-entropy, label smoothing, Tf-KD reg
    train_kd_cache            student training, KD from a cached logit table (stage two)
    train_kd_online           student training, KD with the teacher run online
    reference_kd_online_fp32  the reference code's way: fp32, eager, batch 128, teacher online
    With a fast path on (GPU default, or --compile on CPU) it first checks that the fast step
    keeps the maths: a few steps eager and fast from the same weights, losses and weights
    compared (the "check" entry of the JSON). Record GPU figures in BENCHMARKS.md.
    """
    from . import bench as b, capture, data
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TfkdError("tfkd bench measures one process on one device; run it without torchrun")
    dev = _device(device)
    gpu = dev.type == "cuda"
    graph, compile = capture.fast_path(dev, 1, graph, compile)
    ds = data.load(data_path)
    width = width or (1.0 if gpu else 0.125)
    checked = None
    if graph or compile:
        click.echo("check: the fast step against the eager step")
        checked = b.check(ds, dev, student, width, batch_size, graph=graph, compile=compile)
        graph, compile = b.usable(checked, graph, compile)
    click.echo(f"bench: {student} student, {teacher} teacher, width {width}, {ds.name}")
    result = b.run(ds, dev, student, teacher, width, batch_size, steps=steps or (300 if gpu else 5),
                   warmup=5 if gpu else 1, infer_batch_size=1024 if gpu else 256,
                   cache_epochs=cache_epochs or (10 if gpu else 2), graph=graph, compile=compile)
    result["check"] = checked
    b.dump(result, out)
    click.echo(b.table(result))
    click.echo(f"wrote {out}")
    if checked and not all(f["ok"] for f in checked["forms"].values()):
        bad = ", ".join(f"{name} ({'failed to run' if 'error' in f else 'mismatch'})"
                        for name, f in checked["forms"].items() if not f["ok"])
        raise TfkdError(f"the fast step is not the eager step: {bad}; see 'check' in {out} (the rows "
                        f"were timed without what failed to run); use --no-graph / --no-compile until it is fixed")


@main.command()
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False),
              help="CIFAR-100 as an npz (x_train, y_train, x_test, y_test) or an already prepared dataset; "
                   "default: the profile's data/prepared/<dataset>.npz.")
@click.option("--time-cap", type=click.FloatRange(min=0, min_open=True), default=480, show_default=True,
              help="Seconds the training run may take: it stops after the epoch in which they pass, is "
                   "reported as partial and resumes when the command is given again.")
@click.option("--profile", default="paper", show_default=True, help="The params.yaml profile to train under.")
@click.option("--experiment", default="base_resnet18", show_default=True, help="The train entry to run.")
@click.option("--steps", type=int, default=None, help="Timed steps per bench row (default: 300 on GPU, 5 on CPU).")
@click.option("--cache-epochs", type=int, default=None,
              help="Replay epochs timed for cache writing (default: 10 on GPU, 2 on CPU).")
@click.option("--out", default="runs/acceptance.json", show_default=True, type=click.Path(dir_okay=False),
              help="The JSON result; the human summary goes beside it (.md).")
@PARAMS
@DEVICE
@GRAPH
@COMPILE
def acceptance(data_path, time_cap, profile, experiment, steps, cache_epochs, out, params_path, device, graph,
               compile):
    """The acceptance run on any GPU: `tfkd bench`'s fast-vs-eager check, every bench row, then
    base_resnet18 at the paper's setting (profile paper: full CIFAR-100, 200 epochs, batch 128).

    \b
    Writes OUT (JSON) and OUT's .md: each target (training >= 40k img/s and >= 3x the
    reference-style loop, KD from the cache >= 0.97x CE, cache writing >= 250k img/s, the
    200-epoch run <= 4 min with best >= 75.6 %), the measured figure and PASS / MISS, with the
    device, torch version, git commit, command line and date. The run's metrics go where
    `tfkd report` finds them (runs/EXPERIMENT.json, runs/EXPERIMENT/s<seed>/).
    A run stopped by --time-cap (after the epoch in which it passes) keeps its checkpoint and
    is reported as partial, never as a result; the command then exits 2, and given again it
    resumes the run.
    Example:  tfkd acceptance --data cifar100.npz --time-cap 540
    """
    from . import bench as b
    from .config import Params
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TfkdError("tfkd acceptance measures one process on one device; run it without torchrun")
    p = _params(params_path)
    if profile not in (p.raw.get("profiles") or {}):
        raise TfkdError(f"{params_path}: no profile {profile!r}; pass --profile one of {', '.join(p.raw.get('profiles') or {})}")
    p = Params(dict(p.raw, profile=profile), params_path)
    p.validate()
    result = b.acceptance(p, data_path, _device(device), time_cap, experiment, steps, cache_epochs, graph, compile,
                          out)
    click.echo("")
    click.echo(b.summary(result), nl=False)
    click.echo(f"wrote {out} and {os.path.splitext(out)[0]}.md")
    if result["problems"]:
        raise TfkdError("; ".join(result["problems"]))
