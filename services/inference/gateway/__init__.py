"""The public API: OpenAI-compatible chat for end users, in front of the engine."""
