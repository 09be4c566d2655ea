"""Stage one's output: a teacher's per-sample logits in HDF5, indexed by dataset sample index.

    logits   clean: [N, K]; replay: [E, N, K]   float16, chunked by rows
    labels   [N] int64                          the training labels, to check alignment
    attrs    see ATTRS: what makes a wrong pairing impossible to miss

A compact cache (compact_k = k > 0; compact.py) holds, instead of `logits`, each row's top-k as
`values` [..., k] float16, `index` [..., k] int16 and `tail` [..., 4] float32: 4k + 16 bytes a
row, what a 90-epoch replay cache of ImageNet needs (56 B instead of 2,000 B a row at k = 10).
With compact_bits = b > 0, `tail` is [..., 2] and `codes` [..., K b / 8] uint8 keeps every class's
logit to b bits (the split of the tail that high-T KD needs; compact.py).
Chunks are a few KB of rows, so a batch of random sample indices reads about its own rows:
a streamed run (imagefolder.py) reads each step's rows, never the whole file (Rows).

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

from . import __version__, augment, capture, compact, distributed
from .errors import TfkdError, one_line
from .files import atomic_path
from .precision import PrecisionPolicy
from .version import RESULTS_VERSION

SCHEMA_VERSION = 2  # 2: the named-module zoo (results version 2); older caches are refused
ATTRS = ("schema_version", "dataset", "dataset_fingerprint", "num_classes", "num_samples",
         "teacher_model", "teacher_width", "checkpoint_path", "checkpoint_sha256", "checkpoint_epoch",
         "checkpoint_choice", "teacher_test_acc", "view_policy", "aug_version", "aug_spec",
         "run_key", "epochs", "seed", "params", "package_version", "teacher_digest", "results_version",
         "compact_k", "compact_knots", "compact_version", "compact_bits")
ABSENT = {"compact_k": 0, "compact_bits": 0}  # what a cache written before an attribute existed holds
CHUNK_BYTES = 16 << 10   # bytes of rows per HDF5 chunk: a random row costs one such read
INFER_BATCH = 1024       # teacher inference batch: no gradients, so far larger than a training batch
MIN_COMPILED_EPOCHS = 3  # fewer replay passes than this: compiling costs more than it saves
LOG_EVERY = 10           # log a replay cache's progress about this many times


@torch.no_grad()
def _logit_blocks(model, ddata, policy, run_key, epochs, spec, batch_size, graph=False, compile=False):
    """(epoch, 0, [N, K] float16 tensor) for each block of the cache, on every rank. Under torchrun each
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
        host = world.gather_rows(rows, n).to("cpu", copy=True)  # waits for this epoch's pass
        if epoch + 1 < count:
            launch(epoch + 1)  # the device computes the next epoch while the caller writes this one
        yield epoch, 0, host


@torch.no_grad()
def _streamed_blocks(model, sdata, policy, run_key, epochs, batch_size):
    """(epoch, first sample, [B, K] float16 tensor) for each global batch of a streamed dataset
    (imagefolder.FolderData), in sample order, on every rank: each rank runs its share."""
    world, net = distributed.current(), PrecisionPolicy(model)
    for epoch in range(epochs if policy == "replay" else 1):
        for start, stop, x in sdata.cache_batches(policy, run_key, epoch, batch_size, world):
            yield epoch, start, world.gather_rows(net(x).to(torch.float16), stop - start).cpu()


