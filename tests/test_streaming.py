"""ImageNet-scale runs on this machine: an ImageFolder tree of real photographs (the embedded CIFAR-100
subset as 64 px JPEGs, data/imagefolder/build.py) streamed through prepare -> train -> cache (clean,
and replay in compact form) -> distill, in one process and with 2 gloo ranks, as a user runs them."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, one_line_error, tfkd
from pipeline import cache, checkpoint, compact, imagefolder
from pipeline.config import Params
from pipeline.distributed import World

_spec = importlib.util.spec_from_file_location("imagefolder_build", ROOT / "data/imagefolder/build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

PARAMS = """
profile: folder
profiles:
  folder:
    dataset: folder
    source: tree
    epochs: 3
    width: 1.0
    checkpoints: {}
    only: null
    defaults: {batch_size: 32, lr: 0.05, augment: {size: 48, resize: 56}, eval_batch_size: 64}
  cifar: {dataset: embedded, epochs: 1, width: 0.125}
seeds: [1]
train:
  base_r18: {model: tv_resnet18, dataset: folder}
  base_cifar: {model: resnet18}
distill:
  self_clean: {model: tv_resnet18, dataset: folder, teacher: base_r18, alpha: 0.9, temperature: 4,
               cache_policy: clean}
  self_compact: {model: tv_resnet18, dataset: folder, teacher: base_r18, alpha: 0.9, temperature: 4,
                 cache_policy: replay, cache_topk: 5}
  self_coded: {model: tv_resnet18, dataset: folder, teacher: base_r18, alpha: 0.9, temperature: 4,
               cache_policy: clean, cache_topk: 5, cache_tail_bits: 4}
"""
CHANCE = 100 / 20


def ok(code, out):
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A project whose profile streams a 20-class tree: every stage run once, in one process."""
    root = tmp_path_factory.mktemp("streamed")
    build.build(root / "tree", size=64, per_class=10)
    (root / "params.yaml").write_text(PARAMS)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        ok(*tfkd("prepare"))  # the profile's source, indexed (not copied)
        for stage, name in (("train", "base_r18"), ("cache", "self_clean"), ("cache", "self_compact"),
                            ("cache", "self_coded"), ("distill", "self_clean"), ("distill", "self_compact"),
                            ("distill", "self_coded")):
            ok(*tfkd(stage, name))
    return root


def metrics(root, name):
    return json.loads((root / "runs" / name / "s1" / "metrics.json").read_text())


def teacher_on(root, views, indices, epoch=0):
    """The teacher checkpoint's float32 logits on `views` of samples `indices` in `epoch`."""
    model, _ = checkpoint.load_model(str(root / "runs/base_r18/s1/epoch_0003.pt"), "tv_resnet18", 1.0, 20, 3)
    fd = imagefolder.FolderData(views.index, "folder", torch.device("cpu"), None)
    x = torch.stack([views[(epoch, i)][0] for i in indices])
    with torch.no_grad():
        return model(fd.inputs(x))


def test_a_streamed_run_learns_and_its_students_finish(streamed):
    index = json.loads((streamed / "data/prepared/folder.index.json").read_text())
    assert index["train"]["count"] == 200 and not list((streamed / "data/prepared").glob("*.npz"))
    base = metrics(streamed, "base_r18")
    assert base["best_top1"] >= 2 * CHANCE, base  # 64 px photographs, 3 epochs: it learns
    for name in ("self_clean", "self_compact", "self_coded"):
        m = metrics(streamed, name)
        assert m["epochs"] == 3 and m["final_top1"] > 0 and m["dataset"] == "folder", m
    assert metrics(streamed, "self_compact")["params"]["cache_topk"] == 5


