"""benchmarks/bench_packed.py imports and runs its CPU smoke mode: ours, SDPA with the bool mask and (forward)
flex_attention agree with SDPA run on every document alone."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_packed_smoke():
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_packed.py"), "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "smoke: ok" in done.stdout
    assert "check: ours" in done.stdout and "check: sdpa_bool" in done.stdout
