"""torchvision's ImageNet networks by name (models/imagenet.py): each is torchvision's own module
(state_dict, parameter count, initialisation, forward) with the zoo's features/head split, and a
torchvision weights file loads through checkpoint.py as a teacher, or is refused in one line.
Keys and shapes are compared on the meta device (no memory, no init); forwards run at 64x64, batch 2,
on one network of each torchvision class (ResNet, DenseNet, MobileNetV2): the big ones are ResNets."""
import math
import re
import subprocess
import sys

import pytest
import torch
import torchvision.models

from pipeline import checkpoint
from pipeline.errors import TfkdError
from pipeline.models import MODELS, TORCHVISION, build_model, model_names
from pipeline.precision import PrecisionPolicy
from conftest import ROOT
from test_checkpoints import reference_checkpoint
from test_models import NAMES as CIFAR_NAMES, entries, n_params

# torchvision's published parameter counts at 1000 classes (ResNeXt101-32x8d's 88.79 M is the paper's).
PARAMS = {"tv_resnet18": 11_689_512, "tv_resnet50": 25_557_032, "tv_resnet101": 44_549_160,
          "tv_resnext101_32x8d": 88_791_336, "tv_densenet121": 7_978_856, "tv_mobilenet_v2": 3_504_872}
SMALL = ["tv_resnet18", "tv_densenet121", "tv_mobilenet_v2"]  # one of each torchvision class


def torchvision_model(name, num_classes=1000):
    return getattr(torchvision.models, name.removeprefix("tv_"))(weights=None, num_classes=num_classes)


def on_meta(make):
    with torch.device("meta"):  # keys and shapes only
        return make()


def with_random_1d(model, seed):
    """`model` with random BN statistics, BN affine and biases, so that every tensor of a loaded file
    shows in the logits; its convs keep torchvision's init, so the logits stay finite (test_models'
    `randomised` scales every weight, too much for 100 layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, v in model.state_dict().items():
            if key.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif v.is_floating_point() and v.dim() == 1:
                v.copy_(torch.randn(v.shape, generator=g) * 0.1 + (1.0 if key.endswith(".weight") else 0.0))
    return model


def torchvision_file(name, path, prefix="", seed=1):
    """A torchvision weights file, `torch.save(model.state_dict(), path)`; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = with_random_1d(torchvision_model(name), seed).eval()
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    return model


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        out = model(X)
    assert torch.isfinite(out).all() and out.std() > 0
    return out


def test_names_cannot_be_confused_with_the_cifar_zoo():
    assert sorted(TORCHVISION) == sorted(PARAMS) and all(n.startswith("tv_") for n in TORCHVISION)
    assert model_names() == CIFAR_NAMES and not set(TORCHVISION) & set(MODELS)  # the CIFAR zoo as it was
    with pytest.raises(TfkdError) as e:
        build_model("resnet34", 10)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in TORCHVISION + tuple(CIFAR_NAMES))


def test_the_zoo_imports_no_torchvision():
    """Importing torchvision takes ~2 s (torch._dynamo): a CIFAR run must not pay it."""
    code = "import sys, pipeline.models, pipeline.checkpoint; assert 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("num_classes", [1000, 10])
@pytest.mark.parametrize("name", TORCHVISION)
def test_state_dict_is_torchvisions(name, num_classes):
    ours, theirs = on_meta(lambda: build_model(name, num_classes)), on_meta(lambda: torchvision_model(name, num_classes))
    assert type(ours).__bases__[0] is type(theirs)  # torchvision's class, with the split's methods only
    assert entries(ours) == entries(theirs)  # keys, shapes, dtypes, order
    ours.load_state_dict(theirs.state_dict())  # strictly, both ways
    theirs.load_state_dict(ours.state_dict())
    if num_classes == 1000:
        assert n_params(ours) == PARAMS[name]


@pytest.mark.parametrize("name", TORCHVISION)
def test_initialisation_is_torchvisions(name):
    torch.manual_seed(0)
    ours = build_model(name, 1000).state_dict()
    torch.manual_seed(0)
    theirs = torchvision_model(name).state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())


@pytest.mark.parametrize("name", SMALL)  # the others are these classes (test_state_dict_is_torchvisions)
def test_forward_and_split_are_torchvisions(name):
    """The same function as torchvision's on the same weights, and the precision policy's split,
    forward_head(forward_features(x)), is that function bit for bit (on a CPU the policy runs forward)."""
    torch.manual_seed(2)
    theirs = with_random_1d(torchvision_model(name), 2).eval()
    ours = build_model(name, 1000)
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    expected = logits(theirs)
    assert torch.equal(logits(ours), expected)
    with torch.no_grad():
        assert torch.equal(ours.forward_head(ours.forward_features(X)), expected)
        assert torch.equal(PrecisionPolicy(ours)(X), expected)
    assert getattr(ours, ours.classifier_name) is list(ours.children())[-1]  # the head is the classifier


