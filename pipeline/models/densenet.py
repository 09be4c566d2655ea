"""CIFAR DenseNet-BC-121 as the reference builds it: a 3x3 stem `conv1` without pooling, then
`features` (dense blocks of pre-activation bottlenecks, transitions, a final BN-ReLU), `avgpool`
and a `linear` classifier. As in the reference, a dense layer returns [input, new] (the input's
channels first) and a transition is BN -> 1x1 conv -> 2x2 average pool with no ReLU; the last
dense block is named `dense_block3`, as there."""
import torch
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import CifarNet, scaled


class Bottleneck(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        inner = 4 * growth
        self.bottle_neck = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, inner, 1, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(inplace=True), nn.Conv2d(inner, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.bottle_neck(x)], dim=1)  # each layer appends `growth` new channels


class Transition(nn.Module):
    """Compress the channels and halve the resolution."""

    def __init__(self, cin, cout):
        super().__init__()
        self.down_sample = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2))

    def forward(self, x):
        return self.down_sample(x)


class DenseNet(CifarNet):
    def __init__(self, blocks, num_classes, in_channels=3, width=1.0, growth=32, reduction=0.5):
        super().__init__()
        growth = scaled(growth, width)
        cin = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, cin, 3, padding=1, bias=False)
        self.features = nn.Sequential()
        for i, n in enumerate(blocks):
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"bottle_neck_layer_{j}", Bottleneck(cin, growth))
                cin += growth
            if i < len(blocks) - 1:
                self.features.add_module(f"dense_block_layer_{i}", block)
                cout = int(reduction * cin)
                self.features.add_module(f"transition_layer_{i}", Transition(cin, cout))
                cin = cout
            else:
                self.features.add_module(f"dense_block{i}", block)  # the reference's name for the last block
        self.features.add_module("bn", nn.BatchNorm2d(cin))
        self.features.add_module("relu", nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward_features(self, x):
        return self.avgpool(self.features(self.conv1(x)))


@register("densenet121")
def densenet121(num_classes, in_channels=3, width=1.0):
    return DenseNet((6, 12, 24, 16), num_classes, in_channels, width)
