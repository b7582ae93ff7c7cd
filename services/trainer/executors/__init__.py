"""Where a heavy stage runs: a subprocess of the worker (local) or a Kubernetes Job."""
