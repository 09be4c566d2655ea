"""tfkd: knowledge distillation via label smoothing regularisation, as a two-stage logit-cache pipeline."""
__version__ = "0.1.0"
