"""MobileNetV2 as the reference builds it (weiaicunzai's pytorch-cifar100): every conv has a bias,
a 1x1 stem with padding 1, stages `stage1..7`, and a 1x1 conv `conv2` as the classifier."""
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models import register
from pipeline.models.layers import CifarNet, scaled

# (expansion t, output channels c, repeats n, stride of the first repeat s). Unlike ImageNet MobileNetV2
# the 160-channel stage keeps stride 1 (CIFAR images are small).
STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)]


class LinearBottleNeck(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.residual = nn.Sequential(
            nn.Conv2d(cin, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1), nn.BatchNorm2d(cout))  # linear bottleneck: no activation
        self.add_input = stride == 1 and cin == cout

    def forward(self, x):
        out = self.residual(x)
        return out + x if self.add_input else out


class MobileNetV2(CifarNet):
    classifier_name = "conv2"

    def __init__(self, num_classes, in_channels=3, width=1.0):
        super().__init__()
        cin = scaled(32, width)
        # Faithful quirk of the reference: a 1x1 stem conv with padding=1, so 32x32 inputs become 34x34.
        self.pre = nn.Sequential(nn.Conv2d(in_channels, cin, 1, padding=1), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True))
        for number, (t, c, n, s) in enumerate(STAGES, start=1):
            blocks = []
            for i in range(n):
                blocks.append(LinearBottleNeck(cin, scaled(c, width), s if i == 0 else 1, t))
                cin = scaled(c, width)
            # The reference's single-block stages (1 and 7) are the block itself, not a Sequential.
            setattr(self, f"stage{number}", blocks[0] if n == 1 else nn.Sequential(*blocks))
        last = scaled(1280, width)
        self.conv1 = nn.Sequential(nn.Conv2d(cin, last, 1), nn.BatchNorm2d(last), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(last, num_classes, 1)  # the reference classifies with a 1x1 conv

    def forward_features(self, x):
        x = self.pre(x)
        for number in range(1, len(STAGES) + 1):
            x = getattr(self, f"stage{number}")(x)
        return F.adaptive_avg_pool2d(self.conv1(x), 1)

    def forward_head(self, features):
        return self.conv2(features).flatten(1)


@register("mobilenetv2")
def mobilenetv2(num_classes, in_channels=3, width=1.0):
    return MobileNetV2(num_classes, in_channels, width)
