"""The pipeline's stages, one function each, on the project layout of layout.py."""
import json
import os

from . import cache, checkpoint, data as datasets, distributed
from .checkpoint import RunDir
from .config import FolderSpec, identity_change
from .errors import TfkdError
from .files import sha256_file
from .layout import cache_path, index_path, prepared_path, run_dir, skip, write_summary  # noqa: F401 (re-exported)
from .train import DeviceData, evaluate, fit


def load_data(dataset):
    return datasets.load(prepared_path(dataset))


def run_data(cfg, device, workers=None):
    """The data of run `cfg`: a prepared dataset resident on the device (train.DeviceData), or an
    indexed ImageFolder (data/prepared/NAME.index.json) streamed from its files (FolderData)."""
    folder = os.path.exists(index_path(cfg.dataset)) and not os.path.exists(prepared_path(cfg.dataset))
    spec = cfg.aug_spec
    if folder != isinstance(spec, FolderSpec):
        have = f"the ImageFolder index {index_path(cfg.dataset)}" if folder else f"{prepared_path(cfg.dataset)}"
        want = "{size, resize, min_scale}" if folder else "{pad, flip, rotate}"
        raise TfkdError(f"{cfg.role}.{cfg.name}: dataset {cfg.dataset} is {have}, but augment has {cfg.augment}: "
                        f"give it augment keys {want}")
    if not folder:
        return DeviceData(load_data(cfg.dataset), device)
    from . import imagefolder
    return imagefolder.FolderData(imagefolder.load_index(index_path(cfg.dataset)), cfg.dataset, device, spec, workers)


def external_data(path, device, workers=None):
    """A prepared dataset file (.npz) or an ImageFolder index (.index.json, streamed with the
    reference's evaluation view) given by path, as run_data() gives it."""
    if not str(path).endswith(".index.json"):
        return DeviceData(datasets.load(path), device)
    from . import imagefolder
    name = os.path.basename(str(path)).removesuffix(".index.json")
    return imagefolder.FolderData(imagefolder.load_index(path), name, device, FolderSpec(), workers)


def each_seed(params, name, seeds, device, workers=None):
    """(config, its data on the device or streamed) of experiment `name` for each seed, loaded once."""
    ddata = None
    for seed in seeds or params.seeds:
        cfg = params.config(name, seed)
        if ddata is None:
            ddata = run_data(cfg, device, workers)
        yield cfg, ddata


def run_experiment(params, name, seeds, device, overwrite=False, log=print, sync_bn=False, graph=None, compile=None,
                   workers=None):
    """Train experiment `name` (a train or distill entry) for each seed; distill reads its cache."""
    world = distributed.current()
    log = world.quiet(log)
    if skip(params, name, log):
        return []
    results = []
    for cfg, ddata in each_seed(params, name, seeds, device, workers):
        seed, teacher, upstream = cfg.seed, None, None
        if cfg.role == "distill":
            path = cache_path(name, seed)
            cache.read_attrs(path)  # a missing cache is named as one, before its teacher
            ckpt_path, tcfg = teacher_checkpoint_path(params, cfg)
            streamed = getattr(ddata, "streamed", False)  # then each rank reads its rows, step by step
            rows, attrs = cache.load(path, ddata.data, cfg.cache_policy, cfg.run_key, cfg.epochs, cfg.aug_spec,
                                     teacher_attrs(ckpt_path, tcfg, ddata.data, bool(cfg.teacher_file)), cfg.cache_topk,
                                     cfg.cache_tail_bits, fix=f"rerun tfkd cache {name}", resident=not streamed)
            teacher = (cache.StreamTeacher if streamed else cache.CacheTeacher)(rows, device, cfg.temperature)
            upstream = {"teacher_checkpoint": attrs["checkpoint_sha256"]}  # a retrained teacher: redo
        results.append(fit(cfg, ddata, run_dir(name, seed), device, teacher, overwrite, log,
                           sync_bn=sync_bn, graph=graph, compile=compile, upstream=upstream))
    if world.is_main:
        write_summary(params, name, [s for s in params.seeds
                                     if os.path.exists(os.path.join(run_dir(name, s), "metrics.json"))])
    return results


def teacher_checkpoint_path(params, cfg):
    """The checkpoint file a distill run's teacher entry names, and how it was chosen."""
    tcfg = params.config(cfg.teacher, cfg.seed)
    if cfg.teacher_file:
        return cfg.teacher_file, tcfg
    choice = str(cfg.teacher_checkpoint)
    folder = run_dir(cfg.teacher, cfg.seed)
    if choice == "best":
        return os.path.join(folder, "best.pt"), tcfg
    epoch = tcfg.epochs if choice == "final" else int(tcfg.checkpoints.get(choice, choice))
    if epoch not in tcfg.save_epochs:
        raise TfkdError(f"distill.{cfg.name}: teacher {cfg.teacher} keeps no checkpoint after epoch {epoch} "
                        f"(it keeps {tcfg.save_epochs}); add it to the teacher's checkpoints")
    return os.path.join(folder, f"epoch_{epoch:04d}.pt"), tcfg


