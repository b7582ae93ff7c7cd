"""The paper's algorithms as a library: pure torch + transformers.

Nothing here imports web, queue or RPC code; the trainer, the reward service,
the simulator and the benchmarks all call into it.
"""
