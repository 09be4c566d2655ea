"""Building blocks shared by several model families (kept here so no family copies another's code)."""
import torch.nn as nn
import torch.nn.functional as F


def scaled(channels, width, divisor=1):
    """`channels * width` rounded to a multiple of `divisor` (and at least `divisor`), so that
    tiny widths still build and grouped convs / channel splits stay divisible."""
    return max(divisor, int(round(channels * width / divisor)) * divisor)


def conv_bn(cin, cout, kernel=1, stride=1, groups=1, bias=False, act=None, padding=None):
    """Conv -> BatchNorm -> optional activation (a class such as nn.ReLU); 'same' padding by default."""
    padding = kernel // 2 if padding is None else padding
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def pool_linear(cin, num_classes, dropout=0.0):
    """Global average pool + linear: adaptive pooling makes every model input-size agnostic."""
    layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(cin, num_classes))


class Residual(nn.Module):
    """relu(body(x) + shortcut(x)), with a 1x1 conv + BN projection only when the shape changes."""

    def __init__(self, body, cin, cout, stride):
        super().__init__()
        self.body = body
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.out_channels = cout

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))
