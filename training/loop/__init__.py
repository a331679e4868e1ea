"""Ray Train loops: model building, deterministic batching, checkpoints, the worker loop."""
