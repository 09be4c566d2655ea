"""Data parallelism with PyTorch's own engine: every stage runs unchanged under torchrun.

    torchrun --nproc_per_node N -m pipeline train base_resnet18

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op and the
single-process path is untouched. Backend: NCCL on GPU (one device per rank: cuda:LOCAL_RANK),
gloo on CPU.

What a rank does: the global batch (params `batch_size`) is cut into contiguous per-rank shards of
every step's slice of the epoch order, so across the ranks a step covers exactly the samples a
single process would take, with the very same augmented views (augment.py is a function of
seed, epoch and sample index). Each rank's loss is weighted so that DDP's gradient average is the
mean over the global batch, also when the last batch does not split evenly. Step size stays
lr * batch_size / 128 of the global batch (config.RunConfig.step_lr). Only rank 0 writes files.
"""
import os

import torch
import torch.distributed as dist

from .device import pick_device
from .errors import TfkdError


class World:
    """This process's place among the ranks (rank 0 of 1 when not launched by torchrun)."""

    def __init__(self, rank=0, size=1):
        self.rank, self.size = rank, size

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1

    def quiet(self, log):
        """`log` on rank 0, silence elsewhere: one progress line per event, not one per rank."""
        return log if self.is_main else (lambda *args, **kwargs: None)

    def shard(self, items):
        """This rank's contiguous part of `items` (sizes differ by at most one across ranks)."""
        n = len(items)
        lo, hi = self.rank * n // self.size, (self.rank + 1) * n // self.size
        return items[lo:hi]

    def sum(self, tensor):
        """The element-wise sum over ranks (in place, returned)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def on_main(self, fn):
        """Run `fn` on rank 0 only and hand its result (or its TfkdError) to every rank, so that
        decisions that read files (resume? reuse?) are taken once and taken alike."""
        if not self.distributed:
            return fn()
        box = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except TfkdError as e:
                box[0] = ("error", str(e))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise TfkdError(value)
        return value

    def gather_rows(self, rows, n):
        """Concatenate every rank's `shard(range(n))` rows into the full [n, ...] tensor, in
        sample order, on every rank (shards are padded to one size for all_gather)."""
        if not self.distributed:
            return rows
        sizes = [len(World(r, self.size).shard(range(n))) for r in range(self.size)]
        padded = rows.new_zeros((max(sizes),) + tuple(rows.shape[1:]))
        padded[:len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def sync_buffers(self, model):
        """Rank 0's buffers (BatchNorm running statistics) on every rank: without SyncBatchNorm
        each rank's last forward updated its own copy."""
        if self.distributed:
            for buf in model.buffers():
                dist.broadcast(buf, src=0)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def wrap(self, module, device):
        """DistributedDataParallel around `module` when there are several ranks."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       gradient_as_bucket_view=True)


_WORLD = World()


def current():
    return _WORLD


def init(device_name="auto"):
    """Join the process group torchrun describes (if any); returns the device this rank uses."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name.startswith("cuda:"):
        raise TfkdError(f"--device {device_name}: under torchrun each rank takes cuda:LOCAL_RANK; "
                        f"pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    want_cuda = pick_device(device_name).type == "cuda"
    if want_cuda:
        if local_rank >= torch.cuda.device_count():
            raise TfkdError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                            f"GPUs are visible; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=size,
                                device_id=device if want_cuda else None)
    _WORLD = World(rank, size)
    return device


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
