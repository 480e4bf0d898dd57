"""What a person sees of a run: one bar on a terminal that every other line is printed through, plain
lines elsewhere; both with labelled throughput and the time left."""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from typing import Callable, Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}, ETA {remaining}{postfix}]"


def figures(loss: float, tokens_per_s: float | None, mfu: float | None) -> str:
    """'loss 2.3101, 3,145 tok/s, MFU 31.0%': the throughput is the training steps' mean so far."""
    parts = [f"loss {loss:.4f}"]
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    if mfu is not None:
        parts.append(f"MFU {100 * mfu:.1f}%")
    return ", ".join(parts)


class Progress:
    """Step progress, shown where ``show`` is given (rank 0). On a terminal with ``bar``: one tqdm bar, and
    log lines and warnings are printed through it, so none breaks it. Otherwise a plain line (through
    ``show``) at the first step, every ``every`` steps and at the last."""

    def __init__(self, total: int, initial: int, every: int, bar: bool, show: Callable[[str], None] | None):
        self.total, self.initial, self.every, self.show = total, initial, every, show
        self.started = time.perf_counter()
        self.bar: tqdm | None = None
        if show is not None and bar and sys.stdout.isatty():
            self.bar = tqdm(total=total, initial=initial, desc="train", file=sys.stdout, dynamic_ncols=True,
                            bar_format=BAR_FORMAT)
        self._through_bar = contextlib.ExitStack()

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self._through_bar.enter_context(logging_redirect_tqdm())
            self._through_bar.enter_context(warnings_through_bar())
        return self

    def __exit__(self, *exc: object) -> None:
        self._through_bar.close()
        if self.bar is not None:
            self.bar.close()

    def update(self, step: int, loss: float, tokens_per_s: float | None, mfu: float | None) -> None:
        """Step ``step`` is done; ``tokens_per_s`` is the mean over the training steps so far."""
        text = figures(loss, tokens_per_s, mfu)
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.show is not None and (step == self.initial + 1 or step % self.every == 0 or step == self.total):
            self.show(f"step {step}/{self.total}: {text}, ETA {self.eta(step)}")

    def eta(self, step: int) -> str:
        """Time left at the pace so far, as tqdm prints it."""
        done = step - self.initial
        return tqdm.format_interval((time.perf_counter() - self.started) / done * (self.total - step))


@contextlib.contextmanager
def warnings_through_bar() -> Iterator[None]:
    """Python warnings shown while the bar is up clear it first and redraw it after."""
    previous = warnings.showwarning

    def show(*args: object, **kwargs: object) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            previous(*args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
