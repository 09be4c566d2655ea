"""Model zoo: each model is the reference code's network by name (its state_dict keys, shapes and
order are the reference's, from the lists in tests/fixtures/reference_models/), computes the
reference's function (DenseNet121 and GoogLeNet re-derived from the reference's description with
torch.nn.functional), keeps the reference's initialisation, and still builds at any width, class
count, channel count and input size."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import TfkdError
from pipeline.models import MODELS, build_model, model_names, register

FIXTURES = Path(__file__).parent / "fixtures" / "reference_models"
NAMES = sorted(p.name.removesuffix(".keys.tsv") for p in FIXTURES.glob("*.keys.tsv"))
TINY = 0.125


def reference_entries(name):
    """[(key, shape, dtype)] of the reference model's state_dict at 100 classes, in order."""
    rows = [line.split("\t") for line in (FIXTURES / f"{name}.keys.tsv").read_text().splitlines()[2:] if line]
    return [(k, () if s == "scalar" else tuple(int(d) for d in s.split("x")), dtype) for k, s, dtype in rows]


def reference_param_count(name):
    header = (FIXTURES / f"{name}.keys.tsv").read_text().splitlines()[0]  # "... N parameters"
    return int(header.split(",")[-1].split()[0])


def entries(model):
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_has_exactly_the_reference_models():
    assert len(NAMES) == 7 and model_names() == NAMES and set(MODELS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_the_reference_one(name):
    model = build_model(name, num_classes=100)
    assert entries(model) == reference_entries(name)  # same keys, shapes, dtypes, order
    assert n_params(model) == reference_param_count(name)


@pytest.mark.parametrize("name", NAMES)
def test_models_have_named_children_and_a_named_classifier(name):
    model = build_model(name, num_classes=9, width=TINY).eval()
    assert not isinstance(model, torch.nn.Sequential)
    head = getattr(model, model.classifier_name)
    assert head.weight.shape[0] == 9 and list(model.state_dict())[-1] == f"{model.classifier_name}.bias"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_head(model.forward_features(x)), model(x))


@pytest.mark.parametrize("in_channels,size", [(3, 32), (3, 64), (1, 28)])  # CIFAR, Tiny-ImageNet, MNIST
@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name, in_channels, size):
    model = build_model(name, num_classes=7, in_channels=in_channels, width=TINY)
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_trains(name):
    model = build_model(name, num_classes=10, width=TINY)
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_width_multiplier_reduces_params(name):
    counts = [n_params(build_model(name, num_classes=10, width=w)) for w in (0.125, 0.25, 0.5)]
    assert counts == sorted(set(counts)), counts  # strictly increasing with width


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, width=TINY).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no dropout / BN batch statistics in eval mode


def randomised(model, seed=0):
    """`model` with random weights and BN statistics, so that every layer's function shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, v in model.state_dict().items():
            if key.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif v.is_floating_point():
                v.copy_(torch.randn(v.shape, generator=g) * 0.2 + (1.0 if key.endswith(".weight") and v.dim() == 1 else 0.0))
    return model


def bn(x, sd, prefix, training, eps=1e-5):
    return F.batch_norm(x, sd[prefix + "running_mean"].clone(), sd[prefix + "running_var"].clone(),
                        sd[prefix + "weight"], sd[prefix + "bias"], training, 0.1, eps)


def densenet_by_hand(sd, x, training):
    """DenseNet121 as the reference describes it: a dense layer returns cat([x, new]); a transition
    is BN -> 1x1 conv -> 2x2 average pool with no ReLU; then BN -> ReLU -> pool -> linear."""
    x = F.conv2d(x, sd["conv1.weight"], padding=1)
    blocks = sorted({k.split(".")[1] for k in sd if k.startswith("features.") and "dense_block" in k},
                    key=lambda b: int(b[-1]))
    for i, block in enumerate(blocks):
        layers = sorted({k.split(".")[2] for k in sd if k.startswith(f"features.{block}.")}, key=lambda s: int(s.split("_")[-1]))
        for layer in layers:
            p = f"features.{block}.{layer}.bottle_neck."
            y = F.conv2d(F.relu(bn(x, sd, p + "0.", training)), sd[p + "2.weight"])
            y = F.conv2d(F.relu(bn(y, sd, p + "3.", training)), sd[p + "5.weight"], padding=1)
            x = torch.cat([x, y], 1)
        if i < len(blocks) - 1:
            p = f"features.transition_layer_{i}.down_sample."
            x = F.avg_pool2d(F.conv2d(bn(x, sd, p + "0.", training), sd[p + "1.weight"]), 2)
    x = F.adaptive_avg_pool2d(F.relu(bn(x, sd, "features.bn.", training)), 1).flatten(1)
    return F.linear(x, sd["linear.weight"], sd["linear.bias"])


def resnet_by_hand(sd, x, training):
    """kuangliu's CIFAR ResNet: relu(bn(conv)) stem; each block relu(main + shortcut); pool; linear."""
    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1.", training))
    blocks = sorted({tuple(k.split(".")[:2]) for k in sd if k.startswith("layer")})
    for layer, i in blocks:
        p = f"{layer}.{i}."
        convs = sorted({k.split(".")[2] for k in sd if k.startswith(p + "conv")})
        y, down = x, layer != "layer1" and i == "0"
        for j, conv in enumerate(convs):
            w = sd[f"{p}{conv}.weight"]
            stride = 2 if down and w.shape[-1] == 3 else 1  # the block's first 3x3 conv downsamples
            down = down and stride == 1
            y = bn(F.conv2d(y, w, stride=stride, padding=w.shape[-1] // 2), sd, f"{p}bn{conv[-1]}.", training)
            y = F.relu(y) if j < len(convs) - 1 else y
        short = x
        if p + "shortcut.0.weight" in sd:
            stride = 2 if layer != "layer1" else 1
            short = bn(F.conv2d(x, sd[p + "shortcut.0.weight"], stride=stride), sd, p + "shortcut.1.", training)
        x = F.relu(y + short)
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd["linear.weight"], sd["linear.bias"])


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets_are_the_reference_function(name, training):
    model = randomised(build_model(name, num_classes=10, width=TINY)).train(training)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnet_by_hand(sd, x, training), rtol=1e-4, atol=1e-4)


