"""Benchmarks behind `fasthpt bench`; figures and the machine go to bench/RESULTS.md."""
