"""S3: the client pool, error translation, the per-bucket poller, pinned transfers and checksums."""
