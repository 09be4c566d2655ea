"""CIFAR ResNeXt-29 8x64d as the reference builds it: a 3x3 stem (`conv_1_3x3`, `bn_1`), three
stages `stage_1..3` of three grouped-conv bottlenecks (3 * 3 * 3 + 2 = 29 layers) and a
`classifier`. Initialised as the reference: convs Kaiming normal (fan_out), BatchNorm weight 1 and
bias 0, the classifier Kaiming normal (fan_in) with bias 0. The reference's fixed 8x8 average pool
is an adaptive pool: the same function on 32x32 inputs, and other sizes work too."""
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models import register
from pipeline.models.layers import CifarNet, scaled


class ResNeXtBottleneck(nn.Module):
    def __init__(self, cin, cout, stride, cardinality, group_width):
        super().__init__()
        inner = cardinality * group_width
        self.conv_reduce = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_conv = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, cout, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut.add_module("shortcut_conv", nn.Conv2d(cin, cout, 1, stride, bias=False))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        return F.relu(self.bn_expand(self.conv_expand(out)) + self.shortcut(x))


class ResNeXt(CifarNet):
    classifier_name = "classifier"

    def __init__(self, num_classes, in_channels=3, width=1.0, cardinality=8, base_width=64, widen_factor=4, blocks=3):
        super().__init__()
        cin = scaled(64, width)
        self.conv_1_3x3 = nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(cin)
        for stage in range(1, 4):
            cout = scaled(64 * widen_factor * 2 ** (stage - 1), width)  # 256 / 512 / 1024
            group_width = scaled(base_width * 2 ** (stage - 1), width)  # per-group width doubles too
            part = nn.Sequential()
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                part.add_module(f"stage_{stage}_bottleneck_{i}",
                                ResNeXtBottleneck(cin, cout, stride, cardinality, group_width))
                cin = cout
            setattr(self, f"stage_{stage}", part)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return F.adaptive_avg_pool2d(x, 1)


@register("resnext29")
def resnext29(num_classes, in_channels=3, width=1.0):
    return ResNeXt(num_classes, in_channels, width)
