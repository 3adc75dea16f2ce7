"""Benchmarks: micro-benchmarks of the hot path (test_bench_*.py, compare.py) and end-to-end runs."""
