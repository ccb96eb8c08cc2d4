"""The side-by-side benchmark (`python -m bench`, `make bench`): see docs/performance.md."""
