"""CIFAR ResNet18 / ResNet50 as the reference builds them (kuangliu's pytorch-cifar): a 3x3
stride-1 stem, no max-pool, four stages `layer1..4`, a `linear` classifier. State-dict keys are
the reference's (`conv1.weight`, `layer1.0.conv1.weight`, ..., `linear.weight`), so its
checkpoints load as they are. The reference's fixed 4x4 average pool is an adaptive pool here:
the same function on 32x32 inputs, and any other input size works too."""
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models import register
from pipeline.models.layers import CifarNet, scaled


def projection(cin, cout, stride):
    """The shortcut: identity (an empty Sequential, as the reference) unless the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(cin, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # the stride sits on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = projection(cin, self.expansion * planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(CifarNet):
    def __init__(self, block, depths, num_classes, in_channels=3, width=1.0, pool_module=False):
        super().__init__()
        cin = scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 1 and i == 0 else 1  # the first block of layers 2-4 halves the size
                blocks.append(block(cin, scaled(planes, width), stride))
                cin = scaled(planes, width) * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, num_classes)
        # The reference's ResNet50 registers its pool as a module after `linear` (ResNet18 calls
        # F.avg_pool2d); kept so the module tree is the reference's. It has no weights.
        self.avg_pool = nn.AdaptiveAvgPool2d(1) if pool_module else None

    def forward_features(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1)


@register("resnet18")
def resnet18(num_classes, in_channels=3, width=1.0):
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, width)


@register("resnet50")
def resnet50(num_classes, in_channels=3, width=1.0):
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, width, pool_module=True)
