"""benchmarks/README.md and the top-level README's "Performance" table match the results files they are
generated from (``python3 benchmarks/summarize.py --write`` regenerates both)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_tables_are_generated_from_the_results():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "summarize.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
