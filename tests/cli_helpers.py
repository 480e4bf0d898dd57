"""Running the blockzoo apps in subprocesses with tiny, fast settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A model and trainer small enough that a run takes a few seconds on a CPU.
TINY = ["model=tiny_lm", "model.dim_model=32", "model.num_layers=1", "model.num_heads=2", "trainer.batch_size=4",
        "trainer.eval_batches=1", "trainer.progress=false", "trainer.sample_tokens=8"]


def run_app(args: list[str], cwd: Path, module: str = "blockzoo.train", pythonpath: Path | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd`` (one torch thread: no oversubscription on small CI machines)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc
