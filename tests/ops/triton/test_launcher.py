"""The launch cache re-uses a compiled kernel only for calls Triton would specialize the same way."""
import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from blockzoo.ops.triton import launcher


def _kernel_body(X, Y, n, scale, BLOCK: tl.constexpr, ACT: tl.constexpr = "none"):
    pass


class _Compiled:
    def __init__(self, calls: list):
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args, stream=None: self.calls.append(("fast", tuple(grid), args))


class _Kernel:
    """Stands for a @triton.jit kernel: ``kernel[grid](...)`` is Triton's ordinary (binding) launch."""

    def __init__(self):
        self.fn = JITFunction(_kernel_body)
        self.calls: list = []

    def __getitem__(self, grid):
        def run(*args, **meta):
            g = grid({**dict(zip(self.fn.arg_names, args)), **meta}) if callable(grid) else grid
            self.calls.append(("bind", tuple(g), args, meta))
            return _Compiled(self.calls)
        return run


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(launcher, "_stream", lambda device: 0)
    launcher.clear()
    yield _Kernel()
    launcher.clear()


def test_second_call_skips_binding_and_appends_constexprs(kernel):
    x, y = torch.randn(64), torch.randn(64)
    for _ in range(2):
        launcher.launch(kernel, (4,), x, y, 64, 0.5, BLOCK=16)
    assert [c[0] for c in kernel.calls] == ["bind", "fast"]
    assert kernel.calls[1][1] == (4, 1, 1)
    assert kernel.calls[1][2] == (x, y, 64, 0.5, 16, "none")  # BLOCK from meta, ACT from its default


@pytest.mark.parametrize("change", ["alignment", "int_one", "int_div16", "int64", "dtype", "meta"])
def test_a_different_specialization_binds_again(kernel, change):
    base = torch.randn(80)
    args = [base[:64], torch.randn(64), 64, 0.5]
    meta = {"BLOCK": 16}
    launcher.launch(kernel, (4,), *args, **meta)
    if change == "alignment":
        args[0] = base[1:65]  # 4 bytes off a 16-byte boundary
    elif change == "int_one":
        args[2] = 1
    elif change == "int_div16":
        args[2] = 65
    elif change == "int64":
        args[2] = 2**40
    elif change == "dtype":
        args[1] = args[1].double()
    else:
        meta = {"BLOCK": 32}
    launcher.launch(kernel, (4,), *args, **meta)
    assert [c[0] for c in kernel.calls] == ["bind", "bind"]


def test_callable_grid_is_evaluated_per_launch_with_the_constexprs(kernel):
    x, y = torch.randn(64), torch.randn(64)

    def grid_for(n: int):
        return lambda meta: (n // meta["BLOCK"],)

    launcher.launch(kernel, grid_for(64), x, y, 64, 0.5, BLOCK=16)
    launcher.launch(kernel, grid_for(128), x, y, 128, 0.5, BLOCK=16)
    assert [c[:2] for c in kernel.calls] == [("bind", (4,)), ("fast", (8, 1, 1))]


def test_constexpr_passed_positionally_never_takes_the_cache(kernel):
    x, y = torch.randn(64), torch.randn(64)
    for _ in range(3):
        launcher.launch(kernel, (4,), x, y, 64, 0.5, 16)
    assert [c[0] for c in kernel.calls] == ["bind"] * 3


def test_arguments_of_other_types_never_take_the_cache(kernel):
    x, y = torch.randn(64), torch.randn(64)
    for _ in range(2):
        launcher.launch(kernel, (4,), x, y, (64, 1), 0.5, BLOCK=16)  # a tuple: Triton specializes inside it
    assert [c[0] for c in kernel.calls] == ["bind", "bind"]


def test_fast_off_always_binds(kernel, monkeypatch):
    monkeypatch.setattr(launcher, "FAST", False)
    x, y = torch.randn(64), torch.randn(64)
    for _ in range(2):
        launcher.launch(kernel, (4,), x, y, 64, 0.5, BLOCK=16)
    assert [c[0] for c in kernel.calls] == ["bind", "bind"]
