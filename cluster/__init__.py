"""The operator's side: the `llm-cluster` CLI, the composed config, the local Ray lifecycle."""
