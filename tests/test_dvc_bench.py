"""The pipeline as a user runs it: `dvc repro` end to end, and `tfkd bench` on the CPU."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from conftest import ROOT, TINY_PARAMS
from pipeline import capture
from pipeline.cli import main


def sh(*cmd, cwd, **env_vars):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **env_vars)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_dvc_repro_runs_teachers_caches_students_and_reruns_only_what_changed(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / ".dvcignore", tmp_path)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))  # a dep
    shutil.copytree(ROOT / "data" / "embedded", tmp_path / "data" / "embedded")
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.replace("dataset: embedded", "dataset: embedded, source: data/embedded/cifar100-subset.npz"))
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    sh("dvc", "config", "core.analytics", "false", cwd=tmp_path)
    # the first repro runs every tfkd stage data-parallel: torchrun, 2 gloo ranks (README, Scaling out)
    out = sh("dvc", "repro", cwd=tmp_path, OMP_NUM_THREADS="1",
             TFKD_LAUNCH="torchrun --standalone --nproc_per_node 2 --no-python")
    assert json.loads((tmp_path / "runs" / "base_resnet18" / "s230" / "timing.json").read_text())["ranks"] == 2
    for stage in ("prepare", "train@base_resnet18", "cache@kd_r18_r18", "distill@kd_r18_r18", "distill@kd_r18_r18_clean"):
        assert f"'{stage}'" in out
    metrics = json.loads((tmp_path / "runs" / "kd_r18_r18.json").read_text())
    assert metrics["seeds"]["230"]["best_top1"] > 5.0
    assert "up to date" in sh("dvc", "status", cwd=tmp_path)
    # an interrupted stage (its result missing) is the only one redone
    (tmp_path / "runs" / "kd_r18_r18_clean.json").unlink()
    out = sh("dvc", "repro", cwd=tmp_path)
    assert out.count("Running stage") == 1 and "distill@kd_r18_r18_clean" in out
    # a change to one experiment's params reruns its own stages only
    params = (tmp_path / "params.yaml").read_text().replace("alpha: 0.9, temperature: 4, cache_policy: clean",
                                                           "alpha: 0.5, temperature: 4, cache_policy: clean")
    (tmp_path / "params.yaml").write_text(params)
    out = sh("dvc", "repro", cwd=tmp_path)
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["cache@kd_r18_r18_clean", "distill@kd_r18_r18_clean"]
    assert "base_resnet18" in sh("dvc", "metrics", "show", cwd=tmp_path)


def test_bench_on_cpu_writes_every_row(project):
    result = CliRunner().invoke(main, ["bench", "--steps", "1", "--out", "bench.json"])
    assert result.exit_code == 0, result.output
    data = json.loads(Path("bench.json").read_text())
    rows = data["images_per_second"]
    assert set(rows) == {"cache_write", "cache_file", "train_ce", "train_lsr", "train_reg", "train_kd_cache",
                         "train_kd_online", "reference_kd_online_fp32"}
    assert all(v > 0 for v in rows.values())
    assert data["ratios"]["kd_cache_vs_ce"] == rows["train_kd_cache"] / rows["train_ce"]
    assert data["device"].startswith("cpu") and data["date"]
    assert data["graph"] is False and data["compile"] is False and data["check"] is None  # CPU: eager


def test_bench_goes_on_without_a_fast_form_that_fails_to_run(project, monkeypatch):
    # e.g. a GPU whose CUDA-graph capture or compiler fails: the rows are still timed without it,
    # the failure is in the JSON, and the command ends with an error that names it
    def compiled(module, on):
        if on:
            raise RuntimeError("the compiler is\nmissing")
        return module
    monkeypatch.setattr(capture, "compiled", compiled)
    result = CliRunner().invoke(main, ["bench", "--steps", "1", "--compile", "--out", "bench.json"])
    assert result.exit_code == 2
    assert "compile: FAILED (RuntimeError: the compiler is missing)" in result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "tfkd: error: the fast step is not the eager step: compile (failed to run); see 'check' in bench.json")
    data = json.loads(Path("bench.json").read_text())
    assert data["check"]["forms"]["compile"] == {"ok": False, "error": "RuntimeError: the compiler is missing"}
    assert data["compile"] is False and all(v > 0 for v in data["images_per_second"].values())
