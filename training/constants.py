"""Names the training run and the CLI agree on (operator settings are in common.settings)."""

PROGRESS_MARKER = "[llm-cluster:progress]"
"""Prefix of the JSON progress lines a run prints; ``train status`` parses them from logs."""

RESULT_MARKER = "[llm-cluster:result]"
"""Prefix of the JSON line a finished run prints with its export path and accuracy."""

CONFIG_ENV_VAR = "LLM_CLUSTER_TRAIN_CONFIG_JSON"
"""Env var that carries a resolved config into a submitted job (paths already absolute)."""
