"""s3deploy's benchmark suite: ``python -m benchmarks`` (``make bench``). See docs/benchmarks.md."""
