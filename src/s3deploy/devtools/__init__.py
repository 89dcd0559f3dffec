"""Local tooling kept out of the runtime: a SeaweedFS server on free ports, and the demo."""
