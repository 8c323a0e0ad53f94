"""Whole runs over data sets and folders: test, batch detection, benchmark, ablation."""
