"""The precision policy: bf16 autocast for a model's body on a GPU, its classifier in fp32."""
import torch


class PrecisionPolicy(torch.nn.Module):
    """`model` under the precision policy, as one module that DistributedDataParallel can wrap and
    torch.compile trace whole: logits in fp32; on the GPU the body runs under bf16 autocast and the
    classifier head in fp32; on the CPU everything is plain fp32 (bf16 would only slow it down).
    The split is the model's own: forward_features is the body, forward_head the classifier.
    It shares `model`'s parameters; checkpoints hold `model`'s own state_dict."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        if x.device.type != "cuda":
            return self.model(x)
        # No autocast weight cache: it must be off inside a CUDA graph, and each weight is cast once anyway.
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            features = self.model.forward_features(x)
        return self.model.forward_head(features.float())
