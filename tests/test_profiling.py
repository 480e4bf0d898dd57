"""trainer.profile_step: the step summary's arithmetic, and a profiled two-process DDP step on the CPU."""
import json

import pytest

from blockzoo.trainer.profiling import is_communication, summarize, union_length
from test_distributed import ARGS, torchrun


def test_union_length_merges_overlaps():
    assert union_length([]) == 0
    assert union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)


def test_summary_counts_only_communication_no_compute_overlaps():
    events = [("ncclDevKernel_AllReduce_Sum_f32", 0.0, 4000.0),   # 4 ms of all-reduce, of which 1 ms exposed
              ("ampere_bf16_gemm", 1000.0, 4000.0), ("triton_red_fused", 4000.0, 6000.0)]
    s = summarize(events, wall_ms=8.0)
    assert s["communication_ms"] == pytest.approx(4.0)
    assert s["exposed_communication_ms"] == pytest.approx(1.0)
    assert s["communication_share"] == pytest.approx(0.5)
    assert s["compute_ms"] == pytest.approx(5.0)
    assert s["heaviest"][0]["name"].startswith("nccl")
    assert is_communication("gloo:all_reduce") and not is_communication("aten::mm")


def test_profiled_ddp_step_reports_its_communication(tmp_path):
    torchrun([*ARGS, "trainer.strategy=ddp", "trainer.profile_step=2"], tmp_path)
    ranks = json.loads((tmp_path / "profile.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["step_ms"] > 0 and 0 < r["communication_ms"] <= r["step_ms"]
        assert 0 <= r["exposed_communication_ms"] <= r["communication_ms"]
