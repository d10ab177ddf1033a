"""The benchmark scripts run (in their quick mode); their timings are reported, never asserted."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_bench_stack_quick_runs(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_stack
    finally:
        sys.path.remove(str(BENCH))
    results = bench_stack.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert len(results["load"]["lorastack"]) == len(results["load"]["diffusers"]) == 6
    assert set(results["step"]) == {"base", "lorastack_3_active", "merged_control", "diffusers_3_active"}
    assert (tmp_path / "r.json").exists()


def test_bench_transformer_quick_runs(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_transformer
    finally:
        sys.path.remove(str(BENCH))
    results = bench_transformer.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert len(results["load"]["lorastack"]) == len(results["load"]["diffusers"]) == 6
    assert len(results["switch_only"]["lorastack"]) == len(results["switch_plus_step"]["diffusers"]) == 4
    assert set(results["step"]) == {"base", "lorastack_3_active", "diffusers_3_active"}
    assert (tmp_path / "r.json").exists()
