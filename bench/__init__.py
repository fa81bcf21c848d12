"""Throughput benchmarks: our paths and their baselines side by side, in one run, on one machine."""
