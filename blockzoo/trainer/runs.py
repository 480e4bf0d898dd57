"""Earlier runs of the same config (where ``trainer.resume`` looks when the output folder has no checkpoint), and
the differences between two configs."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import yaml

from blockzoo.config import config_to_dict

CONFIG_FILE = "config.yaml"
# trainer keys that say how to run, not what is trained: a run resumed with other values is the same run
RUN_ONLY_KEYS = ("resume", "resume_allow_model_change", "stop_after", "progress")


def matching_runs(pattern: str, cfg: Any, exclude: Path | None = None) -> list[Path]:
    """Run folders matching the glob ``pattern`` whose saved config equals ``cfg`` (less the run-only trainer
    keys), the most recently started first."""
    wanted = identity(config_to_dict(cfg))
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for folder in map(Path, glob.glob(pattern)):
        saved = folder / CONFIG_FILE
        if folder.resolve() == skip or not saved.is_file():
            continue
        if identity(yaml.safe_load(saved.read_text()) or {}) == wanted:
            found.append((saved.stat().st_mtime, folder))
    return [folder for _, folder in sorted(found, reverse=True)]


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the config less the run-only trainer keys."""
    trainer = {k: v for k, v in (cfg.get("trainer") or {}).items() if k not in RUN_ONLY_KEYS}
    return {**cfg, "trainer": trainer}


def differences(old: Any, new: Any, path: str) -> list[str]:
    """'path.key: old -> new' for every value that differs between two plain configs (nested dicts compared
    key by key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in differences(old.get(key), new.get(key), f"{path}.{key}")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
