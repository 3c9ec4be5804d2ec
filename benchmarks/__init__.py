"""Benchmarks of fetch against a bare aiohttp loop; see benchmarks/README.md."""
