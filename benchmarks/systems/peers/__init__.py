"""The peers the course's engine is compared with. Only `benchmarks.compare` imports these."""