def test_caches_hold_the_teachers_logits_of_the_views_a_student_sees(streamed, monkeypatch):
    monkeypatch.chdir(streamed)
    params = Params.load()
    idx = imagefolder.load_index("data/prepared/folder.index.json")
    picks = [0, 7, 123, 199]
    # clean: the evaluation view (resize 56, centre 48) of each training image, full rows
    with h5py.File("cache/self_clean/s1.h5") as f:
        assert f.attrs["compact_k"] == 0 and f["logits"].shape == (200, 20)
        np.testing.assert_array_equal(f["labels"][...], idx.train.labels)
        rows = torch.from_numpy(f["logits"][picks]).float()
    want = teacher_on(streamed, imagefolder.Views(idx, "train", 0, False, 48, 56), picks)
    assert torch.allclose(rows, want, atol=2e-2, rtol=1e-2)
    # replay, compact: the student's own training view of each epoch, as top-5 and a tail model
    cfg = params.config("self_compact", 1)
    views = imagefolder.Views(idx, "train", cfg.run_key, True, 48, 56)
    stored = cache.load("cache/self_compact/s1.h5", imagefolder.FolderData(idx, "folder", torch.device("cpu"),
                        cfg.aug_spec).data, "replay", cfg.run_key, 3, cfg.aug_spec, compact_k=5)[0]
    for epoch in (0, 2):
        z = teacher_on(streamed, views, picks, epoch)
        top = (z - z.amax(1, keepdim=True)).topk(5)
        assert torch.equal(stored.index[epoch, picks].long(), top.indices)
        assert torch.allclose(stored.values[epoch, picks].float(), top.values, atol=2e-2)
    assert not torch.equal(stored.index[0], stored.index[2])  # the epochs' views differ


def test_each_rank_reads_only_its_share_of_the_cache(streamed, monkeypatch):
    monkeypatch.chdir(streamed)
    cfg = Params.load().config("self_compact", 1)
    idx = imagefolder.load_index("data/prepared/folder.index.json")
    reads = {}
    for rank in (0, 1):
        world = World(rank, 2)
        data = imagefolder.FolderData(idx, "folder", torch.device("cpu"), cfg.aug_spec)
        rows, _ = cache.load("cache/self_compact/s1.h5", data.data, "replay", cfg.run_key, 3, cfg.aug_spec,
                             compact_k=5, resident=False)
        teacher = cache.StreamTeacher(rows, torch.device("cpu"), cfg.temperature)
        got = reads[rank] = []
        read = rows.read
        rows.read = lambda index, epoch: got.append(index.clone()) or read(index, epoch)
        for index, size in data.batches(cfg.run_key, 1, cfg.batch_size, world):
            x, _ = data.train_views(index, None, None)
            assert len(x) == len(index) and teacher.logits(1, index).shape == (len(index), 20)
    shares = [torch.cat(reads[r]) for r in (0, 1)]
    assert len(set(shares[0].tolist()) & set(shares[1].tolist())) == 0  # no row read twice
    assert sorted(torch.cat(shares).tolist()) == list(range(200))       # and every row once
    order = imagefolder.augment.epoch_order(cfg.run_key, 1, 200)
    assert torch.equal(reads[0][0], World(0, 2).shard(order[:32]))  # rank 0's half of step 0's batch


def test_a_compact_cache_is_refused_for_full_rows_and_reads_match_the_whole_table(streamed, monkeypatch):
    monkeypatch.chdir(streamed)
    cfg = Params.load().config("self_compact", 1)
    data = imagefolder.FolderData(imagefolder.load_index("data/prepared/folder.index.json"), "folder",
                                  torch.device("cpu"), cfg.aug_spec).data
    args = ("cache/self_compact/s1.h5", data, "replay", cfg.run_key, 3, cfg.aug_spec)
    with pytest.raises(cache.TfkdError, match="with cache_topk 5, the run wants 0; rerun"):
        cache.load(*args)
    whole = cache.load(*args, compact_k=5)[0]
    rows = cache.load(*args, compact_k=5, resident=False)[0]
    index = torch.tensor([199, 3, 3, 150, 0])  # unsorted, with a repeat
    got = rows.read(index, 2)
    assert all(torch.equal(a, b[2, index]) for a, b in zip(got[:3], whole[:3]))
    teacher = cache.CacheTeacher(whole, torch.device("cpu"), cfg.temperature)
    assert torch.equal(teacher.logits(2, index), compact.rebuild_logits(got, cfg.temperature))


