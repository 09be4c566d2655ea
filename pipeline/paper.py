"""The paper's CIFAR-100 top-1 (%) as data, keyed by our experiment names in params.yaml.

Source: Yuan et al., CVPR 2020, Tables 1-5 (also the README of the reference code,
github.com/yuanli2333/Teacher-free-Knowledge-Distillation). A value is (mean, std); std is None where the paper
gives a single number. The paper reports best-of-epochs test accuracy.
"""

# Baselines, by model (Table 1 and the README). GoogLeNet: see NOTES.
BASELINE = {"mobilenetv2": 68.38, "shufflenetv2": 70.34, "resnet18": 75.87, "resnet50": 78.16,
            "googlenet": 78.72, "densenet121": 79.04, "resnext29": 81.03}

PAPER = {f"base_{model}": (top1, None) for model, top1 in BASELINE.items()}
PAPER.update({
    # Normal KD, teacher -> student (Table 1); the last two appear only in Table 5
    "kd_resnet18_mobilenetv2": (71.05, 0.16), "kd_resnet18_shufflenetv2": (72.05, 0.13),
    "kd_resnet50_mobilenetv2": (71.04, 0.20), "kd_resnet50_shufflenetv2": (72.15, 0.18),
    "kd_densenet121_mobilenetv2": (71.29, 0.23), "kd_densenet121_shufflenetv2": (72.32, 0.25),
    "kd_resnext29_mobilenetv2": (71.65, 0.41), "kd_resnext29_resnet18": (77.84, 0.15),
    "kd_resnet50_resnet18": (77.19, None), "kd_resnext29_googlenet": (78.84, None),
    # Re-KD, the weaker model teaches the stronger one (Table 2)
    "rekd_mobilenetv2_resnet18": (77.28, 0.28), "rekd_shufflenetv2_resnet18": (77.35, 0.32),
    "rekd_mobilenetv2_resnet50": (79.30, 0.11), "rekd_shufflenetv2_resnet50": (79.43, 0.39),
    "rekd_mobilenetv2_densenet121": (79.55, 0.11), "rekd_shufflenetv2_densenet121": (79.83, 0.05),
    "rekd_mobilenetv2_resnext29": (81.53, 0.14), "rekd_resnet18_resnext29": (81.62, 0.22),
    # De-KD, a poorly-trained teacher (Table 3)
    "dekd_resnet18e1_mobilenetv2": (70.65, 0.35), "dekd_resnet18e1_shufflenetv2": (71.82, 0.11),
    "dekd_resnet50e50_mobilenetv2": (71.45, 0.23), "dekd_resnet50e50_shufflenetv2": (72.11, 0.09),
    "dekd_resnet50e50_resnet18": (77.23, 0.11), "dekd_resnext29e50_mobilenetv2": (71.52, 0.27),
    "dekd_resnext29e50_shufflenetv2": (72.26, 0.36), "dekd_resnext29e50_resnet18": (77.28, 0.17),
    # Tf-KD self (Table 4)
    "self_mobilenetv2": (70.96, None), "self_shufflenetv2": (72.23, None), "self_resnet18": (77.10, None),
    "self_googlenet": (80.17, None), "self_densenet121": (80.26, None), "self_resnext29": (82.08, None),
    # Tf-KD reg and label smoothing (Table 5)
    "reg_mobilenetv2": (70.88, None), "reg_shufflenetv2": (72.09, None),
    "reg_resnet18": (77.36, None), "reg_googlenet": (79.22, None),
    "lsr_mobilenetv2": (69.32, None), "lsr_shufflenetv2": (70.83, None),
    "lsr_resnet18": (77.26, None), "lsr_googlenet": (79.07, None),
})

