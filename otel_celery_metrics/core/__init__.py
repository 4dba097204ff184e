"""What the in-process instrumentor and the standalone exporter share (imports nothing
of either)."""