def test_a_coded_cache_holds_the_clean_caches_logits_coded_and_is_refused_for_another_coding(streamed, monkeypatch):
    """The same teacher on the same clean views: the coded cache is exactly the full cache's float16
    rows through compact.compress; a run wanting another cache_tail_bits is refused in one line."""
    monkeypatch.chdir(streamed)
    cfg = Params.load().config("self_coded", 1)
    data = imagefolder.FolderData(imagefolder.load_index("data/prepared/folder.index.json"), "folder",
                                  torch.device("cpu"), cfg.aug_spec).data
    full = cache.load("cache/self_clean/s1.h5", data, "clean")[0]
    coded = cache.load("cache/self_coded/s1.h5", data, "clean", compact_k=5, compact_bits=4)[0]
    want = compact.compress(full, 5, bits=4)
    assert coded.bits == 4 and all(torch.equal(a, b) for a, b in zip(coded.tensors, want.tensors))
    rows = cache.load("cache/self_coded/s1.h5", data, "clean", compact_k=5, compact_bits=4, resident=False)[0]
    index = torch.tensor([5, 199, 5, 0])
    streamed_logits = cache.StreamTeacher(rows, torch.device("cpu"), 4.0).logits(0, index)
    assert torch.equal(streamed_logits, cache.CacheTeacher(coded, torch.device("cpu"), 4.0).logits(0, index))
    assert torch.equal(streamed_logits, compact.rebuild_logits(want.map(lambda t: t[index]), 4.0))
    with pytest.raises(cache.TfkdError, match="with cache_tail_bits 4, the run wants 0; rerun"):
        cache.load("cache/self_coded/s1.h5", data, "clean", compact_k=5)


def test_the_profiles_select_their_datasets_entries(streamed, monkeypatch):
    monkeypatch.chdir(streamed)
    p = Params.load()
    assert [n for n in p.experiments() if p.selected(n)] == ["base_r18", "self_clean", "self_compact", "self_coded"]
    cifar = Params(dict(p.raw, profile="cifar"))
    assert [n for n in cifar.experiments() if cifar.selected(n)] == ["base_cifar"]
    cfg = p.config("base_r18", 1)
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.aug_spec.size) == (32, 0.05, 3, 48)  # the profile's defaults
    # cache_topk (and cache_tail_bits) enter a run's identity only when set: runs made before it existed stay finished
    assert "cache_topk" not in cfg.run_identity("f")["settings"]
    assert p.config("self_compact", 1).run_identity("f")["settings"]["cache_topk"] == 5
    assert "cache_tail_bits" not in p.config("self_compact", 1).run_identity("f")["settings"]  # so for it too
    assert p.config("self_coded", 1).run_identity("f")["settings"]["cache_tail_bits"] == 4
    code, out = tfkd("train", "base_cifar", "--params", "params.yaml")
    assert code == 0 and "skipped: not in profile 'folder'" in out, out


