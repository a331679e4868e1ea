"""`make demo`: bring the embedded default up, chat with it once through the OpenAI client."""

from __future__ import annotations

import sys

from openai import OpenAI

from cluster.cli import main as cli_main
from cluster.state import load_state
from common.settings import get_settings


def run() -> int:
    state = load_state()
    if state is None:
        code = cli_main(["up", "--config", str(get_settings().config)])
        if code != 0:
            return code
        state = load_state()
    else:
        print(f"llm-cluster is already up (config {state.config}); using it.")
    assert state is not None
    client = OpenAI(base_url=state.api_url, api_key="unused")
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
    print(
        f"                ({reply.usage.completion_tokens} tokens; finish_reason="
        f"{reply.choices[0].finish_reason}; the tiny model has random weights)"
    )
    print(f"OpenAI API:     {state.api_url}")
    print(f"Ray dashboard:  {state.dashboard_url}")
    print("Stop it with:   make down   (or .venv/bin/llm-cluster down)")
    return 0


if __name__ == "__main__":
    sys.exit(run())
