"""Benchmarks: `python -m bench [orchestrator engine trainer hotswap gpu]` prints one ratio table.

Not tests: each benchmark measures its numbers side by side in one run and reports them against a
target; nothing here passes or fails a build.
"""
