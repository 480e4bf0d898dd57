"""The tqdm progress bar: loss, tokens/s and (on CUDA) MFU; off when not a TTY or not rank 0."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """A progress bar over optimizer steps (a no-op when disabled)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (enabled and sys.stderr.isatty()))
        self.post: dict[str, str] = {}

    def update(self, loss: float, tokens_per_s: float | None = None, mfu: float | None = None) -> None:
        """Advance one step; throughput figures, when given, replace the shown ones."""
        self.post["loss"] = f"{loss:.4f}"
        if tokens_per_s is not None:
            self.post["tok/s"] = f"{tokens_per_s:,.0f}"
        if mfu is not None:
            self.post["mfu"] = f"{100 * mfu:.1f}%"
        self.bar.set_postfix(self.post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
