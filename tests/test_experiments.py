"""Whole experiments as a user runs them, end to end on the real embedded subset: several seeds
summarised and reported, teachers from their `best` and numbered checkpoints, `loss_form: paper`,
and a student that can only have learned from its teacher's logits."""
import json
import shutil
import statistics

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY_PARAMS, one_line_error, tfkd, write_params
from pipeline import layout, stages
from pipeline.files import sha256_file
from pipeline.config import Params
from pipeline.report import build_report

CPU = torch.device("cpu")

MATRIX = TINY_PARAMS.replace("distill:\n", """distill:
  kd_best: {model: resnet18, teacher: base_resnet18, teacher_checkpoint: best, alpha: 0.9, temperature: 4, cache_policy: clean}
  kd_epoch1: {model: resnet18, teacher: base_resnet18, teacher_checkpoint: 1, alpha: 0.9, temperature: 4, cache_policy: clean}
  kd_epoch5: {model: resnet18, teacher: base_resnet18, teacher_checkpoint: 5, alpha: 0.9, temperature: 4, cache_policy: clean}
  kd_paper: {model: resnet18, teacher: base_resnet18, alpha: 0.9, temperature: 4, cache_policy: clean, loss_form: paper}
  kd_reference: {model: resnet18, teacher: base_resnet18, alpha: 0.9, temperature: 4, cache_policy: clean}
  kd_only: {model: resnet18, teacher: base_resnet18, alpha: 1.0, temperature: 1, cache_policy: clean, epochs: 3, loss_form: paper}
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project whose teacher base_resnet18 is trained (2 epochs, one seed), shared by the tests."""
    from pipeline import data
    root = tmp_path_factory.mktemp("experiments")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        data.prepare("embedded", root / "data" / "prepared" / "embedded.npz")
        write_params("params.yaml", MATRIX)
        stages.run_experiment(Params.load("params.yaml"), "base_resnet18", [], CPU)
    return root


@pytest.fixture
def matrix(trained, monkeypatch):
    monkeypatch.chdir(trained)
    return Params.load("params.yaml")


def test_several_seeds_are_summarised_and_reported_from_real_runs(project):
    write_params("params.yaml", TINY_PARAMS.replace("seeds: [230]", "seeds: [230, 231]")
                 .replace("epochs: 2", "epochs: 1"))
    metrics = stages.run_experiment(Params.load("params.yaml"), "base_resnet18", [], CPU)
    assert [m["seed"] for m in metrics] == [230, 231]
    assert metrics[0]["best_top1"] != metrics[1]["best_top1"]  # other seeds, other runs
    best = [m["best_top1"] for m in metrics]
    summary = json.load(open("runs/base_resnet18.json"))
    assert tuple(summary) == layout.SUMMARY_KEYS
    assert summary["best_top1"] == pytest.approx(statistics.fmean(best))
    assert summary["best_top1_std"] == pytest.approx(statistics.stdev(best))
    assert summary["num_classes"] == 20 and set(summary["seeds"]) == {"230", "231"}
    curves = layout.read_history("runs/base_resnet18.tsv")
    for seed in (230, 231):
        own = layout.read_history(f"runs/base_resnet18/s{seed}/history.tsv")
        assert [{k: v for k, v in r.items() if k != "seed"} for r in curves if r["seed"] == seed] == own
    row = build_report()["experiments"]["base_resnet18"]
    assert row["n_seeds"] == 2 and row["status"] == "measured"
    assert row["best_top1"] == pytest.approx(statistics.fmean(best))
    assert row["best_top1_std"] == pytest.approx(statistics.stdev(best))


def test_best_and_numbered_teacher_checkpoints_are_the_ones_cached(matrix):
    folder = "runs/base_resnet18/s230"
    metrics = json.load(open(f"{folder}/metrics.json"))
    best = torch.load(f"{folder}/best.pt", weights_only=True)
    assert best["epoch"] == metrics["best_epoch"] and best["test_acc"] == metrics["best_top1"]
    for name, file in (("kd_best", "best.pt"), ("kd_epoch1", "epoch_0001.pt")):
        [path] = stages.make_cache(matrix, name, [], CPU)
        with h5py.File(path) as f:
            assert f.attrs["checkpoint_sha256"] == sha256_file(f"{folder}/{file}")
            assert f.attrs["checkpoint_epoch"] == torch.load(f"{folder}/{file}", weights_only=True)["epoch"]
    one_line_error(*tfkd("cache", "kd_epoch5"), "teacher base_resnet18 keeps no checkpoint after epoch 5",
                   "add it to the teacher's checkpoints")


def test_loss_form_paper_reaches_the_loss_of_a_real_run(matrix):
    """The same student, cache and views under both forms: the histories differ from the first
    epoch on (the paper's KL is K / T^2 times the reference's), and both learn."""
    runs = {}
    for name in ("kd_paper", "kd_reference"):
        stages.make_cache(matrix, name, [], CPU)
        [runs[name]] = stages.run_experiment(matrix, name, [], CPU)
    assert runs["kd_paper"]["params"]["loss_form"] == "paper"
    paper, ref = (layout.read_history(f"runs/{n}/s230/history.tsv") for n in ("kd_paper", "kd_reference"))
    assert paper[0]["train_loss"] != pytest.approx(ref[0]["train_loss"], rel=1e-3)
    assert min(runs["kd_paper"]["best_top1"], runs["kd_reference"]["best_top1"]) >= 7.5  # chance: 5 %, 2 epochs


def test_a_student_with_no_label_term_learns_from_its_teachers_logits_alone(matrix):
    """alpha 1: the loss is the KD term only (at T 1 in the paper's form: cross-entropy against the
    teacher's probabilities), so the labels never reach the student. It learns only if the cached
    logits are looked up for the right samples; the same cache with its rows shuffled (what a wrong
    index would give) leaves it near chance."""
    [path] = stages.make_cache(matrix, "kd_only", [], CPU)
    with h5py.File(path) as f:
        teacher_acc = f.attrs["teacher_test_acc"]
    [good] = stages.run_experiment(matrix, "kd_only", [], CPU)
    assert good["best_top1"] >= max(10.0, 0.5 * teacher_acc)  # chance: 5 %
    with h5py.File(path, "r+") as f:
        rows = f["logits"][...]
        f["logits"][...] = rows[np.random.default_rng(0).permutation(len(rows))]
    shutil.rmtree("runs/kd_only")  # the same identity: a rerun would keep the finished run
    [shuffled] = stages.run_experiment(matrix, "kd_only", [], CPU)
    assert shuffled["best_top1"] < good["best_top1"] - 3.0


def test_tfkd_stages_lists_the_active_profiles_stages_and_a_profile_sets_the_cache_policy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params("params.yaml", MATRIX.replace("checkpoints: {one_epoch: 1}}",
                                               "checkpoints: {one_epoch: 1}, cache_policy: clean,\n"
                                               "      only: [base_resnet18, kd_r18_r18, kd_paper]}"))
    code, out = tfkd("stages")
    assert code == 0, out
    assert out.split() == ["train@base_resnet18", "cache@kd_paper", "distill@kd_paper",  # params.yaml's order
                           "cache@kd_r18_r18", "distill@kd_r18_r18"]
    p = Params.load("params.yaml")
    assert p.config("kd_paper", 230).cache_policy == "clean"  # the profile's, over the default replay
    assert p.config("kd_r18_r18", 230).cache_policy == "replay"  # the entry's own, over the profile's


def test_a_profile_skip_leaves_markers_and_an_empty_summary_never_a_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params("params.yaml", MATRIX.replace("checkpoints: {one_epoch: 1}}",
                                               "checkpoints: {one_epoch: 1}, only: [base_resnet18]}"))
    for command in ("cache", "distill"):
        code, out = tfkd(command, "kd_paper")
        assert code == 0 and "skipped: not in profile 't'" in out, out
    assert (tmp_path / "cache" / "kd_paper" / "SKIPPED").exists()
    assert (tmp_path / "runs" / "kd_paper" / "SKIPPED").read_text() == "not in profile t\n"
    summary = json.load(open("runs/kd_paper.json"))
    assert tuple(summary) == layout.SUMMARY_KEYS and summary["seeds"] == {} and summary["best_top1"] is None
    assert not (tmp_path / "cache" / "kd_paper" / "s230.h5").exists()
    row = build_report()["experiments"]["kd_paper"]
    assert row["status"] == "skipped by profile t" and row["best_top1"] is None
