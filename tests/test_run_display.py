"""What a person sees of a run: one bar on a terminal that no line breaks, plain lines in a log, labelled
figures, one line about fallbacks, each sweep job's own peak memory, and the thread count."""
import fcntl
import io
import json
import logging
import os
import pty
import re
import struct
import sys
import termios
import warnings
from pathlib import Path

import pytest
import torch

from blockzoo import compare
from blockzoo.trainer.loop import default_threads
from blockzoo.trainer.progress import Progress
from cli_helpers import TINY, check, run_app

QUICK = [*TINY, "task=copy", "task.seq_len=16"]
BAR = re.compile(r"train +\d+%\|")
NO_GPU = not torch.cuda.is_available()


def screen(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw`` output: a carriage return moves back to the line's start."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        shown: list[str] = []
        col = 0
        for piece in re.split(r"(\r)", line):
            if piece == "\r":
                col = 0
                continue
            shown[col:col + len(piece)] = piece
            col += len(piece)
        lines.append("".join(shown).rstrip())
    return [line for line in lines if line]


def run_in_terminal(args: list[str], cwd: Path) -> str:
    """``python -m blockzoo.train args`` on a pseudo-terminal 120 columns wide: everything it showed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal, 40 lines of 120 columns
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "blockzoo.train", *args], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, out[-3000:]
    return out


def test_a_terminal_shows_one_bar_that_log_lines_do_not_break(tmp_path):
    out = run_in_terminal([*QUICK, "trainer.progress=true", "trainer.steps=6", "trainer.eval_every=2",
                           f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    lines = screen(out)
    bars = [line for line in lines if BAR.search(line)]
    assert len(bars) == 1 and "100%" in bars[0] and "6/6 steps" in bars[0], lines
    assert re.search(r"ETA 00:00, loss \d\.\d{4}, [\d,]+ tok/s\]", bars[0])
    for line in lines:
        if line is not bars[0]:
            assert "steps [" not in line and not line.startswith("train "), line  # no leftover bar pieces
    evals = [line for line in lines if "val_loss" in line and "done:" not in line]
    assert len(evals) == 3 and all(line.startswith("[") and "][blockzoo.train][INFO] - step " in line for line in evals)
    assert "outputs go to" in lines[0] and "done:" in lines[-1]


def test_lines_printed_while_the_bar_is_up_clear_it_first(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    log = logging.getLogger("display_test")
    handler = logging.StreamHandler(term)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(log, "level", logging.INFO)
    def print_warning(message, category, filename, lineno, file=None, line=None):  # Python's own, not pytest's
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = print_warning
        with Progress(4, 0, 1, True, log.info) as progress:
            for step in range(1, 5):
                progress.update(step, 1.0, 100.0, None)
                if step == 2:
                    warnings.warn("careful")
                    log.info("an evaluation line")
    lines = screen(term.getvalue())
    assert [line for line in lines if BAR.search(line)] == [lines[-1]]
    assert any(line.endswith("UserWarning: careful") for line in lines) and "an evaluation line" in lines


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_log_gets_plain_lines_from_step_one_and_a_summary(tmp_path):
    run_dir = tmp_path / "run"
    proc = check(run_app([*QUICK, "trainer.progress=true", "trainer.steps=4", "trainer.log_every=2",
                          "trainer.eval_every=0", f"hydra.run.dir={run_dir}"], cwd=tmp_path))
    lines = [line.split("] - ", 1)[-1] for line in proc.stdout.splitlines() if "][blockzoo.train][" in line]
    assert lines[0] == f"outputs go to {run_dir}/ (metrics.jsonl, config.yaml, checkpoint/)"
    steps = [line for line in lines if re.match(r"step \d/4: loss", line)]
    assert [s.split(":")[0] for s in steps] == ["step 1/4", "step 2/4", "step 4/4"]
    assert all(re.search(r", [\d,]+ tok/s, ETA \d\d:\d\d$", s) for s in steps)
    final = metrics(run_dir)[-1]
    shown = f"{final['tokens_per_s']:,.0f} tok/s"
    assert shown in steps[-1] and f"{shown} (mean over training steps)" in lines[-1]
    assert lines[-1].startswith("done: 4 steps;") and lines[-1].endswith(f"outputs in {run_dir}/")
    assert "BlockzooFallbackWarning" not in proc.stderr
    if NO_GPU:
        notes = [line for line in lines if "PyTorch path" in line]
        assert len(notes) == 1 and notes[0].startswith("the fast paths need a CUDA GPU and this machine has none: ")
        assert "trainer.warnings=quiet" in notes[0] and "triton" not in notes[0]


def test_quiet_warnings_and_thread_count(tmp_path):
    proc = check(run_app([*QUICK, "trainer.steps=1", "trainer.eval_every=0", "trainer.warnings=quiet",
                          "trainer.threads=2", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path))
    assert "PyTorch path" not in proc.stdout and "Fallback" not in proc.stderr
    assert "(2 CPU threads)" in proc.stdout
    bad = run_app([*QUICK, "trainer.warnings=loud", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert bad.returncode != 0 and "trainer.warnings='loud': expected one of summary, quiet" in bad.stderr


def test_default_threads_are_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU figure reads /proc/self")
def test_each_sweep_job_reports_its_own_peak_memory(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    check(run_app(["-m", *QUICK, "model.num_layers=2", "trainer.batch_size=16", "trainer.steps=2",
                   "trainer.eval_every=0", f"hydra.sweep.dir={sweep}", "model.dim_model=32,512,32,512"], cwd=tmp_path))
    peaks = [metrics(sweep / str(job))[-1]["peak_memory_mb"] for job in range(4)]
    assert peaks[2] < 0.25 * peaks[1], peaks  # the small job is not charged what the big one left
    assert abs(peaks[3] - peaks[1]) < 0.15 * peaks[1], peaks  # the same job measures alike wherever it runs
    assert compare.main([str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "peak_memory_mb: each run's own peak" in table and "resident memory" in table
    assert "tokens_per_s: the mean over training steps" in table
    assert (sweep / "comparison.png").stat().st_size > 0  # matplotlib comes with scripts/setup.sh
