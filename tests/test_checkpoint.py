"""Checkpoints: a kill at any filesystem step of a write leaves the newest complete checkpoint resumable and the one
before it whole; checksums catch flipped bytes and truncated files, and resume falls back to the previous one."""
import os
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch

import blockzoo
from blockzoo.trainer import checkpoint as ckpt

FS_STEPS = [(os, "mkdir"), (os, "rename"), (os, "replace"), (os, "fsync"), (shutil, "rmtree")]


def tiny_model() -> torch.nn.Module:
    return blockzoo.build_model({"name": "decoder_lm", "dim_model": 8, "num_layers": 1, "num_heads": 2,
                                 "vocab_size": 11, "max_seq_len": 8})


def write(run_dir: Path, step: int) -> Path:
    return ckpt.write_checkpoint(run_dir, tiny_model(), {"step": step, "optimizer": {}})


class Steps:
    """Wraps each filesystem call of ``FS_STEPS``: records it, and kills the process (SIGKILL) at call ``kill_at``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None):
        self.calls: list[str] = []
        for module, name in FS_STEPS:
            monkeypatch.setattr(module, name, self.wrap(name, getattr(module, name), kill_at))

    def wrap(self, name, fn, kill_at):
        def step(*args, **kwargs):
            if len(self.calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            self.calls.append(f"{name}{tuple(str(a) for a in args)}")
            return fn(*args, **kwargs)
        return step


def killed_write(run_dir: Path, step: int, kill_at: int) -> None:
    """Write checkpoint ``step`` in a forked process killed before its filesystem call number ``kill_at``."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest cleanup, no atexit, as in a real kill
        try:
            with pytest.MonkeyPatch.context() as mp:
                Steps(mp, kill_at)
                write(run_dir, step)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.fixture
def two_checkpoints(tmp_path) -> Path:
    """A run folder with checkpoints of steps 1 (previous) and 2 (newest)."""
    run_dir = tmp_path / "template"
    write(run_dir, 1)
    write(run_dir, 2)
    return run_dir


def test_kill_at_every_filesystem_step_resumes_the_newest_complete_checkpoint(two_checkpoints, tmp_path, monkeypatch):
    shutil.copytree(two_checkpoints, tmp_path / "counted")
    with monkeypatch.context() as mp:
        steps = Steps(mp)
        write(tmp_path / "counted", 3)
    calls = steps.calls
    complete_after = next(i for i, c in enumerate(calls) if c.startswith("rename") and ckpt.MANIFEST_FILE in c)
    assert len(calls) > 10
    for kill_at in range(len(calls)):
        run_dir = tmp_path / f"killed_{kill_at}"
        shutil.copytree(two_checkpoints, run_dir)
        killed_write(run_dir, 3, kill_at)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no checkpoint may be damaged
            ckpt.recover(run_dir)
            folder = ckpt.resumable(run_dir)
        expected = 3 if kill_at > complete_after else 2
        assert folder == run_dir / ckpt.LATEST, calls[kill_at]
        assert ckpt.verify(folder) == expected, calls[kill_at]
        assert ckpt.verify(run_dir / ckpt.PREVIOUS) == expected - 1, calls[kill_at]
        assert sorted(p.name for p in run_dir.iterdir()) == [ckpt.LATEST, ckpt.PREVIOUS], calls[kill_at]


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    folder = write(tmp_path, 7)
    manifest = ckpt.read_manifest(folder)
    assert manifest["step"] == 7 and set(manifest["files"]) == set(ckpt.REQUIRED_FILES)
    assert manifest["files"][ckpt.STATE_FILE]["sha256"] == ckpt.sha256(folder / ckpt.STATE_FILE)
    assert ckpt.verify(folder) == 7


@pytest.mark.parametrize("name", ckpt.REQUIRED_FILES)
def test_flipped_byte_is_named(tmp_path, name):
    folder = write(tmp_path, 1)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match=rf"{name}: sha256 differs"):
        ckpt.verify(folder)


@pytest.mark.parametrize("name", ckpt.REQUIRED_FILES)
def test_truncated_file_is_named(tmp_path, name):
    folder = write(tmp_path, 1)
    (folder / name).write_bytes((folder / name).read_bytes()[:10])
    with pytest.raises(ckpt.CorruptCheckpointError, match=rf"{name}: 10 bytes, the manifest says \d+"):
        ckpt.verify(folder)


def test_missing_manifest_is_named(tmp_path):
    folder = write(tmp_path, 1)
    (folder / ckpt.MANIFEST_FILE).unlink()
    with pytest.raises(ckpt.CorruptCheckpointError, match=rf"{ckpt.MANIFEST_FILE}: missing"):
        ckpt.verify(folder)


def test_damaged_newest_falls_back_to_previous_with_a_warning(two_checkpoints):
    (two_checkpoints / ckpt.LATEST / ckpt.WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.warns(blockzoo.BlockzooWarning, match=rf"{ckpt.WEIGHTS_FILE}.*resuming from .*{ckpt.PREVIOUS}"):
        assert ckpt.resumable(two_checkpoints) == two_checkpoints / ckpt.PREVIOUS
    (two_checkpoints / ckpt.PREVIOUS / ckpt.STATE_FILE).unlink()
    with pytest.raises(ckpt.CorruptCheckpointError, match=rf"no whole checkpoint.*{ckpt.STATE_FILE}: missing"):
        ckpt.resumable(two_checkpoints)


def test_recover_keeps_previous_when_newest_is_damaged(two_checkpoints, monkeypatch):
    """A kill between the renames left step 3 staged; step 2 (newest) was damaged since: 3 becomes the newest and
    step 1 stays the previous one."""
    staged = Path(ckpt.tempfile.mkdtemp(prefix=ckpt.TMP_PREFIX, dir=two_checkpoints)) / ckpt.LATEST
    ckpt.save(tiny_model(), staged, extra={ckpt.STATE_FILE: lambda p: torch.save({"step": 3}, p)})
    ckpt.write_manifest(staged, 3)
    (two_checkpoints / ckpt.LATEST / ckpt.CONFIG_FILE).write_text("damaged")
    ckpt.recover(two_checkpoints)
    assert ckpt.verify(two_checkpoints / ckpt.LATEST) == 3 and ckpt.verify(two_checkpoints / ckpt.PREVIOUS) == 1
    assert sorted(p.name for p in two_checkpoints.iterdir()) == [ckpt.LATEST, ckpt.PREVIOUS]
