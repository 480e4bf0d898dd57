"""Markdown tables of the result files: ``python benchmarks/summarize.py [suite ...]``.

Reads ``benchmarks/results/*.json`` (the shared format of TARGETS.md) and prints, per suite, the rows
that carry a target (or every row with ``--all``): case, peer, times, ratio, fraction of the copy
ceiling, target and whether it was met.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def table(path: Path, every_row: bool) -> str:
    data = json.loads(path.read_text())
    meta = data["meta"]
    rows = [r for r in data["rows"] if every_row or r.get("target") is not None or r.get("met") is not None]
    lines = [f"**{path.stem}** — {meta.get('device')}, torch {meta.get('torch')}, triton {meta.get('triton')}, "
             f"copy ceiling {fmt(meta.get('copy_ceiling_TBps'))} TB/s", "",
             "| case | peer | peer ms | ours ms | ratio | of ceiling | target | met |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in
                                        ("case", "peer", "peer_ms", "ours_ms", "ratio", "frac_ceiling", "target", "met")) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("suites", nargs="*", help="suite names (default: every result file)")
    parser.add_argument("--all", action="store_true", help="also rows without a target")
    args = parser.parse_args()
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "meta" not in data or "rows" not in data:
            continue
        if args.suites and not any(path.stem.endswith(s) for s in args.suites):
            continue
        print(table(path, args.all), end="\n\n")


if __name__ == "__main__":
    main()
