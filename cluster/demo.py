"""`make demo`: bring the embedded default up, chat with it once through the OpenAI client."""

from __future__ import annotations

import sys
import time

from openai import OpenAI

from cluster.cli import main as cli_main
from cluster.cli import route_library_logs
from cluster.config import load_config
from cluster.state import ClusterState, load_state
from common.settings import get_settings

DEMO_KEY = "demo"  # the key the demo makes (and revokes, rotates or reuses on the next run)


def run() -> int:
    route_library_logs()  # the OpenAI client's request lines and Ray's notes: not for here
    state = load_state()
    if state is None:
        code = cli_main(["up", "--config", str(get_settings().config)])
        if code != 0:
            return code
        state = load_state()
    else:
        print(f"llm-cluster is already up (config {state.config}); using it.")
    assert state is not None
    client = OpenAI(base_url=state.api_url, api_key=_api_key(state))
    model = client.models.list().data[0].id
    question = "Say hello to the cluster."
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=24,
        # Greedy decoding of random weights tends to repeat one (often special) token;
        # seeded sampling shows varied text and is still repeatable.
        temperature=0.8,
        seed=0,
    )
    print()
    print(f"Model:          {model}")
    print(f"Question:       {question}")
    print(f"Answer:         {reply.choices[0].message.content!r}")
    tokens = reply.usage.completion_tokens if reply.usage is not None else "?"
    print(
        f"                ({tokens} tokens; finish_reason="
        f"{reply.choices[0].finish_reason}; the tiny model has random weights)"
    )
    print(f"OpenAI API:     {state.api_url}")
    print(f"Ray dashboard:  {state.dashboard_url}")
    print("Stop it with:   make down   (or .venv/bin/llm-cluster down)")
    return 0


def _api_key(state: ClusterState) -> str:
    """A fresh secret for the demo's own key (made on the first run, rotated after: a secret
    is only ever shown once); any string when the cluster needs no key."""
    from deployments.store import Limits, Store

    config = load_config(state.config)
    if not config.gateway.auth:
        return "unused"
    store = Store(config.gateway.store.url)
    existing = next((k for k in store.list_keys() if k.name == DEMO_KEY), None)
    if existing is not None and existing.usable():
        key, secret = store.rotate_key(DEMO_KEY)
        action = "rotated"
    else:  # none yet, or revoked: a new one
        name = DEMO_KEY if existing is None else f"{DEMO_KEY}-{int(time.time())}"
        key, secret = store.create_key(name, tenant="demo", limits=Limits(rpm=600))
        action = "created"
    print(f"API key:        {key.id} ({action}; `llm-cluster keys list` shows it)")
    return secret


if __name__ == "__main__":
    sys.exit(run())
