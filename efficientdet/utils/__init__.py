"""Helpers every layer may use: atomic file writes, option checks, progress bars, process groups."""
