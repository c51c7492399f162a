"""The outbound benchmark on a small run: both allocations feasible, the LP's duals certified,
the LP at least greedy's total."""

from __future__ import annotations

from benchmarks.outbound import bench_allocation


def test_bench_allocation_reports_a_certified_lp() -> None:
    (row,) = bench_allocation([2_000])["sizes"]
    assert row["customers"] == 2_000 and row["feasible"] is True
    assert abs(row["lp_dual_gap"]) < 1e-9
    assert row["lp_total"] >= row["greedy_total"]
    assert row["lp_total"] <= row["lp_bound"] + 1e-6
