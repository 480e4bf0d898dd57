"""``python -m blockzoo.compare <sweep dir>``: one table of every run's final metrics and overrides.

Writes the table as markdown (stdout and ``comparison.md``), ``comparison.csv`` and a bar plot
``comparison.png`` (skipped, with a note, when matplotlib is not installed).
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from blockzoo.trainer.metrics import METRICS_FILE, read_metrics

COLUMNS = ("run", "overrides", "step", "val_loss", "val_accuracy", "tokens_per_s", "peak_memory_mb", "status")
MEMORY_KINDS = {"cuda_allocated": "GPU memory held by tensors (torch.cuda.max_memory_allocated)",
                "cpu_resident": "the process's resident memory (VmHWM)"}


def run_summary(run_dir: Path, root: Path) -> dict[str, Any]:
    """One run's final metrics (or its last evaluation, if it did not finish) and its overrides."""
    records = read_metrics(run_dir)
    final = next((r for r in reversed(records) if r.get("final")), None)
    last_eval = next((r for r in reversed(records) if r.get("val_loss") is not None), {})
    source = final or last_eval
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return {"run": run_dir.relative_to(root).as_posix() or ".", "overrides": " ".join(overrides or []),
            "step": source.get("step"), "val_loss": source.get("val_loss"),
            "val_accuracy": source.get("val_accuracy"), "tokens_per_s": (final or {}).get("tokens_per_s"),
            "peak_memory_mb": (final or {}).get("peak_memory_mb"), "status": "done" if final else "incomplete",
            "peak_memory_kind": (final or {}).get("peak_memory_kind")}


def natural_key(path: Path) -> list[Any]:
    """Sort key putting job 2 before job 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def collect(root: Path) -> list[dict[str, Any]]:
    """A summary of every run (folder holding metrics.jsonl) under ``root``, in job order."""
    return [run_summary(p.parent, root) for p in sorted(root.rglob(METRICS_FILE), key=natural_key)]


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table, with the overrides every run shares stated once above it."""
    shared = shared_overrides(rows)
    short = [dict(r, overrides=label) for r, label in zip(rows, varying_overrides(rows))]
    lines = [f"Shared overrides: `{' '.join(shared)}`", ""] if shared else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]).replace("|", "\\|") for c in COLUMNS) + " |" for r in short]
    return "\n".join(lines + ["", *legend(rows)]) + "\n"


def legend(rows: list[dict[str, Any]]) -> list[str]:
    """What the throughput and memory figures mean."""
    lines = ["tokens_per_s: the mean over training steps (evaluation and checkpoints excluded)."]
    kinds = sorted({r["peak_memory_kind"] for r in rows if r["peak_memory_kind"]})
    if kinds:
        what = " / ".join(MEMORY_KINDS[k] for k in kinds)
        lines.append(f"peak_memory_mb: each run's own peak, in MiB: how far {what} rose above its level at the "
                     "start of the run. Memory that earlier jobs of a sweep left is not counted; the first run in a "
                     "process also counts PyTorch's one-time start-up (about 20 MiB on a CPU).")
    return lines


def shared_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Overrides that every run has (in the first run's order); none for a single run."""
    if len(rows) < 2:
        return []
    sets = [set(r["overrides"].split()) for r in rows]
    common = set.intersection(*sets)
    return [o for o in rows[0]["overrides"].split() if o in common]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=(*COLUMNS, "peak_memory_kind"))
        writer.writeheader()
        writer.writerows(rows)


def varying_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Each run's overrides without those every run shares (short plot labels); the run folder if none."""
    shared = set(shared_overrides(rows))
    return [" ".join(o for o in r["overrides"].split() if o not in shared) or r["run"] for r in rows]


def plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    """Bar plots of val accuracy, tokens/s and peak memory per run; a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: comparison.png skipped (pip install matplotlib)"
    labels = varying_overrides(rows)
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 1.5 * len(rows) + 4), 4.5))
    panels = (("val_accuracy", "final validation accuracy"), ("tokens_per_s", "tokens / s"),
              ("peak_memory_mb", "peak memory above the run's start (MiB)"))
    for ax, (key, title) in zip(axes, panels):
        ax.bar(range(len(rows)), [r[key] or 0 for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockzoo.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (or any folder holding runs)")
    args = parser.parse_args(argv)
    root: Path = args.sweep_dir
    if not root.is_dir():
        parser.error(f"{root} is not a folder")
    rows = collect(root)
    if not rows:
        parser.error(f"no runs under {root} (no {METRICS_FILE} found)")
    table = markdown(rows)
    print(table, end="")
    (root / "comparison.md").write_text(table)
    write_csv(rows, root / "comparison.csv")
    note = plot(rows, root / "comparison.png")
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
