"""Scaling policies (pure: metrics in, a replica count out), their mapping onto Ray Serve's
custom autoscaling policy API, live bounds for manual control, and a simulator."""
