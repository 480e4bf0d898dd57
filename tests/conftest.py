"""Test setup. Triton kernels run on the CPU through the interpreter (set before blockzoo imports), except
in a ``pytest -m gpu`` run, which selects the CUDA tests and compiles the kernels for the GPU."""
import os
import sys


def _gpu_run(argv: list[str]) -> bool:
    """Whether the mark expression (``-m EXPR``) selects the ``gpu`` tests."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-m":
            return "gpu" in value and "not gpu" not in value
    return False


os.environ.setdefault("TRITON_INTERPRET", "0" if _gpu_run(sys.argv) else "1")
# Installed blockzoo plugins stay out of the tests (and the apps they start); a test that installs one selects it
os.environ["BLOCKZOO_ENTRY_POINTS"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

from blockzoo.ops import backend  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_backend_state():
    """Each test starts with no remembered warnings, failures or recorded paths, and a fixed seed."""
    backend.reset()
    torch.manual_seed(0)
    yield
    backend.reset()


_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("BLOCKZOO_TEST_RESULTS")  # the record of a GPU run: a JSON file or a results folder
    if not path or hasattr(session.config, "workerinput"):  # xdist workers: the controller writes it
        return
    import datetime
    import json
    import re
    from pathlib import Path

    import triton

    counts = {k: sum(v == k for v in _outcomes.values()) for k in ("passed", "failed", "skipped")}
    meta = {"date": datetime.date.today().isoformat(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "command": "python3 -m pytest " + " ".join(session.config.invocation_params.args)}
    if Path(path).is_dir():  # a results folder: the file is named like the benchmarks' results
        slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
        path = Path(path) / f"{meta['date']}-{slug}-gpu-tests.json"
    with open(path, "w") as f:
        json.dump({"meta": meta, "counts": counts, "tests": _outcomes}, f, indent=1)
