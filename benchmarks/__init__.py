"""Speed and memory benchmarks (not tests): each script prints a table and writes JSON; see BENCHMARKS.md."""
