"""Training: the loop (``run``), checkpoints, distributed setup, metrics and progress, one file each."""
from blockzoo.trainer.loop import NonFiniteLossError, RunResult, run

__all__ = ["run", "RunResult", "NonFiniteLossError"]
