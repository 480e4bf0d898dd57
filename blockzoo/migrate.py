"""``python -m blockzoo.migrate xformers CONFIG -o PRESET.yaml``: an xFormers config as a blockzoo model preset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from blockzoo.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Write the blockzoo preset (loadable with ``blockzoo.build_model``) equivalent to an xFormers config."""
    parser = argparse.ArgumentParser(prog="python -m blockzoo.migrate", description=__doc__)
    parser.add_argument("source", choices=["xformers"], help="the library the config comes from")
    parser.add_argument("config", help="YAML/JSON file of what xFormerConfig took (list of block configs)")
    parser.add_argument("-o", "--output", required=True, help="the blockzoo model preset to write (YAML)")
    args = parser.parse_args(argv)
    from blockzoo.xformers import to_blockzoo

    try:
        preset = to_blockzoo(args.config)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.output).write_text(yaml.safe_dump(preset, sort_keys=False))
    print(f"wrote {args.output}: build it with blockzoo.build_model({args.output!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
