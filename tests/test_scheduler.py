"""`noisylm sweep --print-commands --slurm`: an sbatch job array with one task per unfinished run, checked
with `bash -n`, line by line, and by running one array task for real (torchrun on the CPU)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from noisylm.cli import main as cli_main
from noisylm.experiments import SweepDir, run_status, slurm_script

pytest_plugins = ["sweep_fixtures"]  # the `finished_sweep` and `tiny_config` fixtures
PENDING = ["uniform-a0.2", "gaussian-a0.2"]  # removed from a copy of the finished sweep


@pytest.fixture
def half_done(finished_sweep, tmp_path, tiny_config) -> tuple[Path, Path]:
    """A copy of the reduced sweep with two runs finished and two never started; its config file."""
    out = tmp_path / "sweep"
    shutil.copytree(finished_sweep, out)
    for name in PENDING:
        shutil.rmtree(out / "runs" / name)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config().to_dict()))
    return out, config


def _tasks(script: str) -> dict[int, dict[str, str]]:
    """The `case` arms of the script: array index -> {run, config, run_dir}."""
    tasks = {}
    for index, fields in re.findall(r"^  (\d+)\) (run=.*) ;;$", script, flags=re.M):
        tasks[int(index)] = dict(item.split("=", 1) for item in fields.split())
    return tasks


def _sbatch(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", script, flags=re.M))


def _bash_syntax_ok(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_one_array_task_per_unfinished_run(half_done, tmp_path, capsys):
    out, config = half_done
    capsys.readouterr()
    assert cli_main(["sweep", str(config), "--out", str(out), "--print-commands", "--slurm"]) == 0
    script = capsys.readouterr().out
    path = tmp_path / "printed.sbatch"
    path.write_text(script)
    _bash_syntax_ok(path)
    assert script.startswith("#!/bin/bash\n")
    tasks = _tasks(script)
    assert [tasks[i]["run"] for i in sorted(tasks)] == PENDING  # finished runs are left out
    for task in tasks.values():
        assert Path(task["config"]) == (out / "configs" / f"{task['run']}.json").resolve()
        assert Path(task["run_dir"]) == (out / "runs" / task["run"]).resolve()
    sbatch = _sbatch(script)
    assert sbatch["array"] == f"0-{len(PENDING) - 1}" and sbatch["nodes"] == "1"
    assert sbatch["gpus-per-node"] == "1" and sbatch["time"] == "24:00:00"  # nproc_per_node, default
    assert "partition" not in sbatch and "##SBATCH --partition=" in script  # the cluster's default
    assert Path(sbatch["output"]).parent == out.resolve()
    assert re.search(r'^GPUS="\$\{GPUS:-\$\{SLURM_GPUS_ON_NODE:-1\}\}"$', script, flags=re.M)
    assert re.search(
        r'^exec torchrun --standalone --nproc_per_node="\$GPUS" -m noisylm train "\$config" '
        r'--out "\$run_dir" --resume$',
        script,
        flags=re.M,
    )
    # Defaults overridden; --only keeps the unfinished runs among those named.
    written = tmp_path / "jobs" / "tiny.sbatch"
    written.parent.mkdir()
    args = ["sweep", str(config), "--out", str(out), "--print-commands", "--slurm", "--out-script"]
    args += [str(written), "--slurm-partition", "gpu", "--slurm-time", "2-00:00:00", "--slurm-gpus", "4"]
    assert cli_main([*args, "--only", "clean", "gaussian-a0.2"]) == 0
    assert f"submit it with sbatch {written}" in capsys.readouterr().out
    _bash_syntax_ok(written)
    assert os.access(written, os.X_OK)
    script = written.read_text()
    assert [t["run"] for t in _tasks(script).values()] == ["gaussian-a0.2"]
    sbatch = _sbatch(script)
    assert (sbatch["partition"], sbatch["time"], sbatch["gpus-per-node"], sbatch["array"]) == (
        "gpu",
        "2-00:00:00",
        "4",
        "0-0",
    )
    assert "SLURM_GPUS_ON_NODE:-4}" in script
    assert [p.name for p in written.parent.iterdir()] == ["tiny.sbatch"]  # no temporary left behind


def test_an_array_task_trains_its_run(half_done, finished_sweep, tmp_path):
    """Run task 1 as SLURM would start it: real torchrun, one CPU process; the run then equals the
    uninterrupted sweep's run."""
    out, _ = half_done
    path = tmp_path / "tiny.sbatch"
    path.write_text(slurm_script(out))
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "GPUS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this torchrun
    result = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "array task 1 trains gaussian-a0.2 on 1 GPU(s)" in result.stderr
    assert [run_status(out / "runs" / n) for n in PENDING] == ["pending", "finished"]
    trained = SweepDir.open(out).run("gaussian-a0.2").final_eval()
    reference = SweepDir.open(finished_sweep).run("gaussian-a0.2").final_eval()
    assert trained["iter"] == reference["iter"] == 12
    for name, loss in reference["eval"].items():
        assert trained["eval"][name] == pytest.approx(loss, rel=1e-6), name
    # The array index must name a run; outside sbatch the script says what it needs.
    bad = subprocess.run(["bash", str(path)], env={**env, "SLURM_ARRAY_TASK_ID": "7"}, capture_output=True)
    assert bad.returncode == 2 and b"array task 7 has no run" in bad.stderr
    del env["SLURM_ARRAY_TASK_ID"]
    outside = subprocess.run(["bash", str(path)], env=env, capture_output=True)
    assert outside.returncode != 0 and b"submit this script with sbatch" in outside.stderr
    # The next script holds the one run left.
    assert [t["run"] for t in _tasks(slurm_script(out)).values()] == ["uniform-a0.2"]


def test_bad_requests_write_nothing(half_done, finished_sweep, tmp_path, capsys):
    out, config = half_done
    base = ["sweep", str(config), "--out", str(out), "--print-commands", "--slurm", "--out-script"]
    # Another file at --out-script is never replaced.
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me\n")
    assert cli_main([*base, str(precious)]) == 1
    assert "is not a job script noisylm wrote" in capsys.readouterr().err
    assert precious.read_text() == "keep me\n"
    # Every run finished: nothing to submit, no script.
    done = tmp_path / "done.sbatch"
    copy = tmp_path / "finished"
    shutil.copytree(finished_sweep, copy)
    finished = ["sweep", str(config), "--out", str(copy), "--print-commands", "--slurm"]
    assert cli_main([*finished, "--out-script", str(done)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is finished; nothing to submit" in err[0] and not done.exists()
    # Usage errors, before anything is written.
    fresh = tmp_path / "fresh"
    for args, words in [
        (["sweep", str(config), "--out", str(fresh), "--slurm"], "add --print-commands"),
        (["sweep", str(config), "--out", str(fresh), "--out-script", str(done)], "go with --slurm"),
        ([*base[:-1], "--slurm-time", "tomorrow"], "time limit 'tomorrow'"),
    ]:
        assert cli_main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not fresh.exists() and not done.exists()
