"""A process wired once: state, locks, S3 pool, recovery; the daemon's signals, TaskGroup and reload."""
