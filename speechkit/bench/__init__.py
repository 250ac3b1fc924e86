"""Benchmarks of the shipped runtimes: speed, latency and memory on this machine."""
