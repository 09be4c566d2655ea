"""CIFAR ResNet (kuangliu style): 3x3 stride-1 stem and no max-pool, since 32x32 inputs are already small."""
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import Residual, conv_bn, pool_linear, scaled


def basic_block(cin, planes, stride):
    body = nn.Sequential(conv_bn(cin, planes, 3, stride, act=nn.ReLU), conv_bn(planes, planes, 3))
    return Residual(body, cin, planes, stride)


def bottleneck_block(cin, planes, stride):
    cout = 4 * planes  # expansion 4
    body = nn.Sequential(conv_bn(cin, planes, 1, act=nn.ReLU),
                         conv_bn(planes, planes, 3, stride, act=nn.ReLU),
                         conv_bn(planes, cout, 1))
    return Residual(body, cin, cout, stride)


class ResNet(nn.Sequential):
    def __init__(self, block, depths, num_classes, in_channels=3, width=1.0):
        cin = scaled(64, width)
        layers = [conv_bn(in_channels, cin, 3, act=nn.ReLU)]
        for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1  # first block of stages 2-4 halves the resolution
                layers.append(block(cin, scaled(planes, width), stride))
                cin = layers[-1].out_channels
        super().__init__(*layers, pool_linear(cin, num_classes))


@register("resnet18")
def resnet18(num_classes, in_channels=3, width=1.0):
    return ResNet(basic_block, (2, 2, 2, 2), num_classes, in_channels, width)


@register("resnet50")
def resnet50(num_classes, in_channels=3, width=1.0):
    return ResNet(bottleneck_block, (3, 4, 6, 3), num_classes, in_channels, width)
