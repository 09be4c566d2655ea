"""The one training loop: baseline, LSR, Tf-KD reg and every KD flavour (from a cache or online).

Modelled on torchvision's reference classification loop, with the data on the device: the whole
uint8 training set is a device tensor, each step gathers its samples by index and augments them
there (augment.py), and a KD step looks its teacher logits up by the same sample indices. The step
itself is step.py; on one GPU it and each evaluation pass run as CUDA graphs (capture.py).
"""
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch

from . import __version__, augment, capture, distributed
from .checkpoint import RunDir, resume_point, rng_state, set_rng_state
from .config import identity_digest
from .device import device_name
from .errors import TfkdError
from .files import write_text
from .layout import HISTORY_COLUMNS, write_history
from .losses import Objective
from .models import build_model
from .precision import PrecisionPolicy
from .step import TrainStep, optimizer_state
from .version import RESULTS_VERSION


class DeviceData:
    """A prepared dataset resident on the device: uint8 train images, normalised test images."""

    def __init__(self, data, device):
        self.data = data
        self.device = device
        self.channels_last = device.type == "cuda"
        self.x_train = torch.from_numpy(data.x_train).to(device)
        self.y_train = torch.from_numpy(data.y_train).to(device)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device)
        self.x_test = self.inputs(torch.from_numpy(data.x_test).to(device))
        self.y_test = torch.from_numpy(data.y_test).to(device)

    def inputs(self, images_u8):
        return augment.normalize(images_u8, self.mean, self.std, self.channels_last)

    def view(self, index, seeds, spec):
        """The normalised augmented views of training samples `index` in the epoch of `seeds`."""
        return self.inputs(augment.views(self.x_train, index, seeds, spec))

    # What the loop asks of its data (imagefolder.FolderData answers the same for a streamed tree).
    def batches(self, key, epoch, batch_size, world):
        """(this rank's sample indices, the global batch's size) of each step of the epoch."""
        order = augment.epoch_order(key, epoch, len(self.y_train), self.device)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            yield world.shard(batch), len(batch)

    def train_views(self, index, seeds, spec):
        """(views, labels) of samples `index`: gathered and augmented here, inside the step."""
        return self.view(index, seeds, spec), self.y_train[index]

    def test_batches(self, batch_size, world):
        """(normalised images, labels) of this rank's share of the test set, batch by batch."""
        mine = world.shard(range(len(self.y_test)))
        for i in range(mine.start, mine.stop, batch_size):
            j = min(i + batch_size, mine.stop)
            yield self.x_test[i:j], self.y_test[i:j]


def model_for(cfg, data, device):
    torch.manual_seed(cfg.seed)  # same seed, same initial weights (as the reference)
    model = build_model(cfg.model, data.num_classes, in_channels=data.channels, width=cfg.width).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


class Evaluator:
    """(mean CE loss, top-1 %) on the test set, teacher-style: eval mode, no augmentation.
    Under torchrun each rank scores its shard and the sums are reduced: every rank gets the same.
    With `graph` the whole pass is one CUDA graph from the second call on."""

    def __init__(self, model, ddata, batch_size, graph=False):
        self.model, self.net, self.ddata, self.batch_size = model, PrecisionPolicy(model), ddata, batch_size
        self.loss = torch.zeros((), device=ddata.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=ddata.device)
        self.graphed = capture.Graphed(self._pass, graph, warmup=1, what="the evaluation pass")

    def _pass(self):
        self.loss.zero_()
        self.correct.zero_()
        for x, y in self.ddata.test_batches(self.batch_size, distributed.current()):
            out = self.net(x)
            self.loss += torch.nn.functional.cross_entropy(out, y, reduction="sum")
            self.correct += (out.argmax(1) == y).sum()

    @torch.no_grad()
    def __call__(self):
        self.model.eval()
        self.graphed()
        world = distributed.current()
        loss, correct = world.sum(torch.stack([self.loss.double(), self.correct.double()])).tolist()
        n = len(self.ddata.data.y_test)
        return loss / n, 100.0 * correct / n