def chunk_rows(row_bytes, num_samples, chunk_bytes=CHUNK_BYTES):
    """Rows per chunk: about `chunk_bytes` of them. HDF5 reads whole chunks, so a random batch of B rows
    costs B chunks; small chunks keep that near B rows, large ones keep the chunk index short."""
    return int(min(max(1, chunk_bytes // row_bytes), num_samples))


def _layout(k, num_classes, bits=0):
    """{dataset: (row width, numpy dtype)}: full rows (k = 0) or compact.Compact's parts."""
    if k == 0:
        return {"logits": (num_classes, np.dtype(np.float16))}
    index = torch.empty(0, dtype=compact.index_dtype(num_classes)).numpy().dtype
    layout = {"values": (k, np.dtype(np.float16)), "index": (k, index),
              "tail": (2 if bits else 1 + len(compact.KNOTS), np.dtype(np.float32))}
    if bits:
        layout["codes"] = (-(-num_classes * bits // 8), np.dtype(np.uint8))
    return layout


def write(path, model, ddata, policy, attrs, run_key=0, epochs=1, spec=None, batch_size=INFER_BATCH, log=print,
          graph=None, compile=None, compact_k=0, compact_bits=0):
    """Run `model` (eval mode) over the training set and write the cache atomically (rank 0).

    clean: one un-augmented view per sample; replay: the student's views of epochs 0..epochs-1.
    compact_k > 0: each row in compact form (its top-k and a tail model, or with compact_bits > 0
    every logit coded to that many bits; compact.py).
    `graph` / `compile`: the fast path of capture.py (None: on for one CUDA device; never when streamed).
    """
    model.eval()
    world = distributed.current()
    data = ddata.data
    n, k = len(data.y_train), data.num_classes
    if not 0 <= compact_k <= k:
        raise TfkdError(f"cache_topk {compact_k} must be in 0..{k} (the classes); 0 keeps full rows")
    if compact_bits not in compact.BITS or (compact_bits and not compact_k):
        raise TfkdError(f"cache_tail_bits {compact_bits} must be one of {compact.BITS[1:]} with cache_topk > 0, or 0")
    if ddata.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if getattr(ddata, "streamed", False):
        blocks = _streamed_blocks(model, ddata, policy, run_key, epochs, batch_size)  # its views: sdata.spec
    else:
        if compile is None and (policy == "clean" or epochs < MIN_COMPILED_EPOCHS):
            compile = False  # (a single pass is never captured either)
        graph, compile = capture.fast_path(ddata.device, world.size, graph, compile)
        blocks = _logit_blocks(model, ddata, policy, run_key, epochs, spec, batch_size, graph, compile)
    if not world.is_main:
        for _ in blocks:
            pass
        world.barrier()
        return path
    lead = (n,) if policy == "clean" else (epochs, n)
    layout = _layout(compact_k, k, compact_bits)
    row_bytes = sum(w * d.itemsize for w, d in layout.values())
    rows = chunk_rows(row_bytes, n)
    attrs = dict(attrs, schema_version=SCHEMA_VERSION, dataset=data.name,
                 dataset_fingerprint=data.fingerprint, num_classes=k, num_samples=n,
                 view_policy=policy, aug_version=augment.AUG_VERSION,
                 aug_spec=json.dumps(vars(spec) if spec else {}, sort_keys=True),
                 run_key=int(run_key), epochs=int(epochs if policy == "replay" else 0),
                 package_version=__version__, results_version=RESULTS_VERSION, compact_k=int(compact_k),
                 compact_bits=int(compact_bits))
    if compact_k:
        attrs.update(compact_knots=np.array(compact.KNOTS), compact_version=compact.FORM_VERSION)
    with atomic_path(path, need=row_bytes * int(np.prod(lead)) + 8 * n) as tmp:  # h5py may crash on a full disk
        with h5py.File(tmp, "w") as f:
            f.create_dataset("labels", data=data.y_train.astype(np.int64), track_times=False)
            sets = {name: f.create_dataset(name, shape=lead + (w,), dtype=d, chunks=(1,) * (len(lead) - 1) + (rows, w),
                                           track_times=False) for name, (w, d) in layout.items()}
            logged = -1
            for epoch, start, block in blocks:
                parts = ({"logits": block} if not compact_k else
                         dict(zip(compact.parts(compact_bits), compact.compress(block, compact_k, bits=compact_bits).tensors)))
                where = (slice(start, start + len(block)),) if policy == "clean" else (epoch, slice(start, start + len(block)))
                for name, ds in sets.items():
                    ds[where] = parts[name].numpy()
                if policy == "replay" and start + len(block) == n and epoch != logged:
                    logged = epoch
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
            return {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if hasattr(v, "item") else v)
                    for k, v in f.attrs.items()}
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
    "compact_k": lambda old, new: f"with cache_topk {old}, the run wants {new}",
    "compact_bits": lambda old, new: f"with cache_tail_bits {old}, the run wants {new}",
}


def expected(data, policy, run_key=None, epochs=None, spec=None, teacher=None, compact_k=0, compact_bits=0):
    """The attributes a cache must have to serve a run, in the order they are checked: the format,
    the code's results version, the data, the views (replay: the run key, its epochs and its
    augmentation) and `teacher` (checkpoint_sha256: the teacher file's content, teacher_digest:
    the teacher run's digest), where given."""
    want = {"schema_version": SCHEMA_VERSION, "results_version": RESULTS_VERSION,
            "dataset_fingerprint": data.fingerprint, "view_policy": policy, "compact_k": int(compact_k),
            "compact_bits": int(compact_bits)}
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
        old = attrs.get(key, ABSENT.get(key))
        if not (old == new or (key == "epochs" and old is not None and old >= new)):
            raise TfkdError(f"{path} was made {_DIFFERS[key](old, new)}; {fix}")
    return attrs


def load(path, data, policy, run_key=None, epochs=None, spec=None, teacher=None, compact_k=0, compact_bits=0,
         fix="rerun 'tfkd cache'", resident=True):
    """(rows, attrs) of the cache after checking it belongs with this dataset and run (check();
    `teacher` as in expected()). rows: resident, the whole table (float16 logits, or a
    compact.Compact of its parts); else a Rows reader of batches by sample index."""
    attrs = check(path, expected(data, policy, run_key, epochs, spec, teacher, compact_k, compact_bits), fix)
    name, num_classes = os.path.basename(path), data.num_classes

    def refuse(what, fix):
        raise TfkdError(f"cache {path}: {what}; {fix}")

    if attrs.get("num_classes") != num_classes:
        refuse(f"has {attrs.get('num_classes')} classes, the student {num_classes}", "use a matching cache")
    names = _names(attrs)
    if compact_k and attrs.get("compact_version") != compact.FORM_VERSION:
        refuse(f"holds compact rows of form version {attrs.get('compact_version')}, this is {compact.FORM_VERSION}",
               "rerun 'tfkd cache'")
    try:
        with h5py.File(path, "r") as f:
            labels, shapes = f["labels"][...], [f[n].shape[:-1] for n in names]
            table = [f[n][...] for n in names] if resident else None
    except (OSError, KeyError) as e:
        refuse(f"cannot be read ({one_line(e, 80)})", "delete it and rerun 'tfkd cache'")
    if labels.shape != data.y_train.shape or not np.array_equal(labels, data.y_train):
        refuse("labels do not match the dataset's training labels", f"the cache {name} belongs to other data")
    if any(shape[-1:] != (len(data.y_train),) for shape in shapes):
        refuse(f"rows have shape {shapes[0]}", "rerun 'tfkd cache'")
    if not resident:
        return Rows(path, attrs), attrs
    return _table(table, attrs), attrs


def _names(attrs):
    """The datasets a cache's rows are in."""
    return ("logits",) if not attrs.get("compact_k") else compact.parts(attrs.get("compact_bits", 0))


def _table(parts, attrs):
    """Arrays read from a cache as what teachers look rows up in: a float16 tensor or a Compact."""
    parts = [torch.from_numpy(np.ascontiguousarray(a)) for a in parts]
    if len(parts) == 1:
        return parts[0]
    bits = int(attrs.get("compact_bits", 0))
    return compact.Compact(*parts[:3], int(attrs["num_classes"]), tuple(float(b) for b in attrs["compact_knots"]),
                           parts[3] if bits else None, bits)


class Rows:
    """A cache's rows read by sample index, a batch at a time (a streamed run: never the whole file)."""

    def __init__(self, path, attrs):
        self.path, self.attrs, self.file = path, attrs, None
        self.names = _names(attrs)

    def read(self, index, epoch=0):
        """The rows of samples `index` (any order, repeats allowed) in `epoch`, on the CPU."""
        if self.file is None:  # opened on first use: each rank (and each forked worker) its own handle
            self.file = h5py.File(self.path, "r")
        index = np.asarray(index.cpu() if torch.is_tensor(index) else index, dtype=np.int64)
        # Sorted and unique: each chunk is visited once, in file order; one read per row is faster
        # than h5py's fancy selection of the same rows on 1000-class rows.
        unique, inverse = np.unique(index, return_inverse=True)
        lead = (int(epoch),) if self.attrs.get("epochs") else ()
        try:
            parts = [np.stack([self.file[n][lead + (i,)] for i in unique.tolist()])[inverse] for n in self.names]
        except OSError as e:
            raise TfkdError(f"cache {self.path} cannot be read ({one_line(e, 80)}): delete it and rerun "
                            f"'tfkd cache'") from None
        return _table(parts, self.attrs)


def _logits(rows, temperature):
    """Teacher logits [B, K] float32 from looked-up rows: as stored, or rebuilt from compact rows so
    that their softmax at the student's `temperature` is the compact form's (compact.py)."""
    if isinstance(rows, compact.Compact):
        return compact.rebuild_logits(rows, temperature)
    return rows.float()


class CacheTeacher:
    """Teacher logits looked up by (epoch, sample index) in a cache resident on the device."""

    def __init__(self, table, device, temperature=1.0):
        self.temperature = temperature
        if isinstance(table, compact.Compact):
            self.replay, self.n = table.values.dim() == 3, table.values.shape[-2]
            self.rows = table.map(lambda t: t.to(device).flatten(0, -2))
        else:
            table = torch.as_tensor(table).to(device)  # a numpy table too (bench.py, tests)
            self.replay, self.n = table.dim() == 3, table.shape[-2]
            self.rows = table.view(-1, table.shape[-1])  # replay: row epoch * N + index

    def logits(self, epoch, index, x=None):
        """`epoch` is an int or a device tensor (as a captured step reads it); one gather either way."""
        at = index + epoch * self.n if self.replay else index
        if isinstance(self.rows, compact.Compact):
            return _logits(self.rows.map(lambda t: t[at]), self.temperature)
        return self.rows[at].float()


class StreamTeacher:
    """Teacher logits read from the cache file each step: only this rank's samples (Rows)."""

    def __init__(self, rows, device, temperature=1.0):
        self.rows, self.device, self.temperature = rows, device, temperature

    def logits(self, epoch, index, x=None):
        return _logits(self.rows.read(index, int(epoch)).to(self.device), self.temperature)
