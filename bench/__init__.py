"""Benchmarks for subtitle-tasks (not part of the installed package).

``python -m bench`` runs them all and prints one table of the headline figures
(``--full`` for each benchmark's own defaults); ``python -m bench.<name>`` runs one,
e.g. ``python -m bench.scale``, what waiting requests cost. See bench/README.md.
"""
