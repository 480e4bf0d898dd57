"""``python -m blockzoo.train``: the Hydra training app.

    python -m blockzoo.train model=gpt_small attention=local attention.window_size=64 trainer.steps=200
    python -m blockzoo.train -m attention=scaled_dot_product,local trainer.steps=5
    python -m blockzoo.train +plugins=[my_pkg.gated] attention=gated
    torchrun --nproc_per_node=2 -m blockzoo.train trainer.strategy=ddp

Each run writes metrics.jsonl, config.yaml and checkpoint/ to its Hydra output folder.
"""
from __future__ import annotations

import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockzoo.config import plugin_overrides
from blockzoo.plugins import load_plugins


@hydra.main(config_path="pkg://blockzoo.configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    from blockzoo.trainer import run

    return run(cfg, HydraConfig.get().runtime.output_dir).final


def cli(argv: list[str]) -> None:
    """Load plugins named on the command line (so Hydra can select their components), then run the app;
    if Hydra rejects an override, add 'did you mean' hints."""
    load_plugins(plugin_overrides(argv))
    try:
        main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            from blockzoo.trainer.hints import override_hints

            for hint in override_hints(argv):
                print(f"hint: {hint}", file=sys.stderr)
        raise


if __name__ == "__main__":
    cli(sys.argv[1:])
