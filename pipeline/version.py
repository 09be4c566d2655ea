"""The results version of the code: part of every run's identity and every cache's attributes.

Bump RESULTS_VERSION whenever a change can move a number a run or a cache computes (the models,
the losses, the augmentation, the schedule, the training step): finished runs and caches of the
old version are then redone under `--overwrite` / `dvc repro`, or refused in one line without it.

Why it must be bumped: dvc.yaml lists `pipeline` as a dependency of every train/cache/distill
stage, so any code change reruns the stage, but tfkd itself redoes a finished run only when its
identity changed (its settings, the dataset fingerprint or RESULTS_VERSION; a cache likewise,
by its attributes). A change that can move numbers without a bump leaves the old results standing.
RESULTS_FILES records the content of the code that can move numbers; tests/test_version.py fails
when one of those files changed, so each such change is looked at: bump RESULTS_VERSION if it can
move a number, then paste the table the failure prints.
"""
import glob
import os

RESULTS_VERSION = 2  # 1: everything before the named-module zoo (reference keys and functions)

# The code whose change can move a number, by content (sha256[:12]); tests/test_version.py fails
# when one differs, so the change is looked at: bump RESULTS_VERSION if it can move a number.
RESULTS_GLOBS = ("pipeline/models/*.py", "pipeline/losses.py", "pipeline/augment.py", "pipeline/step.py",
                 "pipeline/train.py", "pipeline/precision.py", "pipeline/cache.py", "pipeline/imagefolder.py",
                 "pipeline/compact.py")
RESULTS_FILES = {
    'pipeline/augment.py': '27da7c0915e2',
    'pipeline/cache.py': 'd960cef1bd2a',
    'pipeline/compact.py': '3228770c717a',
    'pipeline/imagefolder.py': '26a9a8474683',
    'pipeline/losses.py': '8a1ab74bea33',
    'pipeline/models/__init__.py': 'ddbf2e6d4c0d',
    'pipeline/models/densenet.py': '827d6eab3d3c',
    'pipeline/models/googlenet.py': '06e30f4fc467',
    'pipeline/models/imagenet.py': '05455bc31373',
    'pipeline/models/layers.py': '2ab13230f7bc',
    'pipeline/models/mobilenetv2.py': '9b6c0f021415',
    'pipeline/models/resnet.py': '9def6caf23e7',
    'pipeline/models/resnext.py': '5cac6408ac1b',
    'pipeline/models/shufflenetv2.py': '9eaac7799097',
    'pipeline/precision.py': '5ee42f87584f',
    'pipeline/step.py': '45b3e8454073',
    'pipeline/train.py': 'a0b077dbe9e7',
}


def results_files(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    """The repository-relative paths of RESULTS_GLOBS, sorted."""
    return sorted(os.path.relpath(p, root).replace(os.sep, "/")
                  for g in RESULTS_GLOBS for p in glob.glob(os.path.join(root, g)))
