"""Benchmarks: figures printed for a machine, never asserted in tests."""