# The reference's BatchNorm2d(C, C) in each block's "5x5" branch: eps = C (reference-models README).
GOOGLENET_EPS = {"a3": 32, "b3": 96, "a4": 48, "b4": 64, "c4": 64, "d4": 64, "e4": 128, "a5": 128, "b5": 128}


def googlenet_by_hand(sd, x, training, eps_of):
    def cbr(x, p, i, pad, eps=1e-5):  # conv (with bias) -> BN -> ReLU, modules i, i+1, i+2 of a Sequential
        x = F.conv2d(x, sd[f"{p}{i}.weight"], sd[f"{p}{i}.bias"], padding=pad)
        return F.relu(bn(x, sd, f"{p}{i + 1}.", training, eps))

    x = cbr(x, "prelayer.", 0, 1)
    for name in GOOGLENET_EPS:
        b1 = cbr(x, f"{name}.b1.", 0, 0)
        b2 = cbr(cbr(x, f"{name}.b2.", 0, 0), f"{name}.b2.", 3, 1)
        b3 = cbr(cbr(cbr(x, f"{name}.b3.", 0, 0), f"{name}.b3.", 3, 1, eps=eps_of(name)), f"{name}.b3.", 6, 1)
        b4 = cbr(F.max_pool2d(x, 3, 1, 1), f"{name}.b4.", 1, 0)
        x = torch.cat([b1, b2, b3, b4], 1)
        if name in ("b3", "e4"):
            x = F.max_pool2d(x, 3, 2, 1)
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # dropout: the tests compare in eval mode or with p = 0
    return F.linear(x, sd["linear.weight"], sd["linear.bias"])


@pytest.mark.parametrize("training", [False, True])
def test_densenet121_is_the_reference_function(training):
    model = randomised(build_model("densenet121", num_classes=10, width=TINY)).train(training)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), densenet_by_hand(sd, x, training), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_googlenet_is_the_reference_function_eps_quirk_included(training):
    model = build_model("googlenet", num_classes=10, width=1.0)
    eps = {name: getattr(model, name).b3[4].eps for name in GOOGLENET_EPS}
    assert eps == {name: float(c) for name, c in GOOGLENET_EPS.items()}  # the paper's network at width 1
    model = randomised(build_model("googlenet", num_classes=10, width=TINY)).train(training)
    model.dropout.p = 0.0  # Dropout2d draws its own random mask; the rest is compared exactly
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # at another width the quirk's eps is the layer's own channel count
        expected = googlenet_by_hand(sd, x, training, lambda name: float(getattr(model, name).b3[3].out_channels))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_googlenet_dropout_is_dropout2d_before_the_linear_layer():
    model = build_model("googlenet", num_classes=10, width=TINY)
    assert isinstance(model.dropout, torch.nn.Dropout2d) and model.dropout.p == 0.4


def test_resnext29_initialisation_is_the_reference_one():
    torch.manual_seed(0)
    model = build_model("resnext29", num_classes=100, width=0.5)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):  # Kaiming normal, fan_out
            fan_out = m.weight.shape[0] * m.kernel_size[0] * m.kernel_size[1]
            assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15), name
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
    head = model.classifier  # Kaiming normal, fan_in; bias 0
    assert head.weight.std().item() == pytest.approx(math.sqrt(2 / head.in_features), rel=0.05)
    assert torch.all(head.bias == 0)


def test_unknown_model_lists_known_names():
    with pytest.raises(TfkdError) as info:
        build_model("resnt18", num_classes=10)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown model 'resnt18'; known models: ")
    assert message.endswith(", ".join(NAMES))


@pytest.mark.parametrize("width", [0, -0.5, math.nan])
def test_invalid_width_is_rejected(width):
    with pytest.raises(TfkdError, match="width"):
        build_model("resnet18", num_classes=10, width=width)


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError):
        register("resnet18")(lambda **kwargs: None)
