"""The one training loop: baseline, LSR, Tf-KD reg and every KD flavour (from a cache or online).

Modelled on torchvision's reference classification loop, with the data on the device: the whole
uint8 training set is a device tensor, each step gathers its samples by index and augments them
there (augment.py), and a KD step looks its teacher logits up by the same sample indices. The step
itself is step.py; on one GPU it and each evaluation pass run as CUDA graphs (capture.py).
"""
import json
import math
import os
import re
import threading
import time

import torch

from . import __version__, augment, capture, distributed
from .version import RESULTS_VERSION
from .config import identity_change
from .errors import TfkdError
from .files import atomic_path, write_text
from .device import device_name
from .losses import Objective
from .models import build_model
from .precision import PrecisionPolicy
from .step import TrainStep, optimizer_state

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
_OWNED = re.compile(r"epoch_\d+\.pt|best\.pt|last\.pt|metrics\.json|timing\.json|history\.tsv")  # RunDir's files


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
        d, mine = self.ddata, distributed.current().shard(range(len(self.ddata.y_test)))
        self.loss.zero_()
        self.correct.zero_()
        for i in range(mine.start, mine.stop, self.batch_size):
            j = min(i + self.batch_size, mine.stop)
            x, y = d.x_test[i:j], d.y_test[i:j]
            out = self.net(x)
            self.loss += torch.nn.functional.cross_entropy(out, y, reduction="sum")
            self.correct += (out.argmax(1) == y).sum()

    @torch.no_grad()
    def __call__(self):
        self.model.eval()
        self.graphed()
        world = distributed.current()
        loss, correct = world.sum(torch.stack([self.loss.double(), self.correct.double()])).tolist()
        n = len(self.ddata.y_test)
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


