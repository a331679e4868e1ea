"""What every layer needs: typed settings, the YAML config loader and its error, and the one
adapter to Ray's and vLLM's private internals. Imports nothing from the project."""
