"""`tfkd report`: numbers beside the paper's, missing runs never shown as zero, the not-comparable
warning, the picture, the CLI. Every project lives in tmp_path with runs written by the test."""
import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline import layout, paper
from pipeline.cli import main
from pipeline.config import Params
from pipeline.report import build_report, write_report

REAL_PARAMS = Path(__file__).parents[1] / "params.yaml"

PARAMS = {
    "profile": "smoke",
    "profiles": {
        "smoke": {"dataset": "embedded", "epochs": 3, "width": 0.125, "only": None},
        "paper": {"dataset": "cifar100", "epochs": 200, "width": 1.0, "only": None},
    },
    "seeds": [1, 2],
    "defaults": {"lr": 0.1},
    "train": {"base_resnet18": {"model": "resnet18"}, "base_mobilenetv2": {"model": "mobilenetv2"},
              "lsr_resnet18": {"model": "resnet18", "method": "lsr"}},
    "distill": {"kd_resnet18_mobilenetv2": {"model": "mobilenetv2", "teacher": "base_resnet18",
                                            "alpha": 0.95, "temperature": 20}},
}


def write_run(name, seeds, epochs=3):
    """What a finished run leaves (runs/<name>/s<seed>/metrics.json and history.tsv, test accuracy
    rising linearly to `best`), summarised by layout.write_summary: the writer the report reads."""
    for seed, (best, final) in seeds.items():
        folder = Path(layout.run_dir(name, seed))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"best_top1": best, "final_top1": final, "num_classes": 20}))
        layout.write_history(str(folder / "history.tsv"),
                             [[e, 0.1, 1.0, 50.0, 1.0, best * e / epochs] for e in range(1, epochs + 1)])
    layout.write_summary(Params.load("params.yaml"), name, list(seeds))


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    write_run("base_resnet18", {1: (76.00, 75.50)})
    write_run("base_mobilenetv2", {1: (68.00, 67.00)})
    write_run("kd_resnet18_mobilenetv2", {1: (71.00, 70.00), 2: (71.40, 70.80)})
    write_run("lsr_resnet18", {})  # no finished seed: a summary without seeds, as a skipped stage leaves it
    return tmp_path


def test_paper_number_and_difference(project):
    row = build_report()["experiments"]["base_resnet18"]
    assert row["status"] == "measured" and row["n_seeds"] == 1
    assert row["paper_top1"] == 75.87
    assert row["best_minus_paper"] == pytest.approx(0.13)
    assert row["best_top1_std"] is None  # one seed: no std, not a fake 0
    md = write_report()
    assert "| `base_resnet18` | — | measured | 76.00 | 75.50 | 75.87 | +0.13 |" in Path(md["paths"]["md"]).read_text()


def test_mean_std_over_seeds_and_gain(project):
    row = build_report()["experiments"]["kd_resnet18_mobilenetv2"]
    assert row["n_seeds"] == 2
    assert row["best_top1"] == pytest.approx(71.20)
    assert row["best_top1_std"] == pytest.approx(statistics.stdev([71.00, 71.40]))  # 0.2828
    assert row["final_top1"] == pytest.approx(70.40)
    assert row["paper_top1"] == 71.05 and row["paper_top1_std"] == 0.16
    assert row["baseline"] == "base_mobilenetv2" and row["gain"] == pytest.approx(3.20)
    assert row["paper_gain"] == pytest.approx(71.05 - 68.38)
    md = Path(write_report()["paths"]["md"]).read_text()
    assert "71.20 ± 0.28 (n=2)" in md


def test_missing_runs_are_missing_not_zero(project):
    rep = write_report()
    rows = rep["experiments"]
    assert rows["lsr_resnet18"]["status"] == "not run"  # a summary without seeds
    assert rows["lsr_resnet18"]["best_top1"] is None and rows["lsr_resnet18"]["gain"] is None
    assert rep["measured"] == 3 and rep["missing"] == 1 and rep["missing_experiments"] == ["lsr_resnet18"]
    md = Path(rep["paths"]["md"]).read_text()
    line = next(l for l in md.splitlines() if l.startswith("| `lsr_resnet18`"))
    assert "not run" in line and "| — | — | 77.26 | — |" in line and "0.00" not in line
    assert "## Not yet measured" in md and "`lsr_resnet18`" in md.split("## Not yet measured")[1]
    saved = json.loads(Path(rep["paths"]["json"]).read_text())
    assert saved["experiments"]["lsr_resnet18"]["best_top1"] is None


def test_profile_skip_and_no_json(project):
    raw = dict(PARAMS, profiles={"smoke": dict(PARAMS["profiles"]["smoke"], only=["base_resnet18"])})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    (project / "runs" / "base_mobilenetv2.json").unlink()
    shutil.rmtree(project / "runs" / "base_mobilenetv2")
    rows = build_report()["experiments"]
    assert rows["base_mobilenetv2"]["status"] == "skipped by profile smoke"
    assert rows["kd_resnet18_mobilenetv2"]["baseline_best_top1"] is None  # its baseline is gone