def make_cache(params, name, seeds, device, log=print, graph=None, compile=None, workers=None):
    """Write cache/<name>/s<seed>.h5 for distill experiment `name`: its teacher's logits."""
    world = distributed.current()
    log = world.quiet(log)
    if params.role_of(name) != "distill":
        raise TfkdError(f"{name} is a train experiment; 'tfkd cache' takes a distill experiment")
    if skip(params, name, log, "cache"):
        return []
    paths = []
    for cfg, ddata in each_seed(params, name, seeds, device, workers):
        seed, data = cfg.seed, ddata.data
        ckpt_path, tcfg = teacher_checkpoint_path(params, cfg)
        teacher_ready(cfg, ckpt_path, tcfg, data)
        model, ckpt = checkpoint.load_model(ckpt_path, tcfg.model, tcfg.width, data.num_classes, data.channels)
        if ckpt.get("dataset_fingerprint", data.fingerprint) != data.fingerprint:
            raise TfkdError(f"teacher checkpoint {ckpt_path} was trained on other data "
                            f"({ckpt.get('dataset')}); retrain the teacher on {data.name}")
        if "model_name" in ckpt and not cfg.teacher_file and ckpt.get("digest") != tcfg.digest(data.fingerprint):
            why = identity_change(ckpt.get("identity"), tcfg.run_identity(data.fingerprint)) or "with other settings"
            raise TfkdError(f"teacher {cfg.teacher}'s run was trained {why}; retrain it: "
                            f"tfkd train {cfg.teacher} --overwrite")
        out = cache_path(name, seed)
        want = cache.expected(data, cfg.cache_policy, cfg.run_key, cfg.epochs, cfg.aug_spec,
                              teacher_attrs(ckpt_path, tcfg, data, bool(cfg.teacher_file)), cfg.cache_topk,
                              cfg.cache_tail_bits)

        def fresh():
            try:
                cache.check(out, want)
                return True
            except TfkdError:
                return False
        if world.on_main(fresh):
            log(f"[{name} s{seed}] cache up to date: {out}")
        else:
            attrs = describe_teacher(model.to(device), ddata, ckpt_path, ckpt, tcfg.model, tcfg.width,
                                     str(cfg.teacher_checkpoint), seed, cfg.to_dict(), cfg.eval_batch_size)
            form = (f", compact top-{cfg.cache_topk}" if cfg.cache_topk else "") + \
                (f", tail coded to {cfg.cache_tail_bits} bits" if cfg.cache_tail_bits else "")
            log(f"[{name} s{seed}] caching {tcfg.model} ({ckpt_path}, test {attrs['teacher_test_acc']:.2f}%) "
                f"-> {out} [{cfg.cache_policy}{form}]")
            cache.write(out, model, ddata, cfg.cache_policy, attrs, cfg.run_key, cfg.epochs, cfg.aug_spec, log=log,
                        graph=graph, compile=compile, compact_k=cfg.cache_topk,
                        compact_bits=cfg.cache_tail_bits)
        paths.append(out)
    return paths


def describe_teacher(model, ddata, ckpt_path, ckpt, model_name, width, choice, seed, params_dict, eval_batch_size):
    """A cache's attributes about its teacher, its test accuracy measured here (one evaluation pass)."""
    _, acc = evaluate(model, ddata, eval_batch_size)
    return {"teacher_model": model_name, "teacher_width": float(width), "checkpoint_path": ckpt_path,
            "checkpoint_sha256": sha256_file(ckpt_path), "checkpoint_epoch": int(ckpt.get("epoch", -1)),
            "checkpoint_choice": choice, "teacher_test_acc": float(acc), "seed": int(seed),
            "params": json.dumps(params_dict, sort_keys=True),
            **({"teacher_digest": ckpt["digest"]} if ckpt.get("digest") else {})}


def teacher_attrs(ckpt_path, tcfg, data, external=False):
    """What a cache records of its teacher, for cache.expected: the checkpoint file's content and
    (not for an `external` weights file) the digest of the teacher entry's run as params.yaml has it now."""
    if not os.path.exists(ckpt_path):
        how = "put the weights file there" if external else f"train the teacher first (tfkd train {tcfg.name})"
        raise TfkdError(f"teacher checkpoint {ckpt_path} not found: {how}")
    return {"checkpoint_sha256": sha256_file(ckpt_path),
            "teacher_digest": None if external else tcfg.digest(data.fingerprint)}


def teacher_ready(cfg, ckpt_path, tcfg, data):
    """`best` is a teacher's best checkpoint only once its run has finished (with these settings)."""
    if str(cfg.teacher_checkpoint) != "best":
        return
    finished = RunDir(os.path.dirname(ckpt_path)).finished()
    if not finished or finished.get("config_digest") != tcfg.digest(data.fingerprint):
        raise TfkdError(f"teacher {cfg.teacher} has not finished training with its current settings "
                        f"({os.path.dirname(ckpt_path)}/metrics.json), so {ckpt_path} is only its best so far; "
                        f"finish it first: tfkd train {cfg.teacher}")
