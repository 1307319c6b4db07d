"""Underpaint benchmarks (GitHub issue #5): prove the daemon costs nothing between brush and result.

`python -m bench --help` explains the options. Every comparison is measured side by side in one run
(interleaved, same thread count) and reported as a ratio, because the machines are shared and noisy.
"""
