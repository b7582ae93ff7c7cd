"""The reward service: scores answers with the current reward model over gRPC."""
