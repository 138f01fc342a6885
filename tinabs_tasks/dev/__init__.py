"""Running tinabs' pieces on one machine: the demo and what the benchmarks share."""
