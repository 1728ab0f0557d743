"""Side-by-side benchmarks: this library's API against raw clients and peers."""
