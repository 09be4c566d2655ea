"""params.yaml -> validated, fully resolved settings for one run. The one source of truth.

Layout of params.yaml:
    profile: smoke                 # which entry of `profiles` is active (dvc exp run -S profile=paper)
    profiles: {NAME: {dataset, source, epochs, width, checkpoints, cache_policy, only, defaults}}
    seeds: [230]                   # every experiment runs once per seed
    defaults: {...}                # the reference recipe; any experiment may override a key
    train:   {EXP: {model, method: ce|lsr|reg, ...}}        # models trained from scratch
    distill: {EXP: {model, teacher: TRAIN_EXP, ...}}        # students trained from a cache

A profile's `defaults` override the top-level ones for its runs (the ImageNet recipe). An entry
that names its own `dataset` belongs to the profiles of that dataset: the imagenet profile runs
the entries that say `dataset: imagenet`, a CIFAR profile those that name no dataset.
Unknown keys are errors (with a suggestion), never silently ignored.
"""
import difflib
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields

import yaml

from .errors import TfkdError
from .version import RESULTS_VERSION

REFERENCE_BATCH = 128  # the batch the reference's learning rates are for: lr scales linearly with batch_size
FORMS = ("reference", "paper")  # the loss forms of losses.py
METHODS = {"train": ("ce", "lsr", "reg"), "distill": ("kd",)}  # losses.py's, by role


@dataclass(frozen=True)
class AugmentSpec:
    """The augmentation a run's views get (augment.py applies it on the device)."""
    pad: int = 4          # random crop with this much zero padding (0 = no crop)
    flip: bool = True     # random horizontal flip
    rotate: float = 15.0  # random rotation in [-rotate, +rotate] degrees (0 = none)


@dataclass(frozen=True)
class FolderSpec:
    """The views of a streamed ImageFolder run (imagefolder.py), torchvision's reference recipe."""
    size: int = 224          # RandomResizedCrop / CenterCrop size
    resize: int = 256        # evaluation (and clean-cache) views: shorter side first resized to this
    min_scale: float = 0.08  # RandomResizedCrop's smallest area fraction


SPECS = (AugmentSpec, FolderSpec)  # `augment` holds the keys of one of them


