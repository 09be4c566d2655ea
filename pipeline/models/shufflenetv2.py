"""ShuffleNetV2 (ratio 1) as in the pytorch-cifar100 version used by the reference: convs have biases."""
import torch
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import conv_bn, pool_linear, scaled


def channel_shuffle(x, groups=2):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.split = stride == 1 and cin == cout
        branch_in = cin // 2 if self.split else cin  # basic unit transforms half the channels, keeps the rest
        half = cout // 2
        self.residual = nn.Sequential(conv_bn(branch_in, branch_in, 1, bias=True, act=nn.ReLU),
                                      conv_bn(branch_in, branch_in, 3, stride, groups=branch_in, bias=True),
                                      conv_bn(branch_in, half, 1, bias=True, act=nn.ReLU))
        # Downsampling unit: both branches see the whole input, the shortcut gets its own depthwise conv.
        self.shortcut = nn.Identity() if self.split else nn.Sequential(
            conv_bn(cin, cin, 3, stride, groups=cin, bias=True), conv_bn(cin, half, 1, bias=True, act=nn.ReLU))

    def forward(self, x):
        if self.split:
            shortcut, x = x.chunk(2, dim=1)
        else:
            shortcut = self.shortcut(x)
        return channel_shuffle(torch.cat([shortcut, self.residual(x)], dim=1))


class ShuffleNetV2(nn.Sequential):
    def __init__(self, num_classes, in_channels=3, width=1.0, channels=(116, 232, 464), units=(4, 8, 4)):
        cin = scaled(24, width)
        layers = [conv_bn(in_channels, cin, 3, bias=True)]  # reference stem: no ReLU, no max-pool
        for c, n in zip(channels, units):
            cout = scaled(c, width, divisor=2)  # even, so the channel split is exact
            for i in range(n):
                layers.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        last = scaled(1024, width)
        super().__init__(*layers, conv_bn(cin, last, 1, bias=True, act=nn.ReLU), pool_linear(last, num_classes))


@register("shufflenetv2")
def shufflenetv2(num_classes, in_channels=3, width=1.0):
    return ShuffleNetV2(num_classes, in_channels, width)
