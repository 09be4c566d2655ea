"""CIFAR GoogLeNet as the reference builds it: a 3x3 stem `prelayer`, no early downsampling, convs
with biases, inception blocks `a3 b3 a4 b4 c4 d4 e4 a5 b5`, one shared `maxpool`, `avgpool`,
`dropout` (Dropout2d 0.4 on the pooled map) and a `linear` classifier.

The paper's network, quirk included: in each block's "5x5" branch (two stacked 3x3 convs) the
reference builds the first BatchNorm as `BatchNorm2d(C, C)`, whose second argument is eps, so that
layer runs with eps = C (32, 96, 48, 64, 64, 64, 128, 128, 128 in a3 ... b5; at another width, the
layer's own channel count). Its train-mode output is shrunk to a std of about 0.03-0.06. The
paper's GoogLeNet numbers were produced by this network, so it is kept."""
import torch
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import CifarNet, scaled

# name: (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj); the shared max-pool follows b3 and e4.
BLOCKS = {"a3": (64, 96, 128, 16, 32, 32), "b3": (128, 128, 192, 32, 96, 64),
          "a4": (192, 96, 208, 16, 48, 64), "b4": (160, 112, 224, 24, 64, 64), "c4": (128, 128, 256, 24, 64, 64),
          "d4": (112, 144, 288, 32, 64, 64), "e4": (256, 160, 320, 32, 128, 128),
          "a5": (256, 160, 320, 32, 128, 128), "b5": (384, 192, 384, 48, 128, 128)}
POOL_AFTER = ("b3", "e4")


def conv_bn_relu(cin, cout, kernel, eps=1e-5):
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout, eps=eps), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    def __init__(self, cin, n1, n3r, n3, n5r, n5, npool):
        super().__init__()
        self.b1 = nn.Sequential(*conv_bn_relu(cin, n1, 1))
        self.b2 = nn.Sequential(*conv_bn_relu(cin, n3r, 1), *conv_bn_relu(n3r, n3, 3))
        self.b3 = nn.Sequential(*conv_bn_relu(cin, n5r, 1), *conv_bn_relu(n5r, n5, 3, eps=float(n5)),  # the quirk
                                *conv_bn_relu(n5, n5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *conv_bn_relu(cin, npool, 1))
        self.out_channels = n1 + n3 + n5 + npool

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNet(CifarNet):
    def __init__(self, num_classes, in_channels=3, width=1.0):
        super().__init__()
        cin = scaled(192, width)
        self.prelayer = nn.Sequential(*conv_bn_relu(in_channels, cin, 3))
        for name, cfg in BLOCKS.items():
            block = Inception(cin, *(scaled(c, width) for c in cfg))
            setattr(self, name, block)
            cin = block.out_channels
            if name == "b3":
                self.maxpool = nn.MaxPool2d(3, 2, 1)  # registered here, where the reference's tree has it
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout2d(p=0.4)
        self.linear = nn.Linear(cin, num_classes)

    def forward_features(self, x):
        x = self.prelayer(x)
        for name in BLOCKS:
            x = getattr(self, name)(x)
            if name in POOL_AFTER:
                x = self.maxpool(x)
        return self.avgpool(x)

    def forward_head(self, features):
        return self.linear(self.dropout(features).flatten(1))  # dropout on the [B, C, 1, 1] map, as the reference


@register("googlenet")
def googlenet(num_classes, in_channels=3, width=1.0):
    return GoogLeNet(num_classes, in_channels, width)
