"""The results version of the code: part of every run's identity and every cache's attributes.

Bump RESULTS_VERSION whenever a change can move a number a run or a cache computes (the models,
the losses, the augmentation, the schedule, the training step): finished runs and caches of the
old version are then redone under `--overwrite` / `dvc repro`, or refused in one line without it.
"""
RESULTS_VERSION = 2  # 1: everything before the named-module zoo (reference keys and functions)