def _run_key(seed, identity):
    """A 32-bit key from the seed and the run's identity (experiment name and role)."""
    digest = hashlib.sha256(f"{int(seed)}/{identity}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


TOP_KEYS = ("profile", "profiles", "seeds", "defaults", "train", "distill")
PROFILE_KEYS = ("dataset", "source", "epochs", "width", "checkpoints", "cache_policy", "only", "note", "defaults")
PROFILE_SETTINGS = ("dataset", "epochs", "width", "checkpoints", "cache_policy")  # over defaults, under entries
RESERVED_NAMES = ("results",)
NOT_IN_IDENTITY = ("note",)      # documentation only: editing it leaves a finished run finished
# Settings added after results version 2 enter a run's identity only when set to other than this
# default, so that runs finished before they existed stay finished.
SINCE_V2 = {"cache_topk": 0, "cache_tail_bits": 0}
POLICIES = ("clean", "replay")
TAIL_BITS = (0, 1, 2, 4, 8)  # cache_tail_bits: 0, the tail model; else whole codes to a byte (compact.py)


@dataclass
class RunConfig:
    """Everything that decides a run's numbers (and nothing that does not, e.g. the device)."""
    name: str
    role: str                      # train | distill
    model: str
    method: str = "ce"             # ce | lsr | reg | kd
    seed: int = 230
    dataset: str = "embedded"
    width: float = 1.0
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1                # the reference's learning_rate, per REFERENCE_BATCH samples (see step_lr)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    milestones: tuple = (0.3, 0.6, 0.8)   # fractions of the epochs: 60/120/160 of 200
    gamma: float = 0.2
    alpha: float = 0.0
    temperature: float = 1.0
    multiplier: float = 1.0
    label_smoothing: float = 0.1
    correct_prob: float = 0.99
    loss_form: str = "reference"
    augment: dict = field(default_factory=lambda: asdict(AugmentSpec()))
    checkpoints: dict = field(default_factory=lambda: {"one_epoch": 1, "fifty_epoch": 50})
    teacher: str = ""              # distill: the train experiment whose run teaches
    teacher_checkpoint: str = "final"  # final | best | a name in `checkpoints` | an epoch number | a file
    cache_policy: str = "replay"   # clean | replay
    cache_topk: int = 0            # > 0: the cache keeps each row's top-k and a tail model (compact.py)
    cache_tail_bits: int = 0       # > 0 (1, 2, 4, 8): with cache_topk, every logit coded to this many bits
    eval_batch_size: int = 1000
    note: str = ""                 # why an entry differs from the reference config (documentation)

    @property
    def step_lr(self):
        return self.lr * self.batch_size / REFERENCE_BATCH

    @property
    def milestone_epochs(self):
        return sorted({max(1, round(f * self.epochs)) for f in self.milestones})

    @property
    def save_epochs(self):
        """Epochs after which a checkpoint is kept: the named ones (capped at the end) and the last."""
        return sorted({min(int(e), self.epochs) for e in self.checkpoints.values()} | {self.epochs})

    @property
    def teacher_file(self):
        """teacher_checkpoint as a file of weights (e.g. torchvision's resnet50 state_dict), or None:
        the teacher entry names the architecture, the file holds the weights, its run is not used."""
        tc = str(self.teacher_checkpoint)
        return tc if tc.endswith((".pt", ".pth", ".pth.tar")) else None

    @property
    def aug_spec(self):
        """AugmentSpec (CIFAR-size data on the device) or FolderSpec (a streamed ImageFolder)."""
        return _spec_of(self.augment)(**self.augment)

    @property
    def identity(self):
        """Seeds the run key: a student never replays its teacher's own training views."""
        return f"{self.role}/{self.name}"

    @property
    def run_key(self):
        """The key of this run's augmentation and sample order (and of its replay cache): the one
        place it is derived. Seeded by `identity`: a student never replays its teacher's views."""
        return _run_key(self.seed, self.identity)

    def to_dict(self):
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def run_identity(self, dataset_fingerprint, **upstream):
        """Everything the run's numbers are computed from: its settings (all but `note`), the
        dataset's content, the results version of the code and any `upstream` inputs (a
        student's teacher_checkpoint: the sha256 of the checkpoint its cache was made from).
        Stored with the results (metrics.json, checkpoints), so a refusal names what differs."""
        settings = {k: v for k, v in self.to_dict().items()
                    if k not in NOT_IN_IDENTITY and not (k in SINCE_V2 and v == SINCE_V2[k])}
        return dict(upstream, settings=settings, dataset_fingerprint=dataset_fingerprint,
                    results_version=RESULTS_VERSION)

    def digest(self, dataset_fingerprint, **upstream):
        """Hash of run_identity(): resume into, or skip as finished, only the same run."""
        return identity_digest(self.run_identity(dataset_fingerprint, **upstream))

    def validate(self):
        where = f"{self.role}.{self.name}"
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.width > 0, "width", "must be > 0"),
            (0 <= self.alpha <= 1, "alpha", "must be in [0, 1]"),
            (self.temperature > 0, "temperature", "must be > 0"),
            (self.multiplier > 0, "multiplier", "must be > 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)"),
            (0 < self.correct_prob <= 1, "correct_prob", "must be in (0, 1]"),
            (self.loss_form in FORMS, "loss_form", f"must be one of {', '.join(FORMS)}"),
            (self.cache_policy in POLICIES, "cache_policy", f"must be one of {', '.join(POLICIES)}"),
            (self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0"),
            (all(0 < f < 1 for f in self.milestones), "milestones", "must be fractions in (0, 1)"),
            (all(int(e) >= 1 for e in self.checkpoints.values()), "checkpoints", "epochs must be >= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1"),
            (self.cache_topk >= 0, "cache_topk", "must be >= 0 (0: full rows)"),
            (self.cache_tail_bits in TAIL_BITS and (self.cache_topk or not self.cache_tail_bits),
             "cache_tail_bits", "must be 1, 2, 4 or 8 with cache_topk > 0, or 0 (the tail model)"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise TfkdError(f"params.yaml {where}: {key} = {getattr(self, key)!r} {why}")
        methods = METHODS[self.role]
        if self.method not in methods:
            raise TfkdError(f"params.yaml {where}: unknown method {self.method!r} for a {self.role} "
                            f"experiment; use one of: {', '.join(methods)}")
        spec = _spec_of(self.augment)
        unknown = set(self.augment) - {f.name for f in fields(spec)}
        if unknown:
            known = " or ".join("{" + ", ".join(f.name for f in fields(s)) + "}" for s in SPECS)
            raise TfkdError(f"params.yaml {where}: unknown augment key {sorted(unknown)[0]!r}; known: {known} "
                            f"(in-memory data or a streamed ImageFolder, not both)")
        if self.role == "distill":
            tc = self.teacher_checkpoint
            if not (tc in ("final", "best") or tc in self.checkpoints or str(tc).isdigit() or self.teacher_file):
                raise TfkdError(f"params.yaml {where}: teacher_checkpoint {tc!r} is unknown; use final, "
                                f"best, an epoch number, a weights file (PATH.pth) or one of: "
                                f"{', '.join(self.checkpoints)}")
        return self


def _spec_of(augment):
    """The spec class whose keys `augment` uses (FolderSpec's are all its own)."""
    return FolderSpec if set(augment) & {f.name for f in fields(FolderSpec)} else AugmentSpec


def identity_digest(identity):
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _short(fingerprint):
    return f"{fingerprint[:4]}…" if isinstance(fingerprint, str) else f"{fingerprint}"


def identity_change(old, new):
    """How run identity `old` differs from `new`, as words that follow "was computed ...":
    "from other data (fingerprint ab12… → cd34…)", "by results version 1, this is 2",
    "with other settings (lr 0.1 → 0.05)". None when nothing differs."""
    if not isinstance(old, dict):
        return "by an older tfkd that recorded no identity"
    if old.get("results_version") != new["results_version"]:
        return f"by results version {old.get('results_version')}, this is {new['results_version']}"
    if old.get("dataset_fingerprint") != new["dataset_fingerprint"]:
        return (f"from other data (fingerprint {_short(old.get('dataset_fingerprint'))} → "
                f"{_short(new['dataset_fingerprint'])})")
    for key in sorted((set(old) | set(new)) - {"settings", "dataset_fingerprint", "results_version"}):
        if old.get(key) != new.get(key):
            return (f"from another {key.replace('_', ' ')} ({_short(old.get(key))} → {_short(new.get(key))})")
    was, now = old.get("settings") or {}, new["settings"]
    changed = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    if changed:
        parts = [f"{k} {was.get(k, '(unset)')} → {now.get(k, '(unset)')}" for k in changed[:3]]
        more = f", +{len(changed) - 3} more" if len(changed) > 3 else ""
        return f"with other settings ({', '.join(parts)}{more})"
    return None


RUN_KEYS = tuple(f.name for f in fields(RunConfig) if f.name not in ("name", "role", "seed"))


# The one place that checks value types: each RunConfig field's declared type (and AugmentSpec's for
# `augment`), so a field added to the dataclass is checked without a line here.
FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}
FIELD_TYPES.update(teacher_checkpoint=(str, int), source=str, only=list)  # an epoch number; profile keys
ITEM_TYPES = {"milestones": float, "checkpoints": int, "only": str,
              "augment": {f.name: f.type for spec in SPECS for f in fields(spec)}}
NULLABLE = ("only", "source")  # profile keys where null means "every experiment" / "the default place"
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
              list: "a list", tuple: "a list", dict: "a mapping"}


