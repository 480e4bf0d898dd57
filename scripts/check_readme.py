"""Run the README's snippets in order, as a new user would, and say which failed.

    python3 scripts/check_readme.py [README.md]

Every ```python and ```bash block of the README runs, in order, from one fresh temporary folder, with this
checkout's ``blockzoo`` first on PYTHONPATH: a python block as a script, a bash block one command at a time.
A block preceded by ``<!-- readme-check: file PATH -->`` is written to PATH instead (a file that later
blocks use). What does not run says why:

- ``<!-- readme-check: gpu -->`` before a block: it needs a CUDA GPU, skipped on a machine without one;
- the set-up and test commands: this checker runs in a set-up checkout, and is itself one of the tests;
- training is shortened: every ``python3 -m blockzoo.train`` command gets the overrides in ``SHORTEN``
  (they replace the same keys given in the README, e.g. ``trainer.steps=1500`` becomes ``trainer.steps=2``).

Exit status 0 when every snippet that ran succeeded.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORTEN = ("trainer.steps=2", "trainer.eval_batches=1", "trainer.sample_tokens=8")
SKIP = {("bash", "scripts/setup.sh"): "set-up: this checker runs in a checkout that is already set up",
        ("python3", "-m", "pytest"): "the test suite: this checker is one of its tests"}
MARKER = re.compile(r"<!--\s*readme-check:\s*(?P<what>gpu|file\s+(?P<path>\S+))\s*-->")
BLOCK = re.compile(r"^```(?P<lang>python|bash)\n(?P<code>.*?)^```$", re.S | re.M)


@dataclass
class Snippet:
    """One fenced block: its language, code, line in the README and the marker before it, if any."""

    lang: str
    code: str
    line: int
    marker: re.Match | None


def snippets(text: str) -> list[Snippet]:
    """The README's python and bash blocks, in order, each with the marker on the line before it."""
    found = []
    for block in BLOCK.finditer(text):
        before = text[:block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append(Snippet(block["lang"], block["code"], text.count("\n", 0, block.start()) + 1,
                             MARKER.search(before)))
    return found


def commands(code: str) -> list[list[str]]:
    """A bash block's commands, as argument lists: lines joined at a trailing backslash, comments dropped,
    ``a && b`` split in two."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return out


def skip_reason(words: list[str]) -> str | None:
    return next((why for prefix, why in SKIP.items() if tuple(words[:len(prefix)]) == prefix), None)


def shorten(words: list[str]) -> list[str]:
    """A training command with the ``SHORTEN`` overrides in place of the same keys."""
    if words[:3] != ["python3", "-m", "blockzoo.train"]:
        return words
    keys = {o.split("=")[0] for o in SHORTEN}
    return [w for w in words if w.split("=")[0] not in keys] + list(SHORTEN)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> bool:
    """Run one command in ``cwd``; print its output when it fails."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    print(f"  {status}, {time.perf_counter() - start:.1f} s ({_children_cpu() - cpu:.1f} s of CPU)")
    if done.returncode != 0:
        print(done.stdout[-3000:] + done.stderr[-3000:])
    return done.returncode == 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(readme: Path, cwd: Path) -> list[str]:
    """Run every snippet of ``readme`` in ``cwd``; the failed ones, as 'README.md:LINE: what'."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    has_gpu = subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(not torch.cuda.is_available())"],
                             env=env).returncode == 0
    failed = []
    for i, snippet in enumerate(snippets(readme.read_text())):
        where = f"{readme.name}:{snippet.line}"
        if snippet.marker and snippet.marker["path"]:
            target = cwd / snippet.marker["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(snippet.code)
            print(f"{where}: written to {snippet.marker['path']}")
        elif snippet.marker and not has_gpu:
            print(f"{where}: skipped: needs a CUDA GPU, and this machine has none")
        elif snippet.lang == "python":
            script = cwd / f"readme_snippet_{i}.py"
            script.write_text(snippet.code)
            print(f"{where}: python snippet")
            if not run([sys.executable, script.name], cwd, env):
                failed.append(f"{where}: python snippet")
        else:
            for words in commands(snippet.code):
                failed += run_command(words, where, cwd, env)
    return failed


def run_command(words: list[str], where: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """Run one bash command of the README (skipped or shortened as the module says); its failure, if any."""
    why = skip_reason(words)
    if why:
        print(f"{where}: skipped `{shlex.join(words)}`: {why}")
        return []
    short = shorten(words)
    note = f" (shortened: {' '.join(SHORTEN)})" if short != words else ""
    print(f"{where}: `{shlex.join(words)}`{note}")
    return [] if run(["bash", "-c", shlex.join(short)], cwd, env) else [f"{where}: {shlex.join(words)}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", nargs="?", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="readme-check-") as tmp:
        print(f"running the snippets of {args.readme} in {tmp}")
        failed = check(args.readme.resolve(), Path(tmp))
    print(f"{len(failed)} snippet(s) failed" + "".join(f"\n  {f}" for f in failed) if failed else "every snippet ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
