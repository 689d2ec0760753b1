"""pvxen benchmarks: ``python -m bench NAME``, one module per benchmark.

Each benchmark runs the project and its yardstick side by side in one
process tree, prints a table and, as its last line, one JSON object of
ratios (see :mod:`bench.common` for the rules they follow).
"""
