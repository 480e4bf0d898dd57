"""Shared benchmark helpers: copy ceiling, timing, one results format, one table.

Every suite prints ``print_table(rows)`` and saves ``write_results(suite, rows)`` to
``benchmarks/results/YYYY-MM-DD-<device>-<suite>.json``::

    {"meta": {"date", "device", "torch", "triton", "cuda", "copy_ceiling_TBps", "command"},
     "rows": [{"case", "peer", "peer_ms", "ours_ms", "ratio", "frac_ceiling", "target", "met"}, ...]}

``ratio`` is peer_ms / ours_ms (> 1: ours is faster); ``target`` is the ratio asked for (null where the
target is a fraction of the copy ceiling: then ``frac_ceiling`` was compared); ``met`` says whether it was
reached. ``python benchmarks/summarize.py --write`` turns the files into ``benchmarks/README.md``.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent
_ceiling: list[float] = []  # the copy ceiling measured in this run (TB/s), cached


def bench(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median time of ``fn()`` in milliseconds (``triton.testing.do_bench``, warm-up excluded)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def peak_mb(fn: Callable[[], object]) -> float:
    """Peak memory allocated by one call of ``fn`` above what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_sections(sections: dict[str, Callable[[], object]], names: str) -> list[str]:
    """Run the comma-separated ``names`` of ``sections``; a failing section is reported, not fatal.
    Returns the names that failed."""
    import traceback

    failed = []
    for name in names.split(","):
        try:
            sections[name]()
        except Exception:  # one broken section must not hide the others' results
            traceback.print_exc()
            failed.append(name)
        torch.cuda.empty_cache()
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
    return failed


def tbps(bytes_moved: float, ms: float) -> float:
    """Bandwidth in TB/s of ``bytes_moved`` bytes in ``ms`` milliseconds."""
    return bytes_moved / (ms * 1e-3) / 1e12


def measure_copy_ceiling(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in TB/s (bytes read + written), measured once per run."""
    if not _ceiling:
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms = bench(lambda: dst.copy_(src))
        _ceiling.append(tbps(2 * nbytes, ms))
        del src, dst
        torch.cuda.empty_cache()
    return _ceiling[0]


def row(case: str, peer: str, peer_ms: float | None, ours_ms: float, bytes_moved: float | None = None,
        ceiling: float | None = None, target: float | None = None,
        target_is_ceiling_frac: bool = False) -> dict:
    """One result row. ``target`` is a ratio (peer/ours) to reach, or with ``target_is_ceiling_frac``
    a fraction of the copy ceiling (then stored as ``target: null`` and ``frac_ceiling`` is compared).
    ``ceiling`` defaults to the ceiling measured in this run."""
    ratio = peer_ms / ours_ms if peer_ms is not None else None
    frac = None
    if bytes_moved is not None:
        ceiling = ceiling if ceiling is not None else measure_copy_ceiling()
        frac = tbps(bytes_moved, ours_ms) / ceiling
    met = None
    if target is not None and target_is_ceiling_frac:
        if frac is None:
            raise ValueError(f"{case}: a ceiling-fraction target needs bytes_moved")
        met, target = frac >= target, None
    elif target is not None and ratio is not None:
        met = ratio >= target
    return {"case": case, "peer": peer, "peer_ms": _round(peer_ms), "ours_ms": _round(ours_ms),
            "ratio": _round(ratio), "frac_ceiling": _round(frac), "target": target, "met": met}


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else float(f"{v:.{digits}g}")


def device_slug() -> str:
    """'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def command() -> str:
    """This run's command line (``" ".join(sys.argv)``) as typed from the repository root: the script's
    path relative to it, after ``python`` and any ``BLOCKZOO_*`` setting (they change what runs)."""
    argv = list(sys.argv)
    script = Path(argv[0]).resolve()
    if script.is_relative_to(REPO):
        argv[0] = script.relative_to(REPO).as_posix()
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("BLOCKZOO_")]
    return " ".join(env + ["python", shlex.join(argv)])


def write_results(suite: str, rows: list[dict]) -> Path:
    """Write ``rows`` with the run's metadata (device, versions, copy ceiling, command) to
    ``results/YYYY-MM-DD-<device>-<suite>.json``."""
    import triton

    today = datetime.date.today().isoformat()
    meta = {"date": today, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "copy_ceiling_TBps": _round(measure_copy_ceiling()), "command": command()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{today}-{device_slug()}-{suite}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return path


def print_table(rows: list[dict]) -> None:
    """Print case, peer, peer_ms, ours_ms, ratio, frac_ceiling, target and met as one aligned table."""
    cols = ["case", "peer", "peer_ms", "ours_ms", "ratio", "frac_ceiling", "target", "met"]
    cells = [cols] + [["-" if r.get(c) is None else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    for k, line in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def cpu_median_ms(fn: Callable[[], object], reps: int = 3) -> float:
    """Median wall time of ``fn()`` in ms over ``reps`` runs after one warm-up (CPU smoke modes)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def forward_step(fn: Callable, qkv: list) -> Callable[[], object]:
    """``fn(*qkv)`` without autograd: an attention's forward to time."""
    def step():
        with torch.no_grad():
            return fn(*qkv)
    return step


def forward_backward_step(fn: Callable, qkv: list) -> Callable[[], None]:
    """``fn(*qkv).backward(grad)`` with the inputs' gradients cleared first: an attention's fwd+bwd to time."""
    grad = torch.randn_like(qkv[0])

    def step():
        for t in qkv:
            t.grad = None
        fn(*qkv).backward(grad)
    return step