def _show(value):
    return json.dumps(value) if isinstance(value, (str, bool)) else repr(value)


def _is(value, kind):
    if isinstance(kind, tuple) and kind is not tuple:
        return any(_is(value, k) for k in kind)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, list | tuple)
    return isinstance(value, kind)


def _check_type(value, kind, where):
    """Raise naming the full key path `where` unless `value` is of `kind` (items of lists / mappings too)."""
    if value is None:
        if where.rsplit(".", 1)[-1] in NULLABLE:
            return
        raise TfkdError(f"params.yaml {where}: has no value; give one or remove the key")
    if not _is(value, kind):
        kinds = kind if isinstance(kind, tuple) and kind is not tuple else (kind,)
        what = " or ".join(TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise TfkdError(f"params.yaml {where}: {_show(value)} is not {what}"
                        + (" (write numbers without quotes)" if float in kinds or int in kinds else ""))
    items = ITEM_TYPES.get(where.rsplit(".", 1)[-1])
    if isinstance(items, dict) and isinstance(value, dict):
        for key, item in value.items():
            if key in items:  # unknown augment keys are refused with a suggestion by RunConfig.validate
                _check_type(item, items[key], f"{where}.{key}")
    elif items is not None and isinstance(value, dict):
        for key, item in value.items():
            _check_type(item, items, f"{where}.{key}")
    elif items is not None and isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_type(item, items, f"{where}[{i}]")


def _check_types(d, where):
    for key, value in (d or {}).items():
        if key in FIELD_TYPES:
            _check_type(value, FIELD_TYPES[key], f"{where}.{key}")


class _Loader(yaml.SafeLoader):
    """yaml.safe_load as a user means it: 1e-3 and 5e-4 are numbers (YAML 1.1 reads them as strings
    for want of a dot), and a key given twice in one mapping is an error naming both lines."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: yaml's own error follows
                continue
            seen[key] = line
            if first is not None:
                raise TfkdError(f"{self.name}: key {key!r} is given twice in one mapping (lines {first} and "
                                f"{line}); keep one (or rename it)")
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def read_yaml(path):
    """The parsed file, or a one-line TfkdError with file:line for a syntax error."""
    with open(path) as f:
        loader = _Loader(f)
        loader.name = str(path)
        try:
            return loader.get_single_data()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise TfkdError(f"{where}: not valid YAML ({e.problem or e.context}); fix the syntax there") from None
        except yaml.YAMLError as e:
            raise TfkdError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        finally:
            loader.dispose()


def _unknown(key, known, where):
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return TfkdError(f"params.yaml {where}: unknown key {key!r}; {hint}")


def _check_keys(d, known, where):
    if not isinstance(d, dict):
        raise TfkdError(f"params.yaml {where}: expected a mapping, got {type(d).__name__}")
    for key in d:
        if key not in known:
            raise _unknown(key, known, where)


@dataclass
class Params:
    raw: dict
    path: str = "params.yaml"

    @classmethod
    def load(cls, path="params.yaml"):
        try:
            raw = read_yaml(path) or {}
        except FileNotFoundError:
            raise TfkdError(f"{path} not found: run from the project root or pass --params PATH")
        p = cls(raw, path)
        p.validate()
        return p

    def validate(self):
        """Refuse the first bad entry in one line. The checks below say "params.yaml"; a --params
        file of another name is named instead, so the user edits the file that was read."""
        try:
            self._validate()
        except TfkdError as e:
            msg = str(e)
            if self.path != "params.yaml" and msg.startswith("params.yaml"):
                raise TfkdError(str(self.path) + msg[len("params.yaml"):]) from None
            raise

    def _validate(self):
        r = self.raw
        _check_keys(r, TOP_KEYS, "top level")
        for name, prof in (r.get("profiles") or {}).items():
            _check_keys(prof, PROFILE_KEYS, f"profiles.{name}")
            _check_types(prof, f"profiles.{name}")
            _check_keys(prof.get("defaults") or {}, RUN_KEYS, f"profiles.{name}.defaults")
            _check_types(prof.get("defaults"), f"profiles.{name}.defaults")
        if self.profile_name not in (r.get("profiles") or {}):
            raise TfkdError(f"params.yaml: profile {self.profile_name!r} is not in profiles "
                            f"({', '.join(r.get('profiles') or {}) or 'none defined'})")
        _check_keys(r.get("defaults") or {}, RUN_KEYS, "defaults")
        _check_types(r.get("defaults"), "defaults")
        seeds = r.get("seeds", [230])
        if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
            raise TfkdError("params.yaml: seeds must be a non-empty list of integers, e.g. [230]")
        train, distill = r.get("train") or {}, r.get("distill") or {}
        for role, group in (("train", train), ("distill", distill)):
            for name, exp in group.items():
                if name in RESERVED_NAMES or name in (distill if role == "train" else {}):
                    raise TfkdError(f"params.yaml {role}.{name}: the name is reserved or used twice")
                _check_keys(exp or {}, RUN_KEYS, f"{role}.{name}")
                _check_types(exp, f"{role}.{name}")
                for seed in seeds:
                    self.config(name, seed)
        for name in self.profile.get("only") or []:
            if name not in train and name not in distill:
                raise TfkdError(f"params.yaml profiles.{self.profile_name}.only: no experiment {name!r}")

    @property
    def profile_name(self):
        return self.raw.get("profile", "smoke")

    @property
    def profile(self):
        return self.raw["profiles"][self.profile_name]

    @property
    def seeds(self):
        return list(self.raw.get("seeds", [230]))

    @property
    def dataset(self):
        return self.profile.get("dataset", "embedded")

    def experiments(self, role=None):
        roles = (role,) if role else ("train", "distill")
        return [n for r in roles for n in (self.raw.get(r) or {})]

    def role_of(self, name):
        for role in ("train", "distill"):
            if name in (self.raw.get(role) or {}):
                return role
        known = self.experiments()
        close = difflib.get_close_matches(name, known, n=1)
        raise TfkdError(f"no experiment {name!r} in {self.path}" +
                        (f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"))

    def selected(self, name):
        """Whether the active profile runs `name`: an entry of its dataset (see the module's doc) and
        in its `only` list, if it has one."""
        only = self.profile.get("only")
        return self.entry(name).get("dataset") == self.own_dataset and (only is None or name in only)

    def entry(self, name):
        return self.raw[self.role_of(name)][name] or {}

    @property
    def own_dataset(self):
        """The active profile's dataset if entries name it (they are that profile's), else None."""
        named = {(e or {}).get("dataset") for r in ("train", "distill") for e in (self.raw.get(r) or {}).values()}
        return self.dataset if self.dataset in named else None

    def _merged(self, entry):
        """Settings: defaults < profile < the profile's defaults < `entry` (RunConfig's below them all)."""
        merged = dict(self.raw.get("defaults") or {})
        for key in PROFILE_SETTINGS:
            if key in self.profile:
                merged[key] = self.profile[key]
        merged.update(self.profile.get("defaults") or {})
        merged.update(entry)
        return merged

    def common(self):
        """The settings every experiment of the active profile starts from (no entry's overrides)."""
        return RunConfig(name="", role="train", model="", **self._merged({}))

    def config(self, name, seed):
        """The resolved RunConfig of experiment `name` for one seed: defaults < profile < entry."""
        role = self.role_of(name)
        merged = self._merged(dict(self.raw[role][name] or {}))
        if "model" not in merged:
            raise TfkdError(f"params.yaml {role}.{name}: no model given; add e.g. 'model: resnet18'")
        if role == "distill":
            merged.setdefault("method", "kd")
            teacher = merged.get("teacher")
            if teacher not in (self.raw.get("train") or {}):
                raise TfkdError(f"params.yaml distill.{name}: teacher {teacher!r} is not a train "
                                f"experiment; known: {', '.join(self.experiments('train'))}")
        try:
            cfg = RunConfig(name=name, role=role, seed=seed, **merged)
        except TypeError as e:
            raise TfkdError(f"params.yaml {role}.{name}: {e}")
        if isinstance(cfg.milestones, list):
            cfg.milestones = tuple(cfg.milestones)
        try:
            return cfg.validate()
        except TypeError:
            raise TfkdError(f"params.yaml {role}.{name}: a value has the wrong type (numbers expected)")
