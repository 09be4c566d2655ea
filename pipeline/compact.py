"""Teacher logits in little space: a compact form of each row, and an HDF5 store read by sample index.

Why: a replay cache is [epochs, N, K] float16, 230 GB for ImageNet (90 x 1.28 M x 1000 x 2 B).
The compact form keeps each row's top-k logits (float16, relative to the row's max) and their
classes (int16), plus 1 + len(KNOTS) float32 numbers that rebuild the tail's share of the softmax
at any temperature: 4k + 16 bytes a row (k = 10: 56 B instead of 2,000 B at K = 1000).

The tail model. The n = K - k tail logits z give the tail's log share of the partition function
    f(b) = log sum_tail exp(b z) = log n + b mu + b^2 h(b),   b = 1/T,
where mu is their mean and h(0) = var/2 (the cumulant expansion). One tail mass (h = 0, a uniform
tail) is right only as T -> inf, and the log-normal match (h = var/2 for every b) overshoots at
T = 1, where the few largest tail logits dominate. So the form stores mu and h at each knot of b
and interpolates h linearly between them, constant beyond: b = 1 is a knot (T = 1 exact), b = 0
gives the high-T curvature. No tail logit exceeds the k-th, which caps f below T = 1.
BENCHMARKS.md measures the choice on a real teacher (tfkd bench-compact).

Rebuilt at T, the tail classes share the modelled tail mass equally: the top-k probabilities and
the tail's total are right up to the model's error in f; the split inside the tail is lost. That
split is what a high T's KD gradient needs most, and no per-row statistic can restore it.

The coded tail (bits = 1, 2, 4 or 8; cache_tail_bits) keeps that split: every class's logit is
quantized to `bits` between the tail's least and largest logit (then `tail` is [lo, hi]) and
packed 8 / bits to a byte, in class order; the top-k overwrite their own codes. Rebuilt, each tail
class sits at its bin's centre, the same logits at every T. It costs K bits / 8 more bytes a row
(k = 10, 4 bits at K = 1000: 548 B instead of 2,000) and, on the real teacher of BENCHMARKS.md,
brings the high-T gradient within ~9 % instead of ~100 %.
"""
import math
from typing import NamedTuple

import numpy as np
import torch

from .config import TAIL_BITS as BITS

FORM_VERSION = 1  # bump when the meaning of a stored compact row changes
KNOTS = (0.0, 0.25, 1.0)  # b = 1/T where h is stored: T = inf, 4, 1 (BENCHMARKS.md: tfkd bench-compact)


def parts(bits=0):
    """The compact form's datasets, in Compact's order."""
    return ("values", "index", "tail") + (("codes",) if bits else ())


class Compact(NamedTuple):
    """Rows of teacher logits in compact form; any leading shape ([B], [E, N], ...)."""
    values: torch.Tensor  # [..., k] the top-k logits minus the row's max, descending
    index: torch.Tensor   # [..., k] their classes (int16 when K <= 32767)
    tail: torch.Tensor    # [..., 1 + len(knots)] float32: the tail's mean, then h at each knot;
                          # coded (bits > 0): [..., 2], the least and largest tail logit
    num_classes: int
    knots: tuple = KNOTS
    codes: torch.Tensor = None  # bits > 0: [..., ceil(K * bits / 8)] uint8, every class's code
    bits: int = 0

    @property
    def tensors(self):
        return tuple(getattr(self, n) for n in parts(self.bits))

    def map(self, fn):
        """The same rows with `fn` applied to each of its tensors (move, flatten, gather)."""
        return self._replace(**{n: fn(getattr(self, n)) for n in parts(self.bits)})

    def to(self, device):
        return self.map(lambda t: t.to(device))


def index_dtype(num_classes):
    return torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32


