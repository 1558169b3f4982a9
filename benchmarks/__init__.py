"""Speed and memory benchmarks (not tests): each script prints a table and writes JSON; see BENCHMARKS.md."""

# Stand-ins for the data-loading packages where they are absent (the GPU image): see benchmarks/offline.py.
from benchmarks import offline as _offline  # noqa: F401
