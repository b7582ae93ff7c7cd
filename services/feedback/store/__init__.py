"""The feedback service's SQL store: schema, migrations and the operations on it.

Only this service touches these tables; other services use its gRPC and HTTP APIs.
"""
