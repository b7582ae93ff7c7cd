"""Simulated labelers: personas that chat through the public API and give feedback, as the
paper's labelers did, with hidden preferences made of checkable answer properties."""
