"""Counter-based, batched augmentation on the training device.

Every random number is a pure function of (run key, epoch, sample index, stream): no RNG state
anywhere. So a sample's view does not depend on batch order, batch size or the number of ranks;
stage one can compute a teacher's logits for exactly the view a student will see (the replay
cache); and a whole training step can be captured in a CUDA graph.

The policy follows the reference's CIFAR transform: RandomCrop(32, padding=4) ->
RandomHorizontalFlip -> RandomRotation(15, nearest, fill 0) -> Normalize. All three geometric
steps are composed into one inverse map and applied as a single integer gather, so the uint8
pixels are never interpolated (as with PIL's nearest rotation).

Bump AUG_VERSION whenever any output changes; tests pin golden vectors of each version.
"""
import torch

from .config import AugmentSpec, _run_key as run_key  # noqa: F401 (the settings live in config.py)

AUG_VERSION = 1

# Streams keep the random numbers of different decisions independent.
ORDER, CROP_Y, CROP_X, FLIP, ANGLE = range(5)
STREAMS = 5
_MASK = 0xFFFFFFFF


def _mix(x):
    # A 32-bit integer hash on int64 tensors holding uint32 values: xorshift-multiply rounds in the
    # style of Chris Wellons' hash prospector (0x7FEB352D is its lowbias32 multiplier). seeds()
    # mixes in the 32-bit golden-ratio constant 0x9E3779B1 and xxHash32's prime 0x85EBCA77.
    # Multipliers stay below 2**31 so products never overflow int64: identical on CPU and GPU.
    for mult in (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39):
        x = x ^ (x >> 16)
        x = (x * mult) & _MASK
    return x ^ (x >> 16)


def seeds(key, epoch):
    """The five streams' 32-bit seeds of one epoch of run `key` (hashed once, in Python).

    Everything below takes these instead of (key, epoch): as Python ints in eager code, or as an
    int64 device tensor that a captured CUDA graph reads, so one graph serves every epoch.
    """
    return [_mix((int(key) ^ (int(epoch) * 0x9E3779B1) ^ (stream * 0x85EBCA77)) & _MASK)
            for stream in range(STREAMS)]


def uniform(seed, index):
    """U[0,1) float32 for each sample index (an int64 tensor): a pure function of seed and index."""
    h = _mix((index.to(torch.int64) & _MASK) ^ seed)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))  # 24 bits: exact in float32


def epoch_order(key, epoch, n, device="cpu"):
    """The epoch's sample order: a permutation that depends only on (key, epoch, n)."""
    idx = torch.arange(n, device=device)
    # Stable sort: the rare equal keys keep index order, the same on every device.
    return torch.sort(uniform(seeds(key, epoch)[ORDER], idx), stable=True).indices


def views(images, index, seeds, spec):
    """Augmented uint8 views [B,H,W,C] of images[index] (images: uint8 [N,H,W,C] on the device)
    in the epoch whose `seeds` are given (see seeds())."""
    src = images[index]
    b, h, w, c = src.shape
    dev = src.device
    rows = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    # Inverse of the rotation about the image centre: output pixel -> pixel of the flipped crop.
    if spec.rotate:
        theta = (uniform(seeds[ANGLE], index) * 2 - 1) * (spec.rotate * torch.pi / 180)
        cos, sin = torch.cos(theta).view(b, 1, 1), torch.sin(theta).view(b, 1, 1)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        dy, dx = rows - cy, cols - cx
        r = torch.round(cos * dy - sin * dx + cy).to(torch.int64)
        q = torch.round(sin * dy + cos * dx + cx).to(torch.int64)
    else:
        r = rows.to(torch.int64).expand(b, h, w)
        q = cols.to(torch.int64).expand(b, h, w)
    valid = (r >= 0) & (r < h) & (q >= 0) & (q < w)  # rotation fills with 0 outside the crop
    if spec.flip:
        flip = (uniform(seeds[FLIP], index) < 0.5).view(b, 1, 1)
        q = torch.where(flip, w - 1 - q, q)
    if spec.pad:
        span = 2 * spec.pad + 1
        oy = (uniform(seeds[CROP_Y], index) * span).to(torch.int64).view(b, 1, 1) - spec.pad
        ox = (uniform(seeds[CROP_X], index) * span).to(torch.int64).view(b, 1, 1) - spec.pad
        r, q = r + oy, q + ox
        valid &= (r >= 0) & (r < h) & (q >= 0) & (q < w)  # zero padding outside the image
    flat = (r.clamp(0, h - 1) * w + q.clamp(0, w - 1)).view(b, h * w, 1).expand(b, h * w, c)
    out = torch.gather(src.view(b, h * w, c), 1, flat).view(b, h, w, c)
    return out * valid.unsqueeze(-1).to(out.dtype)


def normalize(images, mean, std, channels_last=False):
    """uint8 [B,H,W,C] -> normalised float32 [B,C,H,W] (mean/std: float tensors of shape [C])."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
