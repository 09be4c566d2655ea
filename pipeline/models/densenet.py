"""CIFAR DenseNet-BC-121: 3x3 stem without pooling, pre-activation (BN-ReLU-conv) layers."""
import torch
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import pool_linear, scaled


def bn_relu_conv(cin, cout, kernel):
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.body = nn.Sequential(bn_relu_conv(cin, 4 * growth, 1), bn_relu_conv(4 * growth, growth, 3))  # bottleneck

    def forward(self, x):
        return torch.cat([self.body(x), x], dim=1)  # each layer appends `growth` new channels


class DenseNet(nn.Sequential):
    def __init__(self, blocks, num_classes, in_channels=3, width=1.0, growth=32, compression=0.5):
        growth = scaled(growth, width)
        cin = 2 * growth
        layers = [nn.Conv2d(in_channels, cin, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if i < len(blocks) - 1:  # transition: compress channels and halve the resolution
                cout = int(cin * compression)
                layers += [bn_relu_conv(cin, cout, 1), nn.AvgPool2d(2)]
                cin = cout
        super().__init__(*layers, nn.BatchNorm2d(cin), nn.ReLU(), pool_linear(cin, num_classes))


@register("densenet121")
def densenet121(num_classes, in_channels=3, width=1.0):
    return DenseNet((6, 12, 24, 16), num_classes, in_channels, width)
