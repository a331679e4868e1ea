"""``python -m training.corpus --out DIR``: writes the synthetic addition corpus."""

from __future__ import annotations

import argparse
import json
import sys

from training.corpus.generate import CorpusSpec, generate_corpus


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the generator's options; ``llm-cluster train corpus`` reuses them."""
    defaults = CorpusSpec()
    parser.add_argument("--out", required=True, help="Folder to write the corpus into.")
    parser.add_argument("--min-operand", type=int, default=defaults.min_operand)
    parser.add_argument("--max-operand", type=int, default=defaults.max_operand)
    parser.add_argument("--heldout-fraction", type=float, default=defaults.heldout_fraction)
    parser.add_argument("--seed", type=int, default=defaults.seed)


def run_corpus(args: argparse.Namespace) -> int:
    """Generates the corpus from parsed arguments; returns an exit code."""
    try:
        spec = CorpusSpec(
            min_operand=args.min_operand,
            max_operand=args.max_operand,
            heldout_fraction=args.heldout_fraction,
            seed=args.seed,
        )
        summary = generate_corpus(args.out, spec)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.corpus", description=__doc__)
    add_corpus_arguments(parser)
    return run_corpus(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
