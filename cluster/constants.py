"""Cluster constants; each can be overridden by an ``LLM_CLUSTER_*`` environment variable."""

import os
from pathlib import Path

# Where `up` records what it started, so `status` and `down` find it.
HOME = Path(os.environ.get("LLM_CLUSTER_HOME", Path.home() / ".llm-cluster"))
# How long `up` waits for every model to serve before giving up and cleaning up.
UP_TIMEOUT_S = float(os.environ.get("LLM_CLUSTER_UP_TIMEOUT_S", "900"))
# How long `up` waits for a fresh Ray head to accept connections.
HEAD_TIMEOUT_S = float(os.environ.get("LLM_CLUSTER_HEAD_TIMEOUT_S", "90"))
# Grace period between SIGTERM and SIGKILL when `down` stops the head's processes.
STOP_GRACE_S = float(os.environ.get("LLM_CLUSTER_STOP_GRACE_S", "10"))
# The default config `up` and `make demo` use.
DEFAULT_CONFIG = Path(os.environ.get("LLM_CLUSTER_CONFIG", "deployments/local.yaml"))