def test_in_memory_augmentation_on_a_streamed_dataset_is_refused(streamed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(streamed / "data", tmp_path / "data")
    (tmp_path / "params.yaml").write_text(PARAMS.replace("augment: {size: 48, resize: 56}", "augment: {pad: 4}"))
    one_line_error(*tfkd("train", "base_r18"), "dataset folder is the ImageFolder index",
                   "give it augment keys {size, resize, min_scale}")


def torchrun(*args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline",
           *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_two_gloo_ranks_write_the_same_caches_and_train_and_distill(streamed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("data", "runs"):  # the same index and the same teacher run
        shutil.copytree(streamed / folder, tmp_path / folder)
    shutil.rmtree(tmp_path / "runs" / "self_compact")
    (tmp_path / "tree").symlink_to(streamed / "tree")
    (tmp_path / "params.yaml").write_text(PARAMS)
    for name in ("self_clean", "self_compact"):
        torchrun("cache", name)
        with h5py.File(streamed / f"cache/{name}/s1.h5") as one, h5py.File(f"cache/{name}/s1.h5") as two:
            assert dict(one.attrs).keys() == dict(two.attrs).keys() and set(one) == set(two)
            np.testing.assert_array_equal(one["labels"][...], two["labels"][...])
            for part in set(one) - {"labels", "index"}:
                a, b = one[part][...].astype(np.float32), two[part][...].astype(np.float32)
                assert np.abs(a - b).max() <= 2e-2, part  # fp16 rounding only
            if "index" in one:  # the top-k classes, but for near-ties that other batch shapes may swap
                assert (one["index"][...] == two["index"][...]).mean() > 0.98
    out = torchrun("distill", "self_compact")
    assert "epoch 3/3" in out and len(list(tmp_path.glob("runs/self_compact/s1/metrics.json"))) == 1
    timing = json.loads((tmp_path / "runs/self_compact/s1/timing.json").read_text())
    assert timing["ranks"] == 2


def test_a_torchvision_weights_file_teaches(streamed, tmp_path, monkeypatch):
    import torchvision
    monkeypatch.chdir(tmp_path)
    shutil.copytree(streamed / "data", tmp_path / "data")
    (tmp_path / "params.yaml").write_text(PARAMS + "  self_tv: {model: tv_resnet18, dataset: folder, teacher: base_r18, "
                                          "teacher_checkpoint: weights/resnet18.pth, cache_policy: clean}\n")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=20).eval()  # torchvision's own module, a plain state_dict
    (tmp_path / "weights").mkdir()
    torch.save(net.state_dict(), "weights/resnet18.pth")
    ok(*tfkd("cache", "self_tv"))  # no run of base_r18 exists here: the file is the teacher
    idx = imagefolder.load_index("data/prepared/folder.index.json")
    views = imagefolder.Views(idx, "train", 0, False, 48, 56)
    fd = imagefolder.FolderData(idx, "folder", torch.device("cpu"), None)
    with torch.no_grad():
        want = net(fd.inputs(torch.stack([views[(0, i)][0] for i in (0, 50)])))
    with h5py.File("cache/self_tv/s1.h5") as f:
        assert f.attrs["checkpoint_path"] == "weights/resnet18.pth" and "teacher_digest" not in f.attrs
        assert torch.allclose(torch.from_numpy(f["logits"][[0, 50]]).float(), want, atol=2e-2, rtol=1e-2)
    ok(*tfkd("distill", "self_tv"))
    assert metrics(tmp_path, "self_tv")["epochs"] == 3


def _bytes_read():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts read() bytes through Linux's /proc")
@pytest.mark.parametrize("k, bits", [(0, 0), (10, 0), (10, 4)])
def test_a_read_of_8_rows_reads_a_small_part_of_the_cache_file(tmp_path, k, bits):
    """The kernel counts every byte this process reads, however warm the page cache: reading 8
    scattered rows of a cache (the file opened too) reads about 8 chunks of each dataset, a small
    part of the file."""
    from conftest import synthetic
    from pipeline import data as datasets
    from pipeline.train import DeviceData
    ds = datasets.build("syn", synthetic(n_train=60000, n_test=10, k=100, shape=(2, 2, 3)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 100))
    path = str(tmp_path / "c.h5")
    cache.write(path, model, DeviceData(ds, torch.device("cpu")), "clean", {}, compact_k=k, compact_bits=bits,
                log=lambda *a: None)
    rows, _ = cache.load(path, ds, "clean", compact_k=k, compact_bits=bits, resident=False)  # (it checks all labels once)
    before = _bytes_read()
    got = rows.read(torch.tensor([59999, 3, 7000, 32000, 15, 46000, 8000, 4]))
    read = _bytes_read() - before
    parts = 1 if k == 0 else len(compact.parts(bits))
    assert read < 8 * parts * cache.CHUNK_BYTES + (1 << 20) and read < os.path.getsize(path) / 10, read
    with torch.no_grad():
        want = model(torch.from_numpy(ds.x_train[[59999, 3]]).permute(0, 3, 1, 2).float().div(255)
                     .sub(torch.tensor(ds.mean).view(1, 3, 1, 1)).div(torch.tensor(ds.std).view(1, 3, 1, 1)))
    if k == 0:
        assert torch.allclose(got[:2].float(), want, atol=3e-2, rtol=1e-2)
    else:  # the top class first, its value relative to the row's max
        assert torch.equal(got.index[:2, 0].long(), want.argmax(1)) and torch.all(got.values[:, 0] == 0)


def test_a_profile_dataset_without_source_is_refused_by_prepare(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS.replace("source: tree", "source: null"))
    one_line_error(*tfkd("prepare"), "profile folder's dataset folder has no source",
                   "-S profiles.folder.source=")
    assert not (tmp_path / "data").exists()
