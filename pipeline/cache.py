"""Stage one's output: a teacher's per-sample logits in HDF5, indexed by dataset sample index.

    logits   clean: [N, K]; replay: [E, N, K]   float16, chunked by rows
    labels   [N] int64                          the training labels, to check alignment
    attrs    see ATTRS: what makes a wrong pairing impossible to miss

`clean` holds one vector per un-augmented training image; `replay` holds logits[epoch, sample]
for exactly the augmented view a given student run sees in that epoch (augment.py is a pure
function of the student's run key, epoch and sample index), so distilling from it equals online
KD with the teacher's logits rounded to float16.
"""
import json
import os

import h5py
import numpy as np
import torch

from . import __version__, augment, capture, distributed
from .errors import TfkdError, one_line
from .files import atomic_path
from .precision import PrecisionPolicy
from .version import RESULTS_VERSION

SCHEMA_VERSION = 2  # 2: the named-module zoo (results version 2); older caches are refused
ATTRS = ("schema_version", "dataset", "dataset_fingerprint", "num_classes", "num_samples",
         "teacher_model", "teacher_width", "checkpoint_path", "checkpoint_sha256", "checkpoint_epoch",
         "checkpoint_choice", "teacher_test_acc", "view_policy", "aug_version", "aug_spec",
         "run_key", "epochs", "seed", "params", "package_version", "teacher_digest", "results_version")
ROWS_PER_CHUNK = 1024
INFER_BATCH = 1024       # teacher inference batch: no gradients, so far larger than a training batch
MIN_COMPILED_EPOCHS = 3  # fewer replay passes than this: compiling costs more than it saves
LOG_EVERY = 10           # log a replay cache's progress about this many times


@torch.no_grad()
def _logit_blocks(model, ddata, policy, run_key, epochs, spec, batch_size, graph=False, compile=False):
    """(epoch, [N, K] float16 numpy) for each block of the cache, on every rank. Under torchrun each
    rank runs the teacher on its shard of the samples and the shards are gathered in sample order.
    Every epoch is the same pass over the same shapes, so with `graph` it is one CUDA graph. When an
    epoch is yielded, the next one is already running on the device."""
    world = distributed.current()
    n, k, device = len(ddata.y_train), ddata.data.num_classes, ddata.device
    mine = world.shard(range(n))
    index = torch.arange(mine.start, mine.stop, device=device)
    rows = torch.empty((len(index), k), dtype=torch.float16, device=device)
    seeds = torch.zeros(augment.STREAMS, dtype=torch.int64, device=device)
    plain = PrecisionPolicy(model)
    fast = capture.compiled(plain, compile)

    def one_pass():
        for i in range(0, len(index), batch_size):
            part = index[i:i + batch_size]
            x = ddata.inputs(ddata.x_train[part]) if policy == "clean" else ddata.view(part, seeds, spec)
            net = fast if len(part) == batch_size else plain  # one compiled shape; the last batch eager
            rows[i:i + len(part)] = net(x).to(torch.float16)

    passes = capture.Graphed(one_pass, graph, warmup=1, what="a cache pass")
    count = epochs if policy == "replay" else 1

    def launch(epoch):
        seeds.copy_(torch.tensor(augment.seeds(run_key, epoch)))
        passes()

    launch(0)
    for epoch in range(count):
        host = world.gather_rows(rows, n).to("cpu", copy=True).numpy()  # waits for this epoch's pass
        if epoch + 1 < count:
            launch(epoch + 1)  # the device computes the next epoch while the caller writes this one
        yield epoch, host


