"""Training: Ray Data pipelines, Ray Train loops, evaluation and export to servable models."""
