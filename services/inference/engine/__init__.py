"""The policy engine: serves the policy over the TGI protocol and an OpenAI chat route."""
