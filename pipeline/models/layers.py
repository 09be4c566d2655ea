"""What every model of the zoo shares: the features/head split (timm's names) and the width rounding."""
import torch.nn as nn


def scaled(channels, width, divisor=1):
    """`channels * width` rounded to a multiple of `divisor` (and at least `divisor`), so that
    tiny widths still build and grouped convs / channel splits stay divisible."""
    return max(divisor, int(round(channels * width / divisor)) * divisor)


class CifarNet(nn.Module):
    """A zoo model: `forward_features(x)` is everything up to the pooled features, `forward_head(f)`
    the classifier, the child module named by `classifier_name`. The precision policy runs the first
    under bf16 autocast on a GPU and the second in fp32; `forward` is the reference's function."""

    classifier_name = "linear"

    def forward_features(self, x):
        raise NotImplementedError

    def forward_head(self, features):
        return getattr(self, self.classifier_name)(features.flatten(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
