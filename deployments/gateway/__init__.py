"""The gateway at the entry point: API keys, limits that hold across replicas (Redis), the
response cache, usage in the durable store."""
