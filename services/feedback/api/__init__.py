"""The feedback service's HTTP API for clients (FastAPI)."""
