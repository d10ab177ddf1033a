"""The benchmark scripts run (in their quick mode); their timings are reported, never asserted."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _script(name: str):
    """A benchmark script imported as a module (bench/ is not a package)."""
    import importlib

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(autouse=True)
def torch_settings_restored():
    """The scripts set process-wide torch settings for steady timings (one thread, subnormals flushed); the tests
    that run after them in the same process must compute as before (bit-identical comparisons depend on it)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # what the test session runs with (conftest's _flush_subnormals; no getter)


def test_bench_stack_quick_runs(tmp_path):
    bench_stack = _script("bench_stack")
    results = bench_stack.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert len(results["load"]["lorastack"]) == len(results["load"]["diffusers"]) == 6
    assert set(results["step"]) == {"base", "lorastack_3_active", "merged_control", "diffusers_3_active"}
    assert (tmp_path / "r.json").exists()


def test_bench_transformer_quick_runs(tmp_path):
    bench_transformer = _script("bench_transformer")
    results = bench_transformer.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert len(results["load"]["lorastack"]) == len(results["load"]["diffusers"]) == 6
    assert len(results["switch_only"]["lorastack"]) == len(results["switch_plus_step"]["diffusers"]) == 4
    assert set(results["step"]) == {"base", "lorastack_3_active", "diffusers_3_active"}
    assert (tmp_path / "r.json").exists()


def test_bench_library_quick_runs(tmp_path):
    bench_library = _script("bench_library")
    results = bench_library.main(["--quick", "--json", str(tmp_path / "r.json")])
    library, first = results["library"], results["first_scan"]
    assert first["added"] == library["adapters"] + library["duplicates"] and first["errors"] == 0
    assert first["skipped"] == library["others"] and first["sidecars"] == library["sidecars"]
    assert results["rescan_unchanged"]["hashed"] == 0
    changes = results["rescan_after_changes"]
    assert changes["hashed"] == changes["changed"] == changes["new_versions"] == 10  # exactly the changed files
    assert results["list"]["rows"] == first["added"] and (tmp_path / "r.json").exists()


def test_bench_arith_quick_runs(tmp_path):
    bench_arith = _script("bench_arith")
    results = bench_arith.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert results["layers"] == 2 and (results["source_rank"], results["rank"]) == (16, 4)
    for op in ("resize", "merge"):
        r = results[op]
        assert r["lorastack_s"] > 0 and r["kohya_s"] > 0
        # both are the optimal truncation: the same error, √Σ discarded σ² (float32 rounding apart)
        assert r["lorastack_relative_error"] <= r["optimal_relative_error"] * (1 + 1e-3) + 1e-6
        assert (
            abs(r["lorastack_relative_error"] - r["kohya_relative_error"]) <= 1e-3 * r["kohya_relative_error"] + 1e-6
        )
    assert results["resize"]["optimal_relative_error"] > 0.1  # rank 16 → 4 loses something real
    assert (tmp_path / "r.json").exists()


def _gpu_suite():
    return _script("gpu_suite")


def test_gpu_suite_dry_run_of_two_rows():
    results = _gpu_suite().main(["--dry-run", "--only", "bypass,flux"])
    assert results["dry_run"] and results["machine"] == "cpu" and {"stack", "hotswap", "train"}.isdisjoint(results)
    assert set(results["bypass"]) == {"base", "merge", "bypass", "diffusers", "merge_rescale", "bypass_rescale"}
    step = results["flux"]["step"]  # the row: a Flux step with 2 adapters, against diffusers
    assert set(step) == {"base", "lorastack_2_active", "diffusers_2_active"} and all(step.values())


@pytest.mark.slow  # the whole dry run: about 3 minutes of the 2-core machine
def test_gpu_suite_whole_dry_run(tmp_path):
    suite = _gpu_suite()
    results = suite.main(["--dry-run", "--json", str(tmp_path / "r.json")])
    assert not [name for name in suite.SECTIONS if "error" in results[name]]
    assert set(results["train"]) == set(suite.TRAIN_ROWS)
    assert results["train"]["sdxl_nf4"]["quantize_base"] == "torchao-int8"  # NF4's stand-in on the CPU
    assert results["train"]["sdxl_1024"]["model"] == "tiny sdxl"
    assert results["hotswap"]["lorastack"]["recompiles"] == 0
