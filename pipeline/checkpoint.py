"""Checkpoints: reading a model's weights from a checkpoint file, whoever wrote it; and a run's
own: its folder (RunDir), writing them in the background, the RNG state, and where a rerun resumes.

Three kinds load, strictly and with no key map, because the zoo's state_dict keys are the
reference code's own (models/):
    ours             {'model': state_dict, 'model_name', 'width', 'num_classes', ..., 'results_version'}
    the reference's  {'state_dict': state_dict, 'optim_dict', 'epoch'} (its .pth.tar files)
    a plain state_dict
in either torch format (zip, or the legacy one torch <= 1.5 wrote), keys with or without the
'module.' prefix nn.DataParallel / DistributedDataParallel adds. A torchvision weights file is a
plain state_dict of a tv_* model (models/imagenet.py).
"""
import json
import os
import re
import threading

import torch

from .config import identity_change
from .errors import TfkdError
from .files import atomic_path
from .models import MODELS, TORCHVISION, build_model
from .version import RESULTS_VERSION

# torchvision's published DenseNet weights name 'norm.1' what its DenseNet calls 'norm1' (torchvision
# renames them when it loads that file itself); renamed here too, so that file loads as it is.
TORCHVISION_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|conv))\.([12])\.")


def read(path):
    """The checkpoint at `path` as a dict, or a one-line TfkdError saying what it is instead."""
    if not os.path.exists(path):
        raise TfkdError(f"teacher checkpoint {path} not found: train the teacher first (tfkd train) "
                        f"or give the path of an existing checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):  # pickled Python objects
            raise TfkdError(f"checkpoint {path} holds pickled Python objects (a whole model saved with "
                            f"torch.save(model)?), not weights: save model.state_dict() and pass that file")
        raise TfkdError(f"teacher checkpoint {path} cannot be read ({type(e).__name__}): "
                        f"it is truncated or not a PyTorch checkpoint")
    if not isinstance(ckpt, dict):
        raise TfkdError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state_dict: "
                        f"save model.state_dict() and pass that file")
    return ckpt


def model_state(ckpt):
    """The model's state_dict inside a checkpoint of any of the three kinds, 'module.' removed."""
    state = ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(state, dict):
        return {}
    return {TORCHVISION_DENSENET_KEY.sub(r"\1\2.", k.removeprefix("module.")): v
            for k, v in state.items() if torch.is_tensor(v)}


def describe(ckpt):
    """What a checkpoint holds, in words: 'resnet18 (width 0.5, 20 classes, 3 input channels)'."""
    if "model_name" in ckpt:  # ours says so
        return (f"{ckpt['model_name']} (width {ckpt.get('width')}, {ckpt.get('num_classes')} classes, "
                f"{ckpt.get('in_channels')} input channels)")
    state = model_state(ckpt)
    shapes = [v.shape for v in state.values()]
    for name in sorted(MODELS) + sorted(TORCHVISION):  # the architecture whose key list it has; then its sizes
        with torch.device("meta"):  # keys and shapes only: no memory, no initialisation (ResNeXt101's takes ~1 s)
            reference = build_model(name, 10).state_dict()
        if list(reference) != list(state):
            continue
        if name in TORCHVISION and [v.shape for v in reference.values()][:-2] != shapes[:-2]:
            continue  # one width: all but the classifier's shapes are its own (tv_resnet101 has tv_resnext101's keys)
        stem = next(k for k, v in reference.items() if v.dim() == 4)
        width = state[stem].shape[0] / reference[stem].shape[0]
        classes = shapes[-1][0]  # every zoo model's last entry is its classifier's bias
        return f"{name} (width ~{width:.3g}, {classes} classes, {state[stem].shape[1]} input channels)"
    keys = list(state)
    return f"no model of the zoo (keys {keys[0]!r} ... {keys[-1]!r})" if keys else "no weights"


def load_model(path, model_name, width, num_classes, in_channels):
    """(`model_name` at that size with the checkpoint's weights, in eval mode; the checkpoint dict).
    A checkpoint of another model, width or class count is refused in one line naming both."""
    ckpt = read(path)
    if "model_name" in ckpt and ckpt.get("results_version") != RESULTS_VERSION:
        raise TfkdError(f"teacher checkpoint {path} was written by an older tfkd (results version "
                        f"{ckpt.get('results_version', 1)}, this is {RESULTS_VERSION}) whose models differ: "
                        f"retrain it (tfkd train EXPERIMENT --overwrite)")
    model = build_model(model_name, num_classes, in_channels=in_channels, width=width)
    state = model_state(ckpt)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise TfkdError(f"teacher checkpoint {path} holds {describe(ckpt)}, not the {model_name} (width {width:g}, "
                        f"{num_classes} classes, {in_channels} input channels) asked for: fix the teacher's "
                        f"model, width or dataset, or pass the right checkpoint")
    return model.eval(), ckpt


_OWNED = re.compile(r"epoch_\d+\.pt|best\.pt|last\.pt|metrics\.json|timing\.json|history\.tsv")  # RunDir's files


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
        snapshot = host_copy(state, devices)
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

    def wait(self, reraise=True):
        """Block until the last checkpoint is on disk; raise if writing it failed (if `reraise`)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None and reraise:
            error, self._error = self._error, None
            raise TfkdError(f"could not write a checkpoint in {self.path} ({type(error).__name__}: {error}); "
                            f"free disk space, then rerun to resume")


def host_copy(obj, devices):
    """`obj` with every tensor copied to host memory (training goes on mutating the originals).
    Device tensors are copied without blocking, into pinned memory: sync each of `devices` (the
    tensors' devices, filled in) before reading the copies. One sync, not one per tensor."""
    if torch.is_tensor(obj):
        devices.add(obj.device)
        return obj.detach().to("cpu", copy=True, non_blocking=obj.device.type == "cuda")
    if isinstance(obj, dict):
        return {k: host_copy(v, devices) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v, devices) for v in obj)
    return obj


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_point(rd, digest, identity, overwrite, log=print):
    """('done', metrics) for a run finished with this identity, else ('resume', (state, file))."""
    finished = rd.finished()
    if finished is not None and finished.get("config_digest") == digest:
        return "done", finished
    os.makedirs(rd.path, exist_ok=True)
    return "resume", rd.resume_state(digest, identity, overwrite, log)
