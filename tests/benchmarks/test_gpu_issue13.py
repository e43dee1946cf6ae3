"""gpu_issue13.sh: valid bash, and every benchmark flag it passes is one the scripts accept."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_issue13.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("script", ["bench_kernel.py", "bench_e2e.py", "one_launch.py"])
def test_flags_it_passes_are_accepted(script):
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = [line for line in text.splitlines() if f"benchmarks/{script}" in line]
    assert commands, f"{script} is not run by the script"
    for line in commands:
        tail = line.split(f"benchmarks/{script}", 1)[1].strip().rstrip(")")
        argv = ["x" if "$" in token else token for token in shlex.split(tail)]  # shell variables: any value
        # --help after the flags: argparse rejects an unknown flag (exit 2) before it prints help (exit 0)
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv, "--help"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 0, f"{script} {argv}: {run.stderr[-400:]}"
