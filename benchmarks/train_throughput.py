"""Tokens per second: the Ray Train job against a plain single-process PyTorch loop.

Same model, same prepared data, same global batch and the same total number of threads
(``workers * threads`` for Ray, all of them in the one plain process), measured in one run
and printed as a ratio (goal: >= 0.9). Ray's figure is wall time between reports on the
workers, so gradient sync and reporting count; the plain loop times its steps after warm-up.

    python benchmarks/train_throughput.py --workers 2 --steps 80
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from training.config import TrainConfig, parse_config  # noqa: E402
from training.corpus import CorpusSpec, generate_corpus  # noqa: E402
from training.data.prepare import prepare_data  # noqa: E402
from training.loop.batches import count_tokens, make_batch  # noqa: E402
from training.loop.model import build_model  # noqa: E402
from training.loop.sampler import batch_indices  # noqa: E402
from training.ray_init import init_ray  # noqa: E402


def _config(args, root: Path) -> TrainConfig:
    return parse_config(
        {
            "kind": "pretrain",
            "run": {"name": f"bench-{int(time.time())}", "storage_path": str(root / "runs")},
            "data": {
                "paths": [str(root / "corpus" / "pretrain.jsonl")],
                "block_size": args.block_size,
            },
            "tokenizer": {"vocab_size": 512},
            "model": {
                "hidden_size": args.hidden,
                "intermediate_size": 4 * args.hidden,
                "num_hidden_layers": args.layers,
                "num_attention_heads": 4,
            },
            "optim": {
                "max_steps": args.steps,
                "micro_batch_size": args.micro_batch,
                "warmup_steps": 5,
            },
            "scaling": {"num_workers": args.workers, "cpus_per_worker": args.threads},
            "checkpoint": {"every_steps": args.steps, "num_to_keep": 1},
            "eval": {
                "every_steps": args.steps,
                "log_every_steps": args.log_every,
                "max_batches": 1,
            },
        }
    )


def plain_loop(config: TrainConfig, prepared, tokenizer, warmup: int) -> float:
    """Single process, all threads, the global batch in one forward pass."""
    torch.set_num_threads(config.scaling.num_workers * config.scaling.cpus_per_worker)
    model = build_model(config, tokenizer, config.run.seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    batch_size = config.optim.micro_batch_size * config.scaling.num_workers
    n, tokens, started = len(prepared.train["input_ids"]), 0, 0.0
    for step in range(config.optim.max_steps):
        if step == warmup:
            started, tokens = time.perf_counter(), 0
        idx = batch_indices(n, 0, step, 0, 0, 1, batch_size, 1)
        batch = make_batch(prepared.train, idx, torch.device("cpu"))
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += count_tokens(batch)
    return tokens / (time.perf_counter() - started)


def ray_train(config: TrainConfig, prepared, tokenizer) -> float:
    """Median of the per-window throughputs the workers report, first window excluded."""
    from training.loop.trainer import build_trainer, progress_file

    build_trainer(config, prepared, tokenizer).fit()
    with open(progress_file(config)) as f:
        windows = [json.loads(line)["tokens_per_s"] for line in f if line.strip()]
    return statistics.median(windows[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="Threads per Ray worker.")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--micro-batch", type=int, default=16, help="Blocks per worker per step.")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_corpus(root / "corpus", CorpusSpec())
        config = _config(args, root)
        init_ray(None, num_cpus=args.workers * args.threads + 1)
        try:
            prepared = prepare_data(config)
            tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
            before = plain_loop(config, prepared, tokenizer, warmup=args.log_every)
            ray_tps = ray_train(config, prepared, tokenizer)
            after = plain_loop(config, prepared, tokenizer, warmup=args.log_every)
            plain = (before + after) / 2  # bracketing Ray's run evens out drifting load
        finally:
            import ray

            ray.shutdown()
    print(
        json.dumps(
            {
                "plain_tokens_per_s_before_after": [round(before), round(after)],
                "ray_train_tokens_per_s": round(ray_tps),
                "ratio": round(ray_tps / plain, 3),
                "workers": args.workers,
                "threads_per_worker": args.threads,
            }
        )
    )
    print(f"ratio (Ray Train / plain PyTorch): {ray_tps / plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
