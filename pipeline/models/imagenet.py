"""torchvision's ImageNet networks by name, 'tv_' + torchvision's builder name (models.TORCHVISION):
tv_resnet18, tv_resnet50, tv_resnet101, tv_resnext101_32x8d, tv_densenet121, tv_mobilenet_v2. The
prefix keeps them apart from the CIFAR zoo's networks of the same families (resnet18, densenet121, ...).

Each is the very module torchvision's builder makes (weights=None: never a download), so its
state_dict keys, shapes and order, its initialisation and its forward are torchvision's own: a
torchvision weights file, torch.save(torchvision.models.resnet50().state_dict(), f), loads strictly
as checkpoint.py loads every file, and our checkpoints' weights load into torchvision. Its class is
then swapped for a subclass adding only the zoo's split (CifarNet's) for the precision policy:
forward_features, the body up to the pooling, and forward_head, flatten and the classifier. Any
class count; width 1.0 and 3 input channels only (build_model refuses others).
"""
import torch.nn.functional as F
import torchvision.models

from pipeline.models.layers import CifarNet


# torchvision's class first, so that `forward` is torchvision's; CifarNet's forward_head flattens and
# classifies, as torchvision's forward does after the pooling. Methods only: no modules, no state.
class ResNet(torchvision.models.ResNet, CifarNet):  # ResNet and ResNeXt
    classifier_name = "fc"

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class DenseNet(torchvision.models.DenseNet, CifarNet):
    classifier_name = "classifier"

    def forward_features(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.features(x), inplace=True), (1, 1))


class MobileNetV2(torchvision.models.MobileNetV2, CifarNet):
    classifier_name = "classifier"  # Sequential(Dropout, Linear): the dropout is in the fp32 head

    def forward_features(self, x):
        return F.adaptive_avg_pool2d(self.features(x), (1, 1))


SPLIT = {cls.__bases__[0]: cls for cls in (ResNet, DenseNet, MobileNetV2)}  # torchvision's class -> ours


def build(name, num_classes):
    """`name` ('tv_resnet50') as torchvision's builder makes it, at `num_classes`, with the split."""
    model = getattr(torchvision.models, name.removeprefix("tv_"))(weights=None, num_classes=num_classes)
    model.__class__ = SPLIT[type(model)]  # methods only: the weights and their init stay the builder's
    return model
