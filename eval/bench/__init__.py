"""Benchmarks: engine, TTFT per mode, peer MoA, the agent workloads, layouts and load (`moa-stream bench ...`)."""