def test_not_comparable_note_only_off_the_paper_setting(project):
    md = Path(write_report()["paths"]["md"]).read_text()
    assert "NOT comparable with the paper" in md and "K=20" in md and "3 epochs" in md
    raw = dict(PARAMS, profile="paper")
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    rep = write_report()
    assert rep["not_comparable"] is None
    assert "NOT comparable" not in Path(rep["paths"]["md"]).read_text()
    # runs made under the smoke profile are flagged in their row when the profile is now paper
    assert "run under profile smoke on embedded" in rep["experiments"]["base_resnet18"]["note"]


def test_png_and_cli(project):
    result = CliRunner().invoke(main, ["report", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert "out/results.md" in result.output and "3 experiments measured, 1 missing" in result.output
    png = (project / "out" / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert json.loads((project / "out" / "results.json").read_text())["measured"] == 3
    assert not list((project / "out").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cli_missing_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 2 and "params.yaml not found" in result.output


def test_paper_names_exist_in_real_params():
    raw = yaml.safe_load(REAL_PARAMS.read_text())
    experiments = {**raw["train"], **raw["distill"]}
    assert set(paper.PAPER) - set(experiments) == set()
    assert set(paper.NOTES) | set(paper.GAIN_BASELINE) <= set(paper.PAPER)
    # every experiment of the matrix has a paper number and one of the paper's tables
    assert set(experiments) - set(paper.PAPER) == set()
    assert all(paper.table_of(n) != paper.OTHER for n in experiments)


def test_tables_from_prefixes():
    assert paper.table_of("kd_resnet18_mobilenetv2") == "Normal KD and Re-KD (Table 1/2)"
    assert paper.table_of("rekd_mobilenetv2_resnet18") == "Normal KD and Re-KD (Table 1/2)"
    assert paper.table_of("dekd_resnet18e1_mobilenetv2") == "De-KD (Table 3)"
    assert paper.table_of("lsr_resnet18") == "Tf-KD reg vs LSR (Table 5)"
    assert paper.paper_gain("reg_googlenet", "googlenet") == pytest.approx(1.07)  # Table 5's own 78.15
    assert paper.paper_gain("self_googlenet", "googlenet") == pytest.approx(1.45)


def test_an_unfinished_run_shows_its_progress_never_as_a_result(project):
    # lsr_resnet18 was cut after 2 of 3 epochs: its per-seed history exists, no summary seeds
    folder = project / "runs" / "lsr_resnet18" / "s1"
    folder.mkdir(parents=True)
    folder.joinpath("history.tsv").write_text("epoch\tlr\ttrain_loss\ttrain_acc\ttest_loss\ttest_acc\n"
                                              "1\t0.1\t4.0\t5\t4.1\t6.5\n2\t0.1\t3.5\t12\t3.6\t11.25\n")
    rep = write_report()
    row = rep["experiments"]["lsr_resnet18"]
    assert row["status"] == "partial: 2/3 epochs" and row["epochs_done"] == 2
    assert row["best_top1"] is None and row["gain"] is None  # not a result
    assert row["note"].startswith("best so far 11.25 after 2 epochs: not a result")
    md = Path(rep["paths"]["md"]).read_text()
    assert "unfinished (rerun to resume): `lsr_resnet18` (2/3 epochs)" in md
    assert rep["missing_experiments"] == ["lsr_resnet18"]


def test_an_entry_with_its_own_settings_is_reported_with_them(project):
    """params.yaml is read through config: an entry's own epochs or loss_form are its row's."""
    raw = dict(PARAMS, train=dict(PARAMS["train"], lsr_resnet18={"model": "resnet18", "method": "lsr",
                                                                 "epochs": 5, "loss_form": "paper"}))
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    folder = project / "runs" / "lsr_resnet18" / "s1"
    folder.mkdir(parents=True)
    layout.write_history(str(folder / "history.tsv"), [[1, 0.1, 4.0, 5.0, 4.1, 6.5]])
    row = build_report()["experiments"]["lsr_resnet18"]
    assert row["epochs"] == 5 and row["status"] == "partial: 1/5 epochs"
    assert "its own epochs 5 (profile: 3), its own loss_form paper (profile: reference)" in row["note"]
    assert build_report()["experiments"]["base_resnet18"]["epochs"] == 3


def test_the_imagenet_profile_reports_its_own_entries_against_imagenet(project):
    raw = yaml.safe_load(REAL_PARAMS.read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(dict(raw, profile="imagenet")))
    rep = write_report()
    assert set(rep["experiments"]) == {n for n in {**raw["train"], **raw["distill"]} if n.startswith("imagenet_")}
    assert rep["not_comparable"] is None  # 90 epochs, full width: the ImageNet setting itself
    rows = rep["experiments"]
    assert rows["imagenet_self_resnet18"]["paper_top1"] == 70.42 and rows["imagenet_lsr_resnet50"]["paper_top1"] is None
    assert "unknown" in rows["imagenet_lsr_resnet50"]["note"]
    assert "the paper's numbers are on ImageNet" in Path(rep["paths"]["md"]).read_text()
    (project / "params.yaml").write_text(yaml.safe_dump(dict(raw, profile="smoke")))
    assert not any(n.startswith("imagenet_") for n in write_report()["experiments"])  # nor in a CIFAR report
