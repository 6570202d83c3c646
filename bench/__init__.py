"""Benchmarks for subtitle-tasks (not part of the installed package).

``python -m bench.scale`` measures what waiting requests cost; see bench/README.md.
"""
