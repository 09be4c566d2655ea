"""Model zoo: reference parameter counts, shapes across datasets, width multiplier, registry errors."""
import math

import pytest
import torch

from pipeline.errors import TfkdError
from pipeline.models import MODELS, build_model, model_names, register

# Parameter counts of the reference CIFAR models (Yuan et al., CVPR 2020) at 100 classes, width 1.
REFERENCE_PARAMS = {
    "resnet18": 11.22e6, "resnet50": 23.71e6, "mobilenetv2": 2.37e6, "shufflenetv2": 1.36e6,
    "googlenet": 6.26e6, "densenet121": 7.05e6, "resnext29": 34.52e6,
}
TINY = 0.125


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_has_exactly_the_reference_models():
    assert model_names() == sorted(REFERENCE_PARAMS)
    assert set(MODELS) == set(REFERENCE_PARAMS)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_param_count_matches_reference(name):
    got = n_params(build_model(name, num_classes=100, in_channels=3, width=1.0))
    expected = REFERENCE_PARAMS[name]
    assert abs(got - expected) / expected < 0.01, f"{name}: {got} params, reference {expected:.0f}"


@pytest.mark.parametrize("in_channels,size", [(3, 32), (3, 64), (1, 28)])  # CIFAR, Tiny-ImageNet, MNIST
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_output_shape(name, in_channels, size):
    model = build_model(name, num_classes=7, in_channels=in_channels, image_size=size, width=TINY)
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_tiny_model_trains(name):
    model = build_model(name, num_classes=10, width=TINY)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_width_multiplier_reduces_params(name):
    counts = [n_params(build_model(name, num_classes=10, width=w)) for w in (0.125, 0.25, 0.5)]
    assert counts == sorted(set(counts)), counts  # strictly increasing with width


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_eval_mode_is_deterministic(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, width=TINY).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no dropout / BN batch statistics in eval mode


def test_unknown_model_lists_known_names():
    with pytest.raises(TfkdError) as info:
        build_model("resnt18", num_classes=10)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown model 'resnt18'; known models: ")
    assert message.endswith(", ".join(sorted(REFERENCE_PARAMS)))


@pytest.mark.parametrize("width", [0, -0.5, math.nan])
def test_invalid_width_is_rejected(width):
    with pytest.raises(TfkdError, match="width"):
        build_model("resnet18", num_classes=10, width=width)


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError):
        register("resnet18")(lambda **kwargs: None)
