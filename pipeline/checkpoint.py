"""Reading a model's weights from a checkpoint file, whoever wrote it.

Three kinds load, strictly and with no key map, because the zoo's state_dict keys are the
reference code's own (models/):
    ours             {'model': state_dict, 'model_name', 'width', 'num_classes', ..., 'results_version'}
    the reference's  {'state_dict': state_dict, 'optim_dict', 'epoch'} (its .pth.tar files)
    a plain state_dict
in either torch format (zip, or the legacy one torch <= 1.5 wrote), keys with or without the
'module.' prefix nn.DataParallel / DistributedDataParallel adds. A torchvision weights file is a
plain state_dict of a tv_* model (models/imagenet.py).
"""
import os
import re

import torch

from .errors import TfkdError
from .models import MODELS, TORCHVISION, build_model
from .version import RESULTS_VERSION

# torchvision's published DenseNet weights name 'norm.1' what its DenseNet calls 'norm1' (torchvision
# renames them when it loads that file itself); renamed here too, so that file loads as it is.
TORCHVISION_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|conv))\.([12])\.")


def read(path):
    """The checkpoint at `path` as a dict, or a one-line TfkdError saying what it is instead."""
    if not os.path.exists(path):
        raise TfkdError(f"teacher checkpoint {path} not found: train the teacher first (tfkd train) "
                        f"or give the path of an existing checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):  # pickled Python objects
            raise TfkdError(f"checkpoint {path} holds pickled Python objects (a whole model saved with "
                            f"torch.save(model)?), not weights: save model.state_dict() and pass that file")
        raise TfkdError(f"teacher checkpoint {path} cannot be read ({type(e).__name__}): "
                        f"it is truncated or not a PyTorch checkpoint")
    if not isinstance(ckpt, dict):
        raise TfkdError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state_dict: "
                        f"save model.state_dict() and pass that file")
    return ckpt


def model_state(ckpt):
    """The model's state_dict inside a checkpoint of any of the three kinds, 'module.' removed."""
    state = ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(state, dict):
        return {}
    return {TORCHVISION_DENSENET_KEY.sub(r"\1\2.", k.removeprefix("module.")): v
            for k, v in state.items() if torch.is_tensor(v)}


def describe(ckpt):
    """What a checkpoint holds, in words: 'resnet18 (width 0.5, 20 classes, 3 input channels)'."""
    if "model_name" in ckpt:  # ours says so
        return (f"{ckpt['model_name']} (width {ckpt.get('width')}, {ckpt.get('num_classes')} classes, "
                f"{ckpt.get('in_channels')} input channels)")
    state = model_state(ckpt)
    shapes = [v.shape for v in state.values()]
    for name in sorted(MODELS) + sorted(TORCHVISION):  # the architecture whose key list it has; then its sizes
        with torch.device("meta"):  # keys and shapes only: no memory, no initialisation (ResNeXt101's takes ~1 s)
            reference = build_model(name, 10).state_dict()
        if list(reference) != list(state):
            continue
        if name in TORCHVISION and [v.shape for v in reference.values()][:-2] != shapes[:-2]:
            continue  # one width: all but the classifier's shapes are its own (tv_resnet101 has tv_resnext101's keys)
        stem = next(k for k, v in reference.items() if v.dim() == 4)
        width = state[stem].shape[0] / reference[stem].shape[0]
        classes = shapes[-1][0]  # every zoo model's last entry is its classifier's bias
        return f"{name} (width ~{width:.3g}, {classes} classes, {state[stem].shape[1]} input channels)"
    keys = list(state)
    return f"no model of the zoo (keys {keys[0]!r} ... {keys[-1]!r})" if keys else "no weights"


def load_model(path, model_name, width, num_classes, in_channels):
    """(`model_name` at that size with the checkpoint's weights, in eval mode; the checkpoint dict).
    A checkpoint of another model, width or class count is refused in one line naming both."""
    ckpt = read(path)
    if "model_name" in ckpt and ckpt.get("results_version") != RESULTS_VERSION:
        raise TfkdError(f"teacher checkpoint {path} was written by an older tfkd (results version "
                        f"{ckpt.get('results_version', 1)}, this is {RESULTS_VERSION}) whose models differ: "
                        f"retrain it (tfkd train EXPERIMENT --overwrite)")
    model = build_model(model_name, num_classes, in_channels=in_channels, width=width)
    state = model_state(ckpt)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise TfkdError(f"teacher checkpoint {path} holds {describe(ckpt)}, not the {model_name} (width {width:g}, "
                        f"{num_classes} classes, {in_channels} input channels) asked for: fix the teacher's "
                        f"model, width or dataset, or pass the right checkpoint")
    return model.eval(), ckpt
