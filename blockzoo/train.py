"""``python -m blockzoo.train``: the Hydra training app.

    python -m blockzoo.train model=gpt_small attention=local attention.window_size=64 trainer.steps=200
    python -m blockzoo.train -m attention=scaled_dot_product,local trainer.steps=5
    python -m blockzoo.train plugins=my_pkg.gated attention=gated
    torchrun --nproc_per_node=2 -m blockzoo.train trainer.strategy=ddp

Each run writes metrics.jsonl, config.yaml and checkpoint/ to its Hydra output folder.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from blockzoo.composition import check_app_config, compose, normalize_overrides, sweep_jobs
from blockzoo.config import ConfigError
from blockzoo.plugins import load_plugins, plugin_overrides

# Hydra flags under which the config is not (only) blockzoo's, or nothing is composed: the app checks it itself
SKIP_PREFLIGHT_FLAGS = ("config_path", "config_name", "config_dir", "help", "hydra_help", "info", "shell_completion",
                        "experimental_rerun")


@hydra.main(config_path="pkg://blockzoo.configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    from blockzoo.trainer import run

    check_app_config(cfg)
    return run(cfg, HydraConfig.get().runtime.output_dir, earlier_runs=earlier_runs()).final


def earlier_runs() -> str | None:
    """A glob of the folders this app's earlier runs wrote: ``hydra.run.dir`` (in a sweep ``hydra.sweep.dir`` /
    ``subdir``) with each interpolation as ``*`` (``<cwd>/outputs/*/*`` by default); None for a fixed folder."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        raw = OmegaConf.to_container(hydra_cfg.sweep, resolve=False)
        pattern = f"{raw['dir']}/{raw['subdir']}"
    else:
        pattern = OmegaConf.to_container(hydra_cfg.run, resolve=False)["dir"]
    if "${" not in pattern:
        return None
    return os.path.join(hydra_cfg.runtime.cwd, re.sub(r"\$\{[^}]*\}", "*", pattern))


def check_command_line(argv: list[str]) -> None:
    """Compose the command line's config (every job of a sweep) as ``blockzoo.compose`` does, before Hydra does;
    raise ConfigError naming what is wrong."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag, None) for flag in SKIP_PREFLIGHT_FLAGS):
        return
    for job in sweep_jobs(args.overrides) if args.multirun else [args.overrides]:
        compose(job)


def cli(argv: list[str]) -> None:
    """Accept a single plugin name, load the plugins the command line names (so Hydra can select their
    components), check the config as ``blockzoo.compose`` does, then run the app."""
    argv = normalize_overrides(argv)
    sys.argv[1:] = argv
    try:
        load_plugins(plugin_overrides(argv))
        check_command_line(argv)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    main()


if __name__ == "__main__":
    cli(sys.argv[1:])
