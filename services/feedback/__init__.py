"""The feedback service: every served answer, every thumb, ranking and vote on it, kept safe."""
