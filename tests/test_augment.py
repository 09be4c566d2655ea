"""The counter-based augmentation: pure functions of (run key, epoch, sample index), pinned by goldens."""
import hashlib

import numpy as np
import pytest
import torch

from pipeline import augment
from pipeline.augment import AugmentSpec, epoch_order, run_key, seeds, uniform


def views(x, index, key, epoch, spec):
    return augment.views(x, index, seeds(key, epoch), spec)

SPEC = AugmentSpec(pad=4, flip=True, rotate=15.0)


def images(n=64, size=32, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, c), generator=g, dtype=torch.uint8)


def pattern(n):
    """Images that depend on no RNG implementation."""
    i, r, c, ch = torch.meshgrid(torch.arange(n), torch.arange(32), torch.arange(32), torch.arange(3), indexing="ij")
    return ((i * 37 + r * 11 + c * 7 + ch * 3 + r * c) % 256).to(torch.uint8)


def test_golden_vectors_aug_version_1():
    # Changing any of these numbers changes every view: bump AUG_VERSION and re-pin.
    assert augment.AUG_VERSION == 1
    u = uniform(seeds(12345, 3)[augment.ANGLE], torch.arange(4))
    assert u.tolist() == pytest.approx(GOLDEN_UNIFORM, abs=0)
    assert epoch_order(12345, 0, 10).tolist() == GOLDEN_ORDER
    x = pattern(8)
    v = views(x, torch.arange(8), 12345, 2, SPEC)
    assert hashlib.sha256(v.numpy().tobytes()).hexdigest() == GOLDEN_VIEWS_SHA256
    assert run_key(230, "train/base_resnet18") == GOLDEN_KEY


GOLDEN_UNIFORM = [0.4361116290092468, 0.2109358310699463, 0.542529284954071, 0.7186319231987]
GOLDEN_ORDER = [4, 0, 2, 8, 7, 1, 6, 9, 5, 3]
GOLDEN_VIEWS_SHA256 = "3414f61d1f8375be51c31b36ef90c7401e0e051ac2d7c6d94bfcdbf2aaa8b560"
GOLDEN_KEY = 997252989


def test_views_do_not_depend_on_batch_composition_or_order():
    x = images(64)
    idx = torch.arange(64)
    whole = views(x, idx, 7, 5, SPEC)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = views(x, perm, 7, 5, SPEC)
    assert torch.equal(shuffled, whole[perm])
    parts = torch.cat([views(x, idx[i:i + 5], 7, 5, SPEC) for i in range(0, 64, 5)])
    assert torch.equal(parts, whole)


def test_views_change_with_epoch_and_key_but_repeat_exactly():
    x = images(32)
    idx = torch.arange(32)
    a = views(x, idx, 7, 1, SPEC)
    assert torch.equal(a, views(x, idx, 7, 1, SPEC))
    assert not torch.equal(a, views(x, idx, 7, 2, SPEC))
    assert not torch.equal(a, views(x, idx, 8, 1, SPEC))


def test_crop_and_flip_match_a_padded_crop_done_by_hand():
    x = images(16)
    idx = torch.arange(16)
    spec = AugmentSpec(pad=4, flip=True, rotate=0.0)
    got = views(x, idx, 99, 0, spec)
    oy = (uniform(seeds(99, 0)[augment.CROP_Y], idx) * 9).long()
    ox = (uniform(seeds(99, 0)[augment.CROP_X], idx) * 9).long()
    flip = uniform(seeds(99, 0)[augment.FLIP], idx) < 0.5
    padded = np.pad(x.numpy(), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(16):
        want = padded[i, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        if flip[i]:
            want = want[:, ::-1]
        assert np.array_equal(got[i].numpy(), want)
    assert 0 < flip.float().mean() < 1


def test_no_augmentation_is_the_identity_and_rotation_keeps_the_centre():
    x = images(4)
    idx = torch.arange(4)
    assert torch.equal(views(x, idx, 1, 0, AugmentSpec(0, False, 0.0)), x)
    rot = views(x, idx, 1, 0, AugmentSpec(0, False, 15.0))
    assert not torch.equal(rot, x)
    # the central pixel is a fixed point of a rotation about the centre (odd size: exact centre)
    x33 = images(4, size=33)
    r33 = views(x33, idx, 1, 0, AugmentSpec(0, False, 15.0))
    assert torch.equal(r33[:, 16, 16], x33[:, 16, 16])


def test_epoch_order_is_a_permutation_that_changes_per_epoch():
    a, b = epoch_order(5, 0, 1000), epoch_order(5, 1, 1000)
    assert sorted(a.tolist()) == list(range(1000))
    assert not torch.equal(a, b)
    assert torch.equal(a, epoch_order(5, 0, 1000))


def test_run_key_depends_on_seed_and_identity():
    keys = {run_key(s, i) for s in (230, 231) for i in ("train/base_resnet18", "distill/self_resnet18")}
    assert len(keys) == 4


def test_uniform_is_roughly_uniform():
    u = uniform(seeds(3, 0)[augment.FLIP], torch.arange(100000))
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    hist = torch.histc(u, bins=10, min=0, max=1) / len(u)
    assert (hist - 0.1).abs().max() < 0.01


def test_normalize_layout_and_values():
    x = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.5, 1.0])
    out = augment.normalize(x, mean, std)
    assert out.shape == (2, 3, 4, 4)
    assert out[0, :, 0, 0].tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_seeds_as_a_device_tensor_give_the_same_views():
    # A captured CUDA graph reads the epoch's seeds from a tensor: the views must not change.
    x, idx = pattern(16), torch.arange(16)
    s = seeds(12345, 2)
    assert torch.equal(augment.views(x, idx, torch.tensor(s), SPEC), augment.views(x, idx, s, SPEC))
    assert all(0 <= v < 2 ** 32 for v in s) and len(set(s)) == augment.STREAMS
