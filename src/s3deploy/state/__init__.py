"""The state directory: the SQLite store, its layout on disk, and the locks in it."""
