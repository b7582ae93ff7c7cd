"""Inference: the policy engine (TGI protocol) and the public OpenAI-compatible gateway."""