class RunDir:
    """runs/<experiment>/s<seed>/: checkpoints, metrics.json, timing.json, history.tsv."""

    def __init__(self, path):
        self.path = path
        self._writer, self._error = None, None  # the checkpoint write in flight, at most one

    def file(self, name):
        return os.path.join(self.path, name)

    def checkpoint(self, epoch):
        return self.file(f"epoch_{int(epoch):04d}.pt")

    def finished(self):
        """The metrics.json of a finished run here, or None."""
        try:
            with open(self.file("metrics.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def owned(self):
        """The files tfkd writes here (and their temporaries): all --overwrite may delete."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        return [n for n in names if _OWNED.fullmatch(n) or
                (n.startswith(".") and n.endswith(".tmp") and _OWNED.fullmatch(n[1:].rsplit(".", 2)[0]))]

    def _load(self, name):
        try:
            return torch.load(self.file(name), map_location="cpu", weights_only=True)
        except Exception:
            return None

    def _newest_epoch_state(self):
        """(name, state) of the newest readable epoch_*.pt, or (None, None)."""
        epochs = sorted((n for n in os.listdir(self.path) if re.fullmatch(r"epoch_\d+\.pt", n)), reverse=True)
        for name in epochs:
            state = self._load(name)
            if isinstance(state, dict) and "optimizer" in state:
                return name, state
        return None, None

    def resume_state(self, digest, identity, overwrite, log=print):
        """(state, file) to resume from ((None, None): start fresh). Refuses to clobber another
        run's results: without `overwrite` it names what differs; with it, deletes tfkd's own files."""
        old, source = None, None
        if os.path.exists(self.file("last.pt")):
            old, source = self._load("last.pt"), "last.pt"
            if not isinstance(old, dict):
                source, old = self._newest_epoch_state()
                log(f"{self.file('last.pt')} is damaged; " + (f"resuming from {source}, the newest intact "
                    f"checkpoint" if old else "no intact checkpoint is left, so the run restarts from scratch"))
        previous = old if old is not None else self.finished()
        old_digest = previous.get("digest", previous.get("config_digest")) if previous else None
        if old_digest is not None and old_digest != digest:
            if not overwrite:
                why = identity_change(previous.get("identity"), identity) or "with other settings"
                raise TfkdError(f"{self.path} was computed {why}; pass --overwrite to redo it, "
                                f"or change the experiment name")
            for name in self.owned():
                os.remove(self.file(name))
            return None, None
        return old, source
    def save_checkpoints(self, names, state):
        """Write `state` to each file of `names` in order, each atomically, in a background thread:
        the device goes on training meanwhile. `state` is first copied to host memory."""
        self.wait()
        devices = set()
        snapshot = _host_copy(state, devices)
        for device in devices - {torch.device("cpu")}:
            torch.cuda.synchronize(device)  # one wait for all the non-blocking copies

        def write():
            try:
                for name in names:
                    with atomic_path(self.file(name)) as tmp:
                        torch.save(snapshot, tmp)
            except BaseException as e:  # reported by the next wait(), in the training thread
                self._error = e
        self._writer = threading.Thread(target=write, name="tfkd-checkpoint", daemon=True)
        self._writer.start()

    def wait(self, quiet=False):
        """Block until the last checkpoint is on disk; raise if writing it failed (unless quiet)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None and not quiet:
            error, self._error = self._error, None
            raise TfkdError(f"could not write a checkpoint in {self.path} ({type(error).__name__}: {error}); "
                            f"free disk space, then rerun to resume")


def _host_copy(obj, devices):
    """`obj` with every tensor copied to host memory (training goes on mutating the originals).
    Device tensors are copied without blocking, into pinned memory: sync each of `devices` (the
    tensors' devices, filled in) before reading the copies. One sync, not one per tensor."""
    if torch.is_tensor(obj):
        devices.add(obj.device)
        return obj.detach().to("cpu", copy=True, non_blocking=obj.device.type == "cuda")
    if isinstance(obj, dict):
        return {k: _host_copy(v, devices) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v, devices) for v in obj)
    return obj


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_point(rd, digest, identity, overwrite, log=print):
    """('done', metrics) for a run finished with this identity, else ('resume', (state, file))."""
    finished = rd.finished()
    if finished is not None and finished.get("config_digest") == digest:
        return "done", finished
    os.makedirs(rd.path, exist_ok=True)
    return "resume", rd.resume_state(digest, identity, overwrite, log)


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
    graph, compile = capture.fast_path(device, world.size, graph, compile)
    if sync_bn and world.distributed and device.type != "cuda":
        raise TfkdError("--sync-bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernels); drop it on CPU")
    rd = RunDir(run_dir)
    fingerprint = data.data.fingerprint if isinstance(data, DeviceData) else data.fingerprint
    identity = cfg.run_identity(fingerprint, **(upstream or {}))
    digest = cfg.digest(fingerprint, **(upstream or {}))
    kind, state = world.on_main(lambda: _resume_point(rd, digest, identity, overwrite, log))
    if kind == "done":
        log(f"[{cfg.name} s{cfg.seed}] already finished with these settings: {rd.path}")
        return state
    state, source = state if state is not None else (None, None)

    ddata = DeviceData(data, device) if not isinstance(data, DeviceData) else data
    data = ddata.data
    model = model_for(cfg, data, device)
    if sync_bn and world.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN over the global batch
    opt = make_optimizer(model, cfg, device)
    objective = Objective(cfg.method, data.num_classes, cfg.alpha, cfg.temperature, cfg.multiplier,
                          cfg.label_smoothing, cfg.correct_prob, cfg.loss_form).to(device)
    if objective.needs_teacher and teacher is None:
        raise TfkdError(f"{cfg.name}: method {cfg.method!r} needs a teacher (a cache or a model)")
    key = cfg.run_key
    n, bs = len(data.y_train), cfg.batch_size
    steps = math.ceil(n / bs)  # the last partial batch is kept, as in the reference
    if world.size > min(bs, n % bs or bs):
        raise TfkdError(f"{cfg.name}: a batch of {min(bs, n % bs or bs)} samples cannot be split over "
                        f"{world.size} ranks (batch_size {bs} is the global batch); use fewer processes")
    start, best, history, timing, phases = 0, (-1.0, 0), [], [], []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, best, history, timing = state["epoch"], tuple(state["best"]), state["history"], state["timing"]
        phases = state.get("phases", [])
        _set_rng_state(state["rng"])
        log(f"[{cfg.name} s{cfg.seed}] resuming after epoch {start} from {rd.file(source)}")
    net = world.wrap(PrecisionPolicy(model), device)
    # Under torchrun every step must go through the DDP wrapper (it all-reduces the gradients), so
    # only a single process gets a second, unwrapped (maybe compiled) module for its full batches.
    fast = net if world.distributed else capture.compiled(PrecisionPolicy(model), compile)
    step = TrainStep(net, opt, objective, ddata, cfg.aug_spec, teacher, bs, graph, fast)
    evaluator = Evaluator(model, ddata, cfg.eval_batch_size, graph)
    meta = {"model_name": cfg.model, "width": cfg.width, "num_classes": data.num_classes,
            "in_channels": data.channels, "dataset": data.name, "dataset_fingerprint": data.fingerprint,
            "config": cfg.to_dict(), "digest": digest, "identity": identity, "package_version": __version__,
            "results_version": RESULTS_VERSION}

    started = time.perf_counter()
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            order = augment.epoch_order(key, epoch, n, device)
            step.start_epoch(key, epoch)
            for i in range(steps):
                lr = learning_rate(cfg, epoch, i, steps)
                batch = order[i * bs:(i + 1) * bs]
                index = world.shard(batch)  # this rank's part of the global batch
                step(index, lr, len(index) * world.size / len(batch))
            # The one host sync of the epoch's training: its sums, reduced over ranks.
            loss_sum, correct, bad = world.sum(torch.stack([step.loss_sum.double(), step.correct.double(),
                                                            (step.first_bad >= 0).double()])).tolist()
            if bad:
                where = f"step {step.first_bad.item()}" if step.first_bad.item() >= 0 else "on another rank"
                kept = (f"the last good checkpoint, {rd.file('last.pt')} (after epoch {epoch}), is kept"
                         if epoch > 0 else "no checkpoint exists yet (no epoch finished)")
                raise TfkdError(f"{cfg.name} s{cfg.seed}: the loss became NaN/inf in epoch {epoch + 1}, "
                                f"{where}; {kept} (lower lr, or check the inputs)")
            t1 = time.perf_counter()
            train_loss, train_acc = loss_sum / n, 100.0 * correct / n
            world.sync_buffers(model)  # every rank evaluates (and rank 0 saves) the same BN statistics
            test_loss, test_acc = evaluator()
            t2 = time.perf_counter()
            done = epoch + 1
            if test_acc >= best[0]:  # ties count, as in the reference
                best = (test_acc, done)
            history.append([done, lr, train_loss, train_acc, test_loss, test_acc])
            timing.append(t2 - t0)  # the checkpoint below holds the epoch without its own write
            phases.append([t1 - t0, t2 - t1])  # training (with any compilation), evaluation
            if world.is_main:
                state = dict(meta, model=model.state_dict(), optimizer=optimizer_state(opt), epoch=done,
                             best=list(best), history=history, timing=timing, phases=phases, rng=_rng_state(),
                             test_acc=test_acc)
                # last.pt goes last: when it names an epoch, that epoch's other files exist
                names = ["best.pt"] * (best[1] == done) + [os.path.basename(rd.checkpoint(done))] * (done in cfg.save_epochs)
                rd.save_checkpoints(names + ["last.pt"], state)
                write_history(rd.file("history.tsv"), history)
            seconds = time.perf_counter() - t0
            timing[-1] = seconds
            eta = seconds * (cfg.epochs - done)
            log(f"[{cfg.name} s{cfg.seed}] epoch {done}/{cfg.epochs} lr {lr:.4f} loss {train_loss:.3f} "
                f"train {train_acc:.2f}% test {test_acc:.2f}% (best {best[0]:.2f}%) "
                f"{n / seconds:,.0f} img/s eta {eta:.0f}s")
            if stop_after is not None and done - start >= stop_after:
                break
            if time_cap is not None and done < cfg.epochs and time.perf_counter() - started >= time_cap:
                log(f"[{cfg.name} s{cfg.seed}] time cap of {time_cap:g}s passed after epoch {done}/{cfg.epochs}: "
                    f"stopped, partial; rerun to resume from {rd.file('last.pt')}")
                break
    except BaseException:
        rd.wait(quiet=True)  # leave the last checkpoint whole; the original error is the one to report
        raise
    rd.wait()
    if len(history) < cfg.epochs:  # stopped early by stop_after or time_cap
        return None

    metrics = {"experiment": cfg.name, "seed": cfg.seed, "method": cfg.method, "model": cfg.model,
               "teacher": cfg.teacher or None, "dataset": data.name, "num_classes": data.num_classes,
               "epochs": cfg.epochs, "best_top1": best[0], "best_epoch": best[1],
               "final_top1": history[-1][5], "final_test_loss": history[-1][4],
               "config_digest": digest, "identity": identity, "package_version": __version__,
               "params": cfg.to_dict()}
    if world.is_main:
        write_text(rd.file("metrics.json"), json.dumps(metrics, indent=2) + "\n")
        write_text(rd.file("timing.json"), json.dumps(
            {"device": device_name(device), "ranks": world.size, "sync_bn": bool(sync_bn and world.distributed),
             "graph": graph, "compile": compile, "epoch_seconds": timing,
             "train_seconds": sum(p[0] for p in phases), "eval_seconds": sum(p[1] for p in phases),
             "total_seconds": sum(timing), "images_per_second": n * len(timing) / max(sum(timing), 1e-9)},
            indent=2) + "\n")
    world.barrier()  # the files exist before any rank goes on to a stage that reads them
    return metrics


def write_history(path, rows, seed=None):
    lines = ["\t".join(("seed",) * (seed is not None) + HISTORY_COLUMNS)]
    for row in rows:
        cells = [str(seed)] * (seed is not None) + [str(row[0])] + [f"{v:.6g}" for v in row[1:]]
        lines.append("\t".join(cells))
    write_text(path, "\n".join(lines) + "\n")
