"""Benchmark sweeps: methods x tasks x seeds, cached by content hash, resumable, local or Ray backend."""
