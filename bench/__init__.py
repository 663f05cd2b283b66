"""Benchmarks that print figures and their baselines side by side (not tests: nothing asserts)."""