@pytest.mark.parametrize("name,prefix", [("tv_resnet18", ""), ("tv_densenet121", "module."), ("tv_mobilenet_v2", "")])
def test_a_torchvision_file_loads_as_a_teacher(name, prefix, tmp_path):
    theirs = torchvision_file(name, tmp_path / "weights.pth", prefix)
    torch.manual_seed(3)  # another init than the file's: the logits below are the file's weights
    ours, _ = checkpoint.load_model(str(tmp_path / "weights.pth"), name, 1.0, 1000, 3)
    assert not ours.training and torch.equal(logits(ours), logits(theirs))


def test_torchvisions_published_densenet_keys_load(tmp_path):
    """torchvision's DenseNet weights files keep the old names ('...denselayer1.norm.1.weight')."""
    theirs = torchvision_file("tv_densenet121", tmp_path / "new.pth")
    state = torch.load(tmp_path / "new.pth")
    old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
    assert len([k for k in old if k.endswith(".norm.1.weight")]) == 58  # one per dense layer
    torch.save(old, tmp_path / "old.pth")
    ours, _ = checkpoint.load_model(str(tmp_path / "old.pth"), "tv_densenet121", 1.0, 1000, 3)
    assert torch.equal(logits(ours), logits(theirs))


@pytest.mark.parametrize("width,in_channels", [(0.5, 3), (math.nan, 3), (1.0, 1)])
def test_another_width_or_channel_count_is_refused(width, in_channels):
    with pytest.raises(TfkdError) as e:
        build_model("tv_resnet50", 1000, in_channels=in_channels, width=width)
    message = str(e.value)
    assert "\n" not in message and "'tv_resnet50'" in message and f"(asked: width {width!r}, {in_channels} input channels)" in message
    assert "set the profile's width to 1.0 and use RGB data" in message


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torchvision_file("tv_resnet18", path)
    return str(path)


@pytest.mark.parametrize("ask,holds", [
    (("tv_resnet50", 1.0, 1000, 3), "holds tv_resnet18 (width ~1, 1000 classes, 3 input channels), not the tv_resnet50 "
                                    "(width 1, 1000 classes, 3 input channels) asked for"),
    (("tv_resnet18", 1.0, 10, 3), "holds tv_resnet18 (width ~1, 1000 classes, 3 input channels), not the tv_resnet18 "
                                  "(width 1, 10 classes, 3 input channels)"),
    (("resnet18", 1.0, 1000, 3), "holds tv_resnet18 (width ~1, 1000 classes, 3 input channels), not the resnet18 "),
])
def test_a_torchvision_file_as_another_model_is_refused_naming_both(resnet18_file, ask, holds):
    with pytest.raises(TfkdError) as e:
        checkpoint.load_model(resnet18_file, *ask)
    assert "\n" not in str(e.value) and holds in str(e.value), str(e.value)


def test_a_cifar_checkpoint_as_a_torchvision_model_is_refused_naming_both(tmp_path):
    reference_checkpoint("resnet18", tmp_path / "r18.pth.tar")
    with pytest.raises(TfkdError) as e:
        checkpoint.load_model(str(tmp_path / "r18.pth.tar"), "tv_resnet18", 1.0, 100, 3)
    message = str(e.value)
    assert "\n" not in message and "holds resnet18 (width ~1, 100 classes" in message
    assert "not the tv_resnet18 (width 1, 100 classes" in message


@pytest.mark.parametrize("name", ["tv_resnet101", "tv_resnext101_32x8d", "tv_mobilenet_v2"])  # tv_resnet18: above
def test_describe_names_a_torchvision_file(name):
    """By its keys, and by its shapes where the keys agree (tv_resnet101's are tv_resnext101_32x8d's);
    its class count from the classifier, which is MobileNetV2's `classifier.1`."""
    state = {"module." + k: v for k, v in on_meta(lambda: torchvision_model(name, 7)).state_dict().items()}
    assert checkpoint.describe(state) == f"{name} (width ~1, 7 classes, 3 input channels)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bf16 body runs on a GPU only")
@pytest.mark.parametrize("name", TORCHVISION)
def test_precision_policy_on_a_gpu_is_close_to_fp32(name):
    torch.manual_seed(0)
    model = build_model(name, 1000).cuda().eval()
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad():
        fp32, mixed = model(x), PrecisionPolicy(model)(x)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert torch.nn.functional.cosine_similarity(mixed, fp32).min() > 0.99
