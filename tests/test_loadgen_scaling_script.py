"""bench/scaling.sh, checked without load: its syntax, its plan for a 16-core machine, its summary."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "scaling.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def scaling(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env,
                          cwd=ROOT)


def test_the_script_parses_and_is_strict() -> None:
    """``bash -n`` accepts it, and it runs with ``set -euo pipefail``."""
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    assert "\nset -euo pipefail\n" in SCRIPT.read_text()


def test_plan_for_16_cores_pins_the_pool_to_cpus_1_to_p() -> None:
    """On 16 CPUs: pool sizes 1..15, pool P on CPUs 1-P, reactor and loadgen on CPU 0, each run bounded."""
    result = scaling("--dry-run", "--cpus", "16", "--out", "/tmp/plan")
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 16
    shared = commands.pop()  # last, the pool on every CPU, one of its threads beside the reactor
    assert " --pool-size 16 " in shared and " --server-arg=--pool-cpus=0-15 " in shared
    assert " --out-dir /tmp/plan/pool-16-shared " in shared and "--work-iterations=K" in shared
    for pool, line in enumerate(commands, start=1):
        assert line.startswith("timeout ") and " taskset -c 0 " in line, line
        assert f" --pool-size {pool} " in line
        assert re.search(r"--server-arg=--pool-cpus=(\S+)", line).group(1) == ("1" if pool == 1 else f"1-{pool}")
        assert " --server-arg=--reactor-cpus=0 " in line
        assert f" --out-dir /tmp/plan/pool-{pool} " in line
        assert " --refine " in line
        assert ("--work-iterations" in line) == (pool > 1)  # pool 1 calibrates, the others reuse it


@pytest.mark.parametrize(("args", "message"), [
    (["--dry-run", "--cpus", "1"], "needs at least 2 CPUs"),
    (["--dry-run", "--cpus", "two"], "--cpus must be a whole number"),
    (["--cpus", "100000"], "more than this machine's"),
    (["--frobnicate"], "unknown option --frobnicate"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = scaling(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_summary_from_results(tmp_path: Path) -> None:
    """--summarize writes and prints summary.tsv from each pool size's results.json."""
    for label, pool, knee in (("1", 1, 240.0), ("2", 2, 300.0), ("2-shared", 2, 440.0)):
        step = {"server": {"reactor_cpu_ms_per_request": 0.2}, "requests": 1000, "generator": {"cpu_s": 0.1}}
        entry = {"name": "threads-pbkdf2-keep-alive", "dispatch": "threads", "work_kind": "pbkdf2",
                 "pool_size": pool, "work_ms": 4.0, "knee_rps": knee, "result": {"steps": [step], "knee": {"step": 0}}}
        (tmp_path / f"pool-{label}").mkdir()
        (tmp_path / f"pool-{label}" / "results.json").write_text(json.dumps({"configurations": [entry]}))
    result = scaling("--summarize", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "summary.tsv").read_text().splitlines()
    assert result.stdout.splitlines() == lines
    assert [line.split("\t")[:2] + line.split("\t")[4:] for line in lines[1:]] == [
        ["1", "threads-pbkdf2-keep-alive", "-", "250.0", "20.0", "240.0", "0.96", "yes"],
        ["2", "threads-pbkdf2-keep-alive", "-", "500.0", "20.0", "300.0", "0.60", "no"],
        ["2-shared", "threads-pbkdf2-keep-alive", "0.1000", "465.1", "20.0", "440.0", "0.95", "yes"],  # 2 / 4.3 ms
    ]


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not shutil.which("taskset"), reason="needs 2 CPUs and taskset")
def test_a_short_real_run_on_two_cpus(tmp_path: Path) -> None:
    """Pool 1 on CPU 1, reactor and loadgen on CPU 0, short steps: dataserv accepts the pinning (under loadgen's
    taskset, thanks to compare --server-cpus), the reactor's CPU per request is measured, the summary written."""
    result = scaling("--cpus", "2", "--out", str(tmp_path), "--step-duration", "0.5s", "--refine", "0")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads((tmp_path / "pool-1" / "results.json").read_text())["configurations"]
    assert entry["error"] is None, entry["error"]
    assert entry["exit_code"] == 0
    rows = [line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines()]
    assert [row[:2] for row in rows[1:]] == [["1", "threads-pbkdf2-keep-alive"],
                                             ["2-shared", "threads-pbkdf2-keep-alive"]]
    assert float(rows[1][3]) > 0 and rows[1][4] == "-"  # r; no g (the pool has a core of its own)
    assert float(rows[2][3]) > 0 and float(rows[2][4]) > 0  # r and g: the shared core's load
