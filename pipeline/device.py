"""Which device a run uses, and its name for the records."""
import os

import torch

from .errors import TfkdError


def pick_device(name="auto"):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TfkdError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed CIFAR shapes: let cuDNN pick its fastest kernels
    return torch.device(name)


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
