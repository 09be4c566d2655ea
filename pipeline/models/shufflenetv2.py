"""ShuffleNetV2 (ratio 1) as the reference builds it (weiaicunzai's pytorch-cifar100): convs have
biases, the stem `pre` has no ReLU and no max-pool, stages `stage2..4`, then `conv5` and `fc`."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models import register
from pipeline.models.layers import CifarNet, scaled


def channel_shuffle(x, groups=2):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """The basic unit (stride 1, same width) transforms half the channels and keeps the rest; the
    downsampling unit sends the whole input through both branches, the shortcut with its own
    depthwise conv."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.split = stride == 1 and cin == cout
        branch_in = cin // 2 if self.split else cin
        half = cout // 2
        self.residual = nn.Sequential(
            nn.Conv2d(branch_in, branch_in, 1), nn.BatchNorm2d(branch_in), nn.ReLU(inplace=True),
            nn.Conv2d(branch_in, branch_in, 3, stride, 1, groups=branch_in), nn.BatchNorm2d(branch_in),
            nn.Conv2d(branch_in, half, 1), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        self.shortcut = nn.Sequential() if self.split else nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.BatchNorm2d(cin),
            nn.Conv2d(cin, half, 1), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.split:
            shortcut, x = x.chunk(2, dim=1)
        else:
            shortcut = self.shortcut(x)
        return channel_shuffle(torch.cat([shortcut, self.residual(x)], dim=1))


class ShuffleNetV2(CifarNet):
    classifier_name = "fc"

    def __init__(self, num_classes, in_channels=3, width=1.0, channels=(116, 232, 464), units=(4, 8, 4)):
        super().__init__()
        cin = scaled(24, width)
        self.pre = nn.Sequential(nn.Conv2d(in_channels, cin, 3, padding=1), nn.BatchNorm2d(cin))
        for number, (c, n) in enumerate(zip(channels, units), start=2):
            cout = scaled(c, width, divisor=2)  # even, so the channel split is exact
            blocks = []
            for i in range(n):
                blocks.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1))
                cin = cout
            setattr(self, f"stage{number}", nn.Sequential(*blocks))
        last = scaled(1024, width)
        self.conv5 = nn.Sequential(nn.Conv2d(cin, last, 1), nn.BatchNorm2d(last), nn.ReLU(inplace=True))
        self.fc = nn.Linear(last, num_classes)

    def forward_features(self, x):
        x = self.stage4(self.stage3(self.stage2(self.pre(x))))
        return F.adaptive_avg_pool2d(self.conv5(x), 1)


@register("shufflenetv2")
def shufflenetv2(num_classes, in_channels=3, width=1.0):
    return ShuffleNetV2(num_classes, in_channels, width)
