"""The repository's scripts as a newcomer meets them: set-up says what it does, GPU-only scripts say so on a CPU,
generated folders stay out of git, and every README snippet works as written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if "needs a CUDA GPU" in p.read_text())
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_setup_says_each_step_and_installs_matplotlib(tmp_path):
    """setup.sh run with a python that records pip calls instead of installing."""
    shim = tmp_path / "python"
    shim.write_text(f'#!/bin/bash\nif [ "$1 $2" = "-m pip" ]; then echo "$@" >> {tmp_path}/pip.log; exit 0; fi\n'
                    f'exec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--test"], env={**ENV, "PYTHON": str(shim)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith("setup: ") for line in lines), lines
    assert "torch" in lines[0] and lines[-1].startswith("setup: blockzoo") and lines[-1].endswith("ready")
    pip = (tmp_path / "pip.log").read_text()
    assert " matplotlib " in pip and " pytest-xdist" in pip and "-e ." in pip


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what GPU-only scripts do without a GPU")
@pytest.mark.parametrize("script", GPU_ONLY)
def test_gpu_only_scripts_say_so_on_a_cpu(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], env=ENV, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1 and "needs a CUDA GPU" in done.stderr and "Traceback" not in done.stderr


def test_device_run_says_it_needs_a_gpu_and_answers_help():
    script = str(ROOT / "benchmarks" / "device_run.sh")
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "device_run.sh" in shown.stdout
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120, env=ENV)
        assert done.returncode == 1 and "needs a CUDA GPU" in done.stderr


def test_generated_folders_are_ignored():
    paths = ["outputs/x/metrics.jsonl", "multirun/x/y", "sweeps/listops/0/metrics.jsonl"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.stdout.split() == paths


def test_readme_snippets_work_as_written():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_readme.py")], env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "every snippet ran" in done.stdout, done.stdout[-5000:] + done.stderr[-2000:]


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    tests = next(line for line in readme.splitlines() if line.startswith("bash scripts/setup.sh --test"))
    command = tests.split("#")[0].strip()
    assert command in (ROOT / ".ci" / "run").read_text()
