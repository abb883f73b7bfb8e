"""Benchmarks (run as scripts; a package only so bench_pb2 imports as benchmarks.bench_pb2)."""