def row_bytes(k, num_classes, bits=0, knots=KNOTS):
    """Bytes a compact row takes on disk."""
    return 4 * k + 4 * (2 if bits else 1 + len(knots)) + -(-num_classes * bits // 8)


def compress(logits, k, knots=KNOTS, dtype=torch.float16, bits=0):
    """The compact form of `logits` [..., K]: top-k values in `dtype`, their classes, the tail model
    (bits = 0) or every class's logit coded to `bits`. Shifting each row by its max changes no
    softmax, and puts float16's finest steps at the top."""
    z = logits.float()
    num_classes = z.shape[-1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k = {k} must be in 1..{num_classes}")
    if list(knots) != sorted(knots) or any(b < 0 for b in knots):
        raise ValueError(f"knots {knots} must be ascending and >= 0")
    if bits not in BITS:
        raise ValueError(f"bits = {bits} must be one of {BITS}")
    z = z - z.amax(-1, keepdim=True)
    shifted, (z, order) = z, z.sort(-1, descending=True)
    top, rest = z[..., :k], z[..., k:]
    if bits:
        return _coded(shifted, top, rest, order[..., :k], bits, dtype, tuple(knots))
    tail = z.new_zeros(z.shape[:-1] + (1 + len(knots),))
    if rest.shape[-1]:
        tail[..., 0] = mu = rest.mean(-1)
        centred = rest - mu[..., None]
        for j, b in enumerate(knots, 1):
            tail[..., j] = centred.square().mean(-1) / 2 if b == 0 else _log_mean_exp(b * centred) / b**2
    return Compact(top.to(dtype), order[..., :k].to(index_dtype(num_classes)), tail, num_classes, tuple(knots))


def _coded(z, top, rest, index, bits, dtype, knots):
    """Compact rows whose tail is every class's logit quantized to `bits` on [lo, hi] of its tail."""
    lo, hi = (rest.amin(-1), rest.amax(-1)) if rest.shape[-1] else (top[..., -1], top[..., -1])
    levels = 1 << bits
    width = (hi - lo).clamp(min=1e-12)[..., None]
    q = ((z - lo[..., None]) / width * levels).floor().clamp(0, levels - 1).to(torch.uint8)
    per = 8 // bits
    q = torch.nn.functional.pad(q, (0, -q.shape[-1] % per)).unflatten(-1, (-1, per))
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=q.device)
    codes = (q << shifts).sum(-1, dtype=torch.uint8)  # disjoint bits: the sum is their OR
    return Compact(top.to(dtype), index.to(index_dtype(z.shape[-1])), torch.stack([lo, hi], -1),
                   z.shape[-1], knots, codes, bits)


def _decoded(compact):
    """The coded rows' logits [..., K]: each class at its bin's centre on [lo, hi]."""
    bits, levels = compact.bits, 1 << compact.bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=compact.codes.device)
    q = ((compact.codes[..., None] >> shifts) & (levels - 1)).flatten(-2)[..., :compact.num_classes]
    lo, hi = compact.tail[..., :1], compact.tail[..., 1:2]
    return lo + (q.float() + 0.5) * ((hi - lo) / levels)


def _log_mean_exp(x):
    """log mean exp(x) over the last axis; centred inputs keep float32 exact where b is small."""
    return x.logsumexp(-1) - math.log(x.shape[-1])


def _weights(knots, b):
    """w such that h(b) = w . h(knots): linear between the knots, constant outside them. Python
    floats: rebuilding copies nothing to the device (so it can run inside a captured CUDA graph)."""
    return [float(np.interp(b, knots, e)) for e in np.eye(len(knots))]


def rebuild_logits(compact, temperature):
    """Logits [..., K] whose softmax at `temperature` is the compact form's teacher distribution:
    the top-k as stored, each tail class at the c for which n exp(c/T) is the modelled tail mass,
    i.e. c = T (f(1/T) - log n) = mu + T b^2 h, capped as the k-th value bounds f. Per row and T; the
    existing losses.Objective takes these as teacher logits unchanged. Coded rows: their decoded
    logits, the same at every T."""
    values = compact.values.float()
    if compact.bits:
        return _decoded(compact).scatter_(-1, compact.index.long(), values)
    b = 1.0 / temperature
    mu, h = compact.tail[..., 0], compact.tail[..., 1:]
    h_b = sum(w * h[..., j] for j, w in enumerate(_weights(compact.knots, b)) if w)
    # No tail logit exceeds the k-th, v_k, so f grows no faster than b v_k: beyond the last knot B,
    # f(b) <= f(B) + (b - B) v_k; anywhere, f(b) <= log n + b v_k (the fill stays below v_k).
    v_k, last = values[..., -1], max(compact.knots, default=0.0)
    cap = v_k - temperature * last * (v_k - mu - last * h[..., -1]) if b > last > 0 else v_k
    fill = torch.minimum(mu + temperature * b * b * h_b, cap)
    out = fill[..., None].expand(fill.shape + (compact.num_classes,)).clone()
    return out.scatter_(-1, compact.index.long(), values)
