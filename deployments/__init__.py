"""Ray Serve applications built from config: the OpenAI ingress and the vLLM replicas."""
