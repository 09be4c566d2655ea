"""Model zoo: the reference's CIFAR networks (Yuan et al., CVPR 2020), looked up by name like timm's
registry, and torchvision's ImageNet networks as 'tv_' + torchvision's builder name (imagenet.py).
Each model is an ordinary nn.Module whose state_dict keys, shapes and order are the reference
code's (torchvision's for tv_*), so its checkpoints load strictly, with no key map (see checkpoint.py)."""
from pipeline.errors import TfkdError

MODELS = {}  # the CIFAR zoo: name -> factory(num_classes, in_channels, width) -> nn.Module
# torchvision's networks, built by imagenet.py. Listed here, not registered by an import: importing
# torchvision takes ~2 s (it loads torch._dynamo), which every CIFAR run and stage would pay.
TORCHVISION = ("tv_densenet121", "tv_mobilenet_v2", "tv_resnet101", "tv_resnet18", "tv_resnet50", "tv_resnext101_32x8d")


def register(name):
    """Decorator adding a model factory to MODELS under `name`."""
    def decorator(factory):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = factory
        return factory
    return decorator


def model_names():
    return sorted(MODELS)


def build_model(name, num_classes, in_channels=3, width=1.0):
    """Instantiate a registered model. Every model pools adaptively, so any input size works."""
    if name not in MODELS and name not in TORCHVISION:
        raise TfkdError(f"unknown model {name!r}; known models: {', '.join(TORCHVISION)} (torchvision's ImageNet "
                        f"networks) and the CIFAR zoo's {', '.join(model_names())}")
    if name in TORCHVISION and (width != 1.0 or in_channels != 3):  # `!=` also rejects a NaN width
        raise TfkdError(f"model {name!r} is torchvision's network, at width 1.0 with 3 input channels only (asked: "
                        f"width {width!r}, {in_channels} input channels): set the profile's width to 1.0 and use RGB "
                        f"data, or pick a model of the CIFAR zoo, which scales and takes any channel count")
    if not width > 0:  # `not >` also rejects NaN
        raise TfkdError(f"invalid width {width!r} for model {name!r}; use a positive multiplier such as 1.0 or 0.25")
    if num_classes < 1 or in_channels < 1:
        raise TfkdError(f"invalid {name!r} shape: num_classes={num_classes}, in_channels={in_channels}; need >= 1")
    if name in TORCHVISION:
        from pipeline.models import imagenet  # here, not at the top: see TORCHVISION
        return imagenet.build(name, num_classes)
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, width=width)


# Imported last: each family module registers itself with the decorator defined above.
from pipeline.models import densenet, googlenet, mobilenetv2, resnet, resnext, shufflenetv2  # noqa: E402,F401