def evaluate(model, ddata, batch_size):
    return Evaluator(model, ddata, batch_size)()


def learning_rate(cfg, epoch, step, steps_per_epoch):
    """Linear warm-up per iteration, then x gamma at each milestone (60/120/160 of 200)."""
    if epoch < cfg.warmup_epochs:
        return cfg.step_lr * (epoch * steps_per_epoch + step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    return cfg.step_lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestone_epochs)


def make_optimizer(model, cfg, device):
    return torch.optim.SGD(model.parameters(), lr=cfg.step_lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)


class OnlineTeacher:
    """A teacher network run on the student's own views (reference-style KD; tests and bench)."""

    def __init__(self, model, round_to=torch.float16):
        self.net = PrecisionPolicy(model.eval())
        self.round_to = round_to  # mimic the cache's storage dtype, for exact-replay comparisons

    @torch.no_grad()
    def logits(self, epoch, index, x):
        out = self.net(x)
        return out.to(self.round_to).float() if self.round_to is not None else out


@dataclass
class Progress:
    """How far a run has come: what its checkpoints hold besides weights, optimizer and RNG."""
    epoch: int = 0          # epochs completed
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list = field(default_factory=list)  # one row of layout.HISTORY_COLUMNS per epoch
    timing: list = field(default_factory=list)   # seconds per epoch, its checkpoint write included
    phases: list = field(default_factory=list)   # [training, evaluation] seconds per epoch

    @classmethod
    def of(cls, state):
        return cls(state["epoch"], *state["best"], state["history"], state["timing"], state.get("phases", []))

    def state(self):
        return {"epoch": self.epoch, "best": [self.best_top1, self.best_epoch], "history": self.history,
                "timing": self.timing, "phases": self.phases}

    def record(self, row, train_seconds, eval_seconds):
        self.epoch = row[0]
        if row[-1] >= self.best_top1:  # ties count, as in the reference
            self.best_top1, self.best_epoch = row[-1], self.epoch
        self.history.append(row)
        self.timing.append(train_seconds + eval_seconds)
        self.phases.append([train_seconds, eval_seconds])

    def last(self, column):
        return self.history[-1][HISTORY_COLUMNS.index(column)]


class Run:
    """One run's training objects, built from its config: model, optimizer, step and evaluator."""

    def __init__(self, cfg, ddata, device, teacher, world, sync_bn, graph, compile):
        self.model = model_for(cfg, ddata.data, device)
        if sync_bn and world.distributed:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.opt = make_optimizer(self.model, cfg, device)
        objective = Objective(cfg, ddata.data.num_classes).to(device)
        if objective.needs_teacher and teacher is None:
            raise TfkdError(f"{cfg.name}: method {cfg.method!r} needs a teacher (a cache or a model)")
        net = world.wrap(PrecisionPolicy(self.model), device)
        # Under torchrun every step must go through the DDP wrapper (it all-reduces the gradients), so
        # only a single process gets a second, unwrapped (maybe compiled) module for its full batches.
        fast = net if world.distributed else capture.compiled(PrecisionPolicy(self.model), compile)
        self.step = TrainStep(net, self.opt, objective, ddata, cfg.aug_spec, teacher, cfg.batch_size, graph, fast)
        self.evaluator = Evaluator(self.model, ddata, cfg.eval_batch_size, graph)

    def restore(self, state):
        """Progress of a run resumed from checkpoint `state` (None: a fresh start)."""
        if state is None:
            return Progress()
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return Progress.of(state)

    def state(self, progress, meta):
        return dict(meta, **progress.state(), model=self.model.state_dict(), optimizer=optimizer_state(self.opt),
                    rng=rng_state(), test_acc=progress.last("test_acc"))


def check_batches(cfg, n, world):
    smallest_batch = min(cfg.batch_size, n % cfg.batch_size or cfg.batch_size)  # the last one may be partial
    if world.size > smallest_batch:
        raise TfkdError(f"{cfg.name}: a batch of {smallest_batch} samples cannot be split over {world.size} "
                        f"ranks (batch_size {cfg.batch_size} is the global batch); use fewer processes")


