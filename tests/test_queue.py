"""Many experiments at once with DVC's own queue: `dvc exp run --queue` + `dvc queue start -j 2`."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY_PARAMS
from test_dvc_bench import sh

EXPS = {"base": "base_resnet18", "lsr": "lsr_resnet18"}  # queue name -> train entry of the matrix


def dvc(*args, cwd, out=subprocess.PIPE):
    """sh() without its checks, for calls whose outcome the test reads itself."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["dvc", *args], cwd=cwd, env=env, text=True, stdout=out, stderr=out)


def queue_status(cwd):
    """{name: Queued|Running|Success|Failed} from `dvc queue status` (it has no --json)."""
    rows = (line.split() for line in sh("dvc", "queue", "status", cwd=cwd).splitlines())
    return {row[1]: row[-1] for row in rows if len(row) >= 5 and row[1] in EXPS}


def stop_workers(cwd):
    """`dvc queue stop`, then make sure: once in ~10 runs a worker hung in its own shutdown, deaf to SIGTERM."""
    dvc("queue", "stop", "--kill", cwd=cwd)
    infos = (cwd / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json")  # DVC's record of them
    pids, deadline = [json.loads(info.read_text())["pid"] for info in infos], time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        time.sleep(0.5)
        pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_dvc_queue_runs_two_experiments_in_parallel(tmp_path, monkeypatch):
    # one torch thread per job: two 2-thread jobs on 2 cores ran ~10x slower per epoch than one job alone
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / ".dvcignore", tmp_path)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))  # a dep
    shutil.copy(ROOT / ".gitignore", tmp_path)  # decides what an experiment commit keeps (see below)
    shutil.copytree(ROOT / "data" / "embedded", tmp_path / "data" / "embedded")
    params = TINY_PARAMS.replace("dataset: embedded", "dataset: embedded, source: data/embedded/cifar100-subset.npz")
    params = params.replace("train:\n", "train:\n  lsr_resnet18: {model: resnet18, method: lsr}\n")
    (tmp_path / "params.yaml").write_text(params)
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    sh("dvc", "config", "core.analytics", "false", cwd=tmp_path)
    # a queued experiment starts from a git commit: only committed files reach its workspace
    sh("git", "add", "-A", cwd=tmp_path)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline", cwd=tmp_path)

    for name, entry in EXPS.items():  # each runs `prepare` + its own train stage only
        sh("dvc", "exp", "run", "--queue", "-n", name, f"train@{entry}", cwd=tmp_path)
    try:
        # The workers are background `dvc` processes: they inherit this PATH (dvc, tfkd) and also the
        # caller's stdout/stderr, so captured pipes (sh()) would keep this call waiting until they exit.
        assert dvc("queue", "start", "-j", "2", cwd=tmp_path, out=subprocess.DEVNULL).returncode == 0
        seen_both_running, deadline = False, time.monotonic() + 600
        while True:  # `queue start` returns at once; poll until neither is Queued nor Running
            status = queue_status(tmp_path)
            seen_both_running |= list(status.values()) == ["Running", "Running"]
            if len(status) == 2 and not {"Queued", "Running"} & set(status.values()):
                break
            assert time.monotonic() < deadline, f"queue still busy: {status}"
            time.sleep(1)
    finally:  # no worker outlives the test (--kill only matters on a timeout)
        stop_workers(tmp_path)

    logs = "\n".join(dvc("queue", "logs", name, cwd=tmp_path).stdout for name in EXPS)  # says why one failed
    assert status == {"base": "Success", "lsr": "Success"}, f"{status}\n{logs}"
    assert seen_both_running, "the two experiments never ran at the same time with -j 2\n" + logs

    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=tmp_path))
    exps = {rev["name"]: rev["data"] for base in shown for exp in base["experiments"] or [] for rev in exp["revs"]}
    for name, entry in EXPS.items():
        # a queued run's workspace is deleted: what survives is its git commit (git-ignored files are not
        # in it) and, for `cache: true` outputs, the DVC cache
        metrics = exps[name]["metrics"][f"runs/{entry}.json"]
        assert "data" in metrics, f"{name}: its metrics file is not in its experiment commit: {metrics}"
        assert metrics["data"]["seeds"]["230"]["best_top1"] > 5.0, (name, metrics)  # chance: 5 % on 20 classes

    # bringing one back restores its metrics and its checkpoints, so its stage is up to date again
    # (apply exits non-zero when other stages' cached outputs have no hash in the experiment's dvc.lock)
    applied = dvc("exp", "apply", "lsr", cwd=tmp_path).stdout
    assert json.loads((tmp_path / "runs" / "lsr_resnet18.json").read_text())["method"] == "lsr", applied
    assert "up to date" in sh("dvc", "status", "train@lsr_resnet18", cwd=tmp_path), applied
