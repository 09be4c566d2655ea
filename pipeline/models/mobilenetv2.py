"""MobileNetV2 as in the pytorch-cifar100 version used by the reference: every conv has a bias."""
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import conv_bn, scaled

# (expansion t, output channels c, repeats n, stride of the first repeat s). Unlike ImageNet MobileNetV2
# the 160-channel stage keeps stride 1 (CIFAR images are small); strides do not change the parameter count.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.body = nn.Sequential(conv_bn(cin, hidden, 1, bias=True, act=nn.ReLU6),
                                  conv_bn(hidden, hidden, 3, stride, groups=hidden, bias=True, act=nn.ReLU6),
                                  conv_bn(hidden, cout, 1, bias=True))  # linear bottleneck: no activation
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Sequential):
    def __init__(self, num_classes, in_channels=3, width=1.0):
        cin = scaled(32, width)
        # Faithful quirk of the reference: a 1x1 stem conv with padding=1, so 32x32 inputs become 34x34.
        layers = [conv_bn(in_channels, cin, 1, bias=True, act=nn.ReLU6, padding=1)]
        for t, c, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, scaled(c, width), s if i == 0 else 1, t))
                cin = scaled(c, width)
        last = scaled(1280, width)
        layers += [conv_bn(cin, last, 1, bias=True, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1),
                   nn.Conv2d(last, num_classes, 1), nn.Flatten()]  # the reference classifies with a 1x1 conv
        super().__init__(*layers)


@register("mobilenetv2")
def mobilenetv2(num_classes, in_channels=3, width=1.0):
    return MobileNetV2(num_classes, in_channels, width)
