"""The benchmark suite: `python -m bench` (`make bench`).

Every figure is measured in the same run as the baseline it is compared with (single-row and
batched commit rates into the same schema, a no-op gRPC call, an idle replica's memory) and is
reported both absolute and as a ratio to that baseline. See docs/bench.md.
"""