def train_one_epoch(cfg, step, ddata, epoch, n, world):
    """One epoch of SGD steps; (mean loss, top-1 %, last lr, step of the first NaN/inf loss or None)."""
    steps = math.ceil(n / cfg.batch_size)  # the last partial batch is kept, as in the reference
    step.start_epoch(cfg.run_key, epoch)
    for i, (index, size) in enumerate(ddata.batches(cfg.run_key, epoch, cfg.batch_size, world)):
        lr = learning_rate(cfg, epoch, i, steps)
        step(index, lr, len(index) * world.size / size)
    # The one host sync of the epoch's training: its sums, reduced over ranks.
    loss_sum, correct, bad = world.sum(torch.stack([step.loss_sum.double(), step.correct.double(),
                                                    (step.first_bad >= 0).double()])).tolist()
    first_bad = (step.first_bad.item() if step.first_bad.item() >= 0 else "on another rank") if bad else None
    return loss_sum / n, 100.0 * correct / n, lr, first_bad


def refuse_nan(cfg, rd, epoch, first_bad):
    where = f"step {first_bad}" if isinstance(first_bad, int) else first_bad
    kept = (f"the last good checkpoint, {rd.file('last.pt')} (after epoch {epoch}), is kept"
            if epoch > 0 else "no checkpoint exists yet (no epoch finished)")
    raise TfkdError(f"{cfg.name} s{cfg.seed}: the loss became NaN/inf in epoch {epoch + 1}, {where}; {kept} "
                    f"(lower lr, or check the inputs)")


def save_epoch(rd, cfg, progress, state):
    """The epoch's checkpoints (in the background) and history.tsv. last.pt goes last: when it
    names an epoch, that epoch's other files exist."""
    done = progress.epoch
    names = ["best.pt"] * (progress.best_epoch == done)
    names += [os.path.basename(rd.checkpoint(done))] * (done in cfg.save_epochs)
    rd.save_checkpoints(names + ["last.pt"], state)
    write_history(rd.file("history.tsv"), progress.history)


def write_results(cfg, rd, progress, data, device, world, digest, identity, fast_path):
    """metrics.json (the run's result) and timing.json (how long it took, where)."""
    metrics = {"experiment": cfg.name, "seed": cfg.seed, "method": cfg.method, "model": cfg.model,
               "teacher": cfg.teacher or None, "dataset": data.name, "num_classes": data.num_classes,
               "epochs": cfg.epochs, "best_top1": progress.best_top1, "best_epoch": progress.best_epoch,
               "final_top1": progress.last("test_acc"), "final_test_loss": progress.last("test_loss"),
               "config_digest": digest, "identity": identity, "package_version": __version__,
               "params": cfg.to_dict()}
    if world.is_main:
        n, timing, phases = len(data.y_train), progress.timing, progress.phases
        write_text(rd.file("metrics.json"), json.dumps(metrics, indent=2) + "\n")
        write_text(rd.file("timing.json"), json.dumps(
            {"device": device_name(device), "ranks": world.size, **fast_path, "epoch_seconds": timing,
             "train_seconds": sum(p[0] for p in phases), "eval_seconds": sum(p[1] for p in phases),
             "total_seconds": sum(timing), "images_per_second": n * len(timing) / max(sum(timing), 1e-9)},
            indent=2) + "\n")
    world.barrier()  # the files exist before any rank goes on to a stage that reads them
    return metrics


