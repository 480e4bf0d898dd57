"""A run's fast-path fallbacks as one line a person can act on (``trainer.warnings``), instead of one
:class:`BlockzooFallbackWarning` per op with the source line that raised it."""
from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import torch

from blockzoo.ops.backend import BlockzooFallbackWarning

FALLBACK = re.compile(r"^blockzoo\.ops\.(?P<op>\w+): (?P<reason>.*?)(?:; using the PyTorch path)?$")


class FallbackNotices:
    """Within ``with``: fallback warnings are collected ('summary') or dropped ('quiet'); other warnings
    show as before. :meth:`flush` prints what was collected through ``show``, one line per reason."""

    def __init__(self, mode: str, device: torch.device, show: Callable[[str], None]):
        self.mode, self.device, self.show = mode, device, show
        self.pending: dict[str, list[str]] = {}
        self._catch = warnings.catch_warnings()

    def __enter__(self) -> FallbackNotices:
        self._catch.__enter__()
        warnings.simplefilter("ignore" if self.mode == "quiet" else "always", BlockzooFallbackWarning)
        previous = warnings.showwarning

        def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, BlockzooFallbackWarning):
                self.collect(str(message))
            else:
                previous(message, category, *args, **kwargs)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)

    def collect(self, message: str) -> None:
        found = FALLBACK.match(message)
        op, reason = (found["op"], found["reason"]) if found else ("?", message)
        self.pending.setdefault(self.actionable(reason), []).append(op)

    def actionable(self, reason: str) -> str:
        """The reason a person can act on: on a CPU device, that the fast paths need a CUDA GPU."""
        if self.device.type == "cuda" or not (reason.startswith("tensor on") or "triton is not installed" in reason):
            return reason
        if torch.cuda.is_available():
            return f"the run is on the {self.device.type} (trainer.device) and the fast paths need a CUDA GPU"
        return "the fast paths need a CUDA GPU and this machine has none"

    def flush(self) -> None:
        """One line per reason collected since the last flush."""
        for reason, ops in self.pending.items():
            self.show(f"{reason}: {', '.join(ops)} run{'s' if len(ops) == 1 else ''} on the PyTorch path "
                      "(trainer.warnings=quiet hides this line)")
        self.pending.clear()
