"""CIFAR ResNeXt-29 8x64d: three stages of three grouped-conv bottlenecks (3 * 3 * 3 + 2 = 29 layers)."""
import torch.nn as nn

from pipeline.models import register
from pipeline.models.layers import Residual, conv_bn, pool_linear, scaled


def resnext_block(cin, cout, stride, cardinality, group_width):
    inner = cardinality * group_width  # always divisible by the number of groups
    body = nn.Sequential(conv_bn(cin, inner, 1, act=nn.ReLU),
                         conv_bn(inner, inner, 3, stride, groups=cardinality, act=nn.ReLU),
                         conv_bn(inner, cout, 1))
    return Residual(body, cin, cout, stride)


class ResNeXt(nn.Sequential):
    def __init__(self, num_classes, in_channels=3, width=1.0, cardinality=8, base_width=64, widen_factor=4, blocks=3):
        cin = scaled(64, width)
        layers = [conv_bn(in_channels, cin, 3, act=nn.ReLU)]
        for stage in range(3):
            cout = scaled(64 * widen_factor * 2 ** stage, width)  # 256 / 512 / 1024
            group_width = scaled(base_width * 2 ** stage, width)  # per-group width doubles with the stage width
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(resnext_block(cin, cout, stride, cardinality, group_width))
                cin = cout
        # Adaptive pooling instead of the reference's avg_pool2d(8), which breaks on 64x64 inputs.
        super().__init__(*layers, pool_linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


@register("resnext29")
def resnext29(num_classes, in_channels=3, width=1.0):
    return ResNeXt(num_classes, in_channels, width)
