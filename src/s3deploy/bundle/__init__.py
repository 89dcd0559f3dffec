"""Bundles: archive safety checks, safe unpack, pack."""
