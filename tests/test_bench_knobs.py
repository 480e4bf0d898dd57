"""benchmarks/bench_knobs.py --smoke: the knob benchmark's cases run on the CPU (our path and eager flex
checked against the float64 reference) and its rows come out in the results format."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_knobs_smoke_runs_on_the_cpu_and_writes_rows(tmp_path):
    out = tmp_path / "knobs.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_knobs.py"), "--smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("check: ") == 12 and "differs" not in done.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["smoke"] and data["meta"]["device"] == "cpu"
    cases = [r["case"] for r in data["rows"]]
    assert len(cases) == 6 and any(c.startswith("softcap+sinks window") for c in cases)
    assert all(r["ours_ms"] > 0 and r["peer_ms"] > 0 and r["ratio"] > 0 for r in data["rows"])
