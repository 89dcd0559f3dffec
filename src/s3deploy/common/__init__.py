"""Small mechanisms every stage uses, each written once: backoff, atomic writes, terminal-safe text."""
