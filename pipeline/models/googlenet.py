"""CIFAR GoogLeNet (kuangliu style): 3x3 stem, no early downsampling, convs with biases."""
import torch
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import conv_bn, pool_linear, scaled

# Inception configs: (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj); "M" is a stride-2 max-pool.
CONFIG = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
          (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
          (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M",
          (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]


def cbr(cin, cout, kernel):
    return conv_bn(cin, cout, kernel, bias=True, act=nn.ReLU)


class Inception(nn.Module):
    def __init__(self, cin, n1, n3r, n3, n5r, n5, npool):
        super().__init__()
        self.b1 = cbr(cin, n1, 1)
        self.b2 = nn.Sequential(cbr(cin, n3r, 1), cbr(n3r, n3, 3))
        self.b3 = nn.Sequential(cbr(cin, n5r, 1), cbr(n5r, n5, 3), cbr(n5, n5, 3))  # 5x5 as two stacked 3x3
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(cin, npool, 1))
        self.out_channels = n1 + n3 + n5 + npool

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNet(nn.Sequential):
    def __init__(self, num_classes, in_channels=3, width=1.0):
        cin = scaled(192, width)
        layers = [cbr(in_channels, cin, 3)]
        for cfg in CONFIG:
            if cfg == "M":
                layers.append(nn.MaxPool2d(3, 2, 1))
            else:
                layers.append(Inception(cin, *(scaled(c, width) for c in cfg)))
                cin = layers[-1].out_channels
        # The reference applies Dropout2d(0.4) to the pooled [B, C, 1, 1] map, which drops whole features;
        # nn.Dropout(0.4) on the flattened features is the same thing without Dropout2d's 2D-input warning.
        super().__init__(*layers, pool_linear(cin, num_classes, dropout=0.4))


@register("googlenet")
def googlenet(num_classes, in_channels=3, width=1.0):
    return GoogLeNet(num_classes, in_channels, width)
