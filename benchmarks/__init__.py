"""asv benchmarks of ldbench; see suite_cases.py."""