def fit(cfg, data, run_dir, device, teacher=None, overwrite=False, log=print, stop_after=None, sync_bn=False,
        graph=None, compile=None, time_cap=None, upstream=None):
    """Train one run to the end (resuming if possible); returns its metrics dict.

    `teacher` supplies KD targets: an object with .logits(epoch, index, x) -> [B, K] float.
    `stop_after` (tests only) returns after that many epochs, as if the process had been killed.
    `time_cap` (seconds): stop cleanly after the epoch in which this call passes it, its checkpoint
    kept (a rerun resumes); like stop_after, a run cut short returns None and writes no metrics.
    Under torchrun every rank calls this; rank 0 decides about resuming and writes every file.
    BatchNorm statistics are per rank (as in torchvision's reference) unless `sync_bn`.
    `graph` / `compile`: the fast path of capture.py (None: on for one CUDA device).
    `upstream`: inputs beyond the settings and data that are part of the run's identity
    (a student: {"teacher_checkpoint": sha256 of the checkpoint its cache was made from}).
    """
    world = distributed.current()
    log = world.quiet(log)
    held = hasattr(data, "data")  # DeviceData or imagefolder.FolderData, else a data.Dataset
    if getattr(data, "streamed", False):
        graph = False  # a streamed batch arrives in new tensors each step: nothing for a graph to replay
    graph, compile = capture.fast_path(device, world.size, graph, compile)
    if sync_bn and world.distributed and device.type != "cuda":
        raise TfkdError("--sync-bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernels); drop it on CPU")
    rd, tag = RunDir(run_dir), f"[{cfg.name} s{cfg.seed}]"
    fingerprint = data.data.fingerprint if held else data.fingerprint
    identity = cfg.run_identity(fingerprint, **(upstream or {}))
    digest = identity_digest(identity)
    kind, state = world.on_main(lambda: resume_point(rd, digest, identity, overwrite, log))
    if kind == "done":
        log(f"{tag} already finished with these settings: {rd.path}")
        return state
    state, source = state if state is not None else (None, None)

    ddata = data if held else DeviceData(data, device)
    data, n = ddata.data, len(ddata.data.y_train)
    check_batches(cfg, n, world)
    run = Run(cfg, ddata, device, teacher, world, sync_bn, graph, compile)
    progress = run.restore(state)
    if state is not None:
        log(f"{tag} resuming after epoch {progress.epoch} from {rd.file(source)}")
    start = progress.epoch
    meta = {"model_name": cfg.model, "width": cfg.width, "num_classes": data.num_classes,
            "in_channels": data.channels, "dataset": data.name, "dataset_fingerprint": data.fingerprint,
            "config": cfg.to_dict(), "digest": digest, "identity": identity, "package_version": __version__,
            "results_version": RESULTS_VERSION}

    started = time.perf_counter()
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            run.model.train()
            train_loss, train_acc, lr, first_bad = train_one_epoch(cfg, run.step, ddata, epoch, n, world)
            if first_bad is not None:
                refuse_nan(cfg, rd, epoch, first_bad)
            t1 = time.perf_counter()
            world.sync_buffers(run.model)  # every rank evaluates (and rank 0 saves) the same BN statistics
            test_loss, test_acc = run.evaluator()
            progress.record([epoch + 1, lr, train_loss, train_acc, test_loss, test_acc], t1 - t0,
                            time.perf_counter() - t1)  # the checkpoint holds the epoch without its own write
            if world.is_main:
                save_epoch(rd, cfg, progress, run.state(progress, meta))
            seconds = progress.timing[-1] = time.perf_counter() - t0
            log(f"{tag} epoch {progress.epoch}/{cfg.epochs} lr {lr:.4f} loss {train_loss:.3f} "
                f"train {train_acc:.2f}% test {test_acc:.2f}% (best {progress.best_top1:.2f}%) "
                f"{n / seconds:,.0f} img/s eta {seconds * (cfg.epochs - progress.epoch):.0f}s")
            if stop_after is not None and progress.epoch - start >= stop_after:
                break
            if time_cap is not None and progress.epoch < cfg.epochs and time.perf_counter() - started >= time_cap:
                log(f"{tag} time cap of {time_cap:g}s passed after epoch {progress.epoch}/{cfg.epochs}: "
                    f"stopped, partial; rerun to resume from {rd.file('last.pt')}")
                break
    except BaseException:
        rd.wait(reraise=False)  # leave the last checkpoint whole; the original error is the one to report
        raise
    rd.wait()
    if progress.epoch < cfg.epochs:  # stopped early by stop_after or time_cap
        return None
    fast_path = {"sync_bn": bool(sync_bn and world.distributed), "graph": graph, "compile": compile}
    return write_results(cfg, rd, progress, data, device, world, digest, identity, fast_path)