def write(path, model, ddata, policy, attrs, run_key=0, epochs=1, spec=None, batch_size=INFER_BATCH, log=print,
          graph=None, compile=None):
    """Run `model` (eval mode) over the training set and write the cache atomically (rank 0).

    clean: one un-augmented view per sample; replay: the student's views of epochs 0..epochs-1.
    `graph` / `compile`: the fast path of capture.py (None: on for one CUDA device).
    """
    model.eval()
    world = distributed.current()
    if compile is None and (policy == "clean" or epochs < MIN_COMPILED_EPOCHS):
        compile = False  # (a single pass is never captured either)
    graph, compile = capture.fast_path(ddata.device, world.size, graph, compile)
    if ddata.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = ddata.data
    n, k = len(data.y_train), data.num_classes
    blocks = _logit_blocks(model, ddata, policy, run_key, epochs, spec, batch_size, graph, compile)
    if not world.is_main:
        for _ in blocks:
            pass
        world.barrier()
        return path
    shape = (n, k) if policy == "clean" else (epochs, n, k)
    chunks = (min(n, ROWS_PER_CHUNK), k) if policy == "clean" else (1, min(n, ROWS_PER_CHUNK), k)
    attrs = dict(attrs, schema_version=SCHEMA_VERSION, dataset=data.name,
                 dataset_fingerprint=data.fingerprint, num_classes=k, num_samples=n,
                 view_policy=policy, aug_version=augment.AUG_VERSION,
                 aug_spec=json.dumps(vars(spec) if spec else {}, sort_keys=True),
                 run_key=int(run_key), epochs=int(epochs if policy == "replay" else 0),
                 package_version=__version__, results_version=RESULTS_VERSION)
    with atomic_path(path, need=2 * int(np.prod(shape)) + 8 * n) as tmp:  # h5py may crash on a full disk
        with h5py.File(tmp, "w") as f:
            f.create_dataset("labels", data=data.y_train.astype(np.int64), track_times=False)
            ds = f.create_dataset("logits", shape=shape, dtype=np.float16, chunks=chunks, track_times=False)
            for epoch, rows in blocks:
                if policy == "clean":
                    ds[...] = rows
                else:
                    ds[epoch] = rows
                    if (epoch + 1) % max(1, epochs // LOG_EVERY) == 0 or epoch + 1 == epochs:
                        log(f"  cache {os.path.basename(path)}: epoch {epoch + 1}/{epochs}")
            for key in ATTRS:
                if key in attrs:
                    f.attrs[key] = attrs[key]
    world.barrier()
    return path


def read_attrs(path):
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except FileNotFoundError:
        raise TfkdError(f"cache {path} not found: run 'tfkd cache' for it first")
    except OSError as e:
        raise TfkdError(f"cache {path} is truncated or corrupt ({one_line(e, 80)}): "
                        f"delete it and rerun 'tfkd cache'")


def _fingerprint(value):
    return f"{value[:4]}…" if isinstance(value, str) else f"{value}"


# How a cache differs in one attribute (old, new), as words after "was made".
_DIFFERS = {
    "schema_version": lambda old, new: f"with schema version {old}, this is {new}",
    "results_version": lambda old, new: f"by results version {old}, this is {new}",
    "dataset_fingerprint": lambda old, new: f"from other data (fingerprint {_fingerprint(old)} → {_fingerprint(new)})",
    "view_policy": lambda old, new: f"with view policy {old!r}, this run wants {new!r}",
    "run_key": lambda old, new: f"for another student run (run key {old} → {new})",
    "epochs": lambda old, new: f"for {old} epochs, the run needs {new}",
    "aug_version": lambda old, new: f"with another augmentation (version {old} → {new})",
    "aug_spec": lambda old, new: f"with another augmentation ({old} → {new})",
    "checkpoint_sha256": lambda old, new: f"from another teacher checkpoint (sha256 {_fingerprint(old)} → {_fingerprint(new)})",
    "teacher_digest": lambda old, new: f"from another teacher run (digest {old} → {new})",
}


def expected(data, policy, run_key=None, epochs=None, spec=None, teacher=None):
    """The attributes a cache must have to serve a run, in the order they are checked: the format,
    the code's results version, the data, the views (replay: the run key, its epochs and its
    augmentation) and `teacher` (checkpoint_sha256: the teacher file's content, teacher_digest:
    the teacher run's digest), where given."""
    want = {"schema_version": SCHEMA_VERSION, "results_version": RESULTS_VERSION,
            "dataset_fingerprint": data.fingerprint, "view_policy": policy}
    if policy == "replay":
        want.update(run_key=int(run_key), epochs=int(epochs), aug_version=augment.AUG_VERSION,
                    aug_spec=json.dumps(vars(spec) if spec else {}, sort_keys=True))
    want.update({k: v for k, v in (teacher or {}).items() if v is not None})
    return want


def check(path, want, fix="rerun 'tfkd cache'"):
    """The cache's attrs if it has every attribute of `want` (see expected(); a replay cache may
    cover more epochs), else TfkdError naming the first that differs, old → new, and `fix`.
    The one validity check: make_cache's "up to date" and every reader's refusal."""
    attrs = read_attrs(path)
    for key, new in want.items():
        old = attrs.get(key)
        if not (old == new or (key == "epochs" and old is not None and old >= new)):
            raise TfkdError(f"{path} was made {_DIFFERS[key](old, new)}; {fix}")
    return attrs


def load(path, data, policy, run_key=None, epochs=None, spec=None, teacher=None,
         fix="rerun 'tfkd cache'"):
    """The cache's logits as a float16 array, after checking it belongs with this dataset and run
    (check(); `teacher` as in expected())."""
    attrs = check(path, expected(data, policy, run_key, epochs, spec, teacher), fix)
    name, num_classes = os.path.basename(path), data.num_classes

    def refuse(what, fix):
        raise TfkdError(f"cache {path}: {what}; {fix}")

    if attrs.get("num_classes") != num_classes:
        refuse(f"has {attrs.get('num_classes')} classes, the student {num_classes}", "use a matching cache")
    try:
        with h5py.File(path, "r") as f:
            labels, logits = f["labels"][...], f["logits"][...]
    except (OSError, KeyError) as e:
        refuse(f"cannot be read ({one_line(e, 80)})", "delete it and rerun 'tfkd cache'")
    if labels.shape != data.y_train.shape or not np.array_equal(labels, data.y_train):
        refuse("labels do not match the dataset's training labels", f"the cache {name} belongs to other data")
    if logits.shape[-2:] != (len(data.y_train), num_classes):
        refuse(f"logits have shape {logits.shape}", "rerun 'tfkd cache'")
    return logits, attrs


class CacheTeacher:
    """Teacher logits looked up by (epoch, sample index) from a cache resident on the device."""

    def __init__(self, logits, device):
        table = torch.from_numpy(logits).to(device)
        self.replay, self.n = table.dim() == 3, table.shape[-2]
        self.rows = table.view(-1, table.shape[-1])  # replay: row epoch * N + index

    def logits(self, epoch, index, x=None):
        """`epoch` is an int or a device tensor (as a captured step reads it); one gather either way."""
        return self.rows[index + epoch * self.n if self.replay else index].float()
