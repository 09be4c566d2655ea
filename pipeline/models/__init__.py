"""Model zoo: the reference's CIFAR networks (Yuan et al., CVPR 2020), looked up by name like timm's
registry. Each model is an ordinary nn.Module whose state_dict keys, shapes and order are the
reference code's, so its checkpoints load strictly, with no key map (see checkpoint.py)."""
from pipeline.errors import TfkdError

MODELS = {}  # name -> factory(num_classes, in_channels, width) -> nn.Module


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
    if name not in MODELS:
        raise TfkdError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if not width > 0:  # `not >` also rejects NaN
        raise TfkdError(f"invalid width {width!r} for model {name!r}; use a positive multiplier such as 1.0 or 0.25")
    if num_classes < 1 or in_channels < 1:
        raise TfkdError(f"invalid {name!r} shape: num_classes={num_classes}, in_channels={in_channels}; need >= 1")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, width=width)


# Imported last: each family module registers itself with the decorator defined above.
from pipeline.models import densenet, googlenet, mobilenetv2, resnet, resnext, shufflenetv2  # noqa: E402,F401