# ImageNet (params.yaml profile imagenet). The paper's per-model ImageNet table is not in the sources
# this project holds: what is published elsewhere is given, the rest is unknown (None).
PAPER.update({
    # torchvision's published top-1 for these networks trained by this very recipe (IMAGENET1K_V1
    # weights): what a baseline run should reach; not the paper's own baselines
    "imagenet_base_resnet18": (69.758, None), "imagenet_base_resnet50": (76.130, None),
    "imagenet_base_resnext101": (79.312, None),
    "imagenet_self_resnet18": (70.42, None),  # the paper, as torchdistill cites it (torchdistill: 70.52)
    **{f"imagenet_{m}_{net}": (None, None) for m in ("lsr", "reg") for net in ("resnet18", "resnet50", "resnext101")},
    "imagenet_self_resnet50": (None, None), "imagenet_self_resnext101": (None, None),
})

# Table 5 measures its GoogLeNet gains from 78.15, not 78.72: the paper's gain uses the baseline
# of the table the number comes from.
GAIN_BASELINE = {"reg_googlenet": 78.15, "lsr_googlenet": 78.15, "kd_resnext29_googlenet": 78.15}

NOTES = {
    "base_googlenet": "78.72 in Tables 1/4; the reg/LSR table (Table 5) says 78.15",
    "kd_resnet50_resnet18": "from Table 5 only",
    "kd_resnext29_googlenet": "from Table 5 only; it prints +0.99, 78.84 - 78.15 is +0.69",
    "dekd_resnet18e1_mobilenetv2": "teacher ResNet18 after 1 epoch: 15.48",
    "dekd_resnet18e1_shufflenetv2": "teacher ResNet18 after 1 epoch: 15.48",
    "dekd_resnet50e50_mobilenetv2": "teacher ResNet50 after 50 epochs: 45.82; Table 3 prints +3.09",
    "dekd_resnet50e50_shufflenetv2": "teacher ResNet50 after 50 epochs: 45.82",
    "dekd_resnet50e50_resnet18": "teacher ResNet50 after 50 epochs: 45.82; Table 3 prints +1.23",
    "dekd_resnext29e50_mobilenetv2": "teacher ResNeXt29 after 50 epochs: 51.94",
    "dekd_resnext29e50_shufflenetv2": "teacher ResNeXt29 after 50 epochs: 51.94",
    "dekd_resnext29e50_resnet18": "teacher ResNeXt29 after 50 epochs: 51.94",
    **{name: "torchvision's published top-1 for this recipe (IMAGENET1K_V1), not the paper's"
       for name in ("imagenet_base_resnet18", "imagenet_base_resnet50", "imagenet_base_resnext101")},
    "imagenet_self_resnet18": "the paper's 70.42 as torchdistill's README cites it",
    **{f"imagenet_{m}_resnext101": "unknown: the paper says Tf-KD improves ResNeXt101-32x8d by 0.48 % "
       "without naming the variant" for m in ("self", "reg")},
    **{f"imagenet_{m}_{net}": "unknown: no published number" for m, net in
       (("lsr", "resnet18"), ("lsr", "resnet50"), ("lsr", "resnext101"), ("reg", "resnet18"), ("reg", "resnet50"),
        ("self", "resnet50"))},
}

# The paper's tables, in order, as (title, name prefixes). `kd_` matches only normal KD: the other
# prefixes (rekd_, dekd_) do not start with it.
TABLES = [
    ("Baselines", ("base_",)),
    ("Normal KD and Re-KD (Table 1/2)", ("kd_", "rekd_")),
    ("De-KD (Table 3)", ("dekd_",)),
    ("Tf-KD self (Table 4)", ("self_",)),
    ("Tf-KD reg vs LSR (Table 5)", ("reg_", "lsr_")),
    ("ImageNet (profile imagenet)", ("imagenet_",)),
]
OTHER = "Other experiments"


def table_of(name):
    """The title of the paper table an experiment belongs to, from its name's prefix."""
    return next((title for title, prefixes in TABLES if name.startswith(prefixes)), OTHER)


def paper_top1(name):
    """(mean, std) the paper reports for experiment `name`, or (None, None)."""
    return PAPER.get(name, (None, None))


def paper_gain(name, model):
    """The paper's gain of `name` over its model's baseline, or None where unknown."""
    top1 = PAPER.get(name, (None,))[0]
    base = GAIN_BASELINE.get(name, BASELINE.get(model))
    if top1 is None or base is None or name.startswith("base_"):
        return None
    return round(top1 - base, 2)
