"""``python -m training CONFIG``: runs a training config directly (also a Ray job's entry).

Inside a Ray job (``RAY_ADDRESS`` set) it joins that cluster; otherwise it starts a private
local Ray. ``--config-env VAR`` reads the config as JSON from an env var: that is how
``llm-cluster train submit`` ships a config whose paths it has already made absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from training import constants
from training.config import (
    ConfigError,
    TrainConfig,
    check_runnable,
    load_config,
    parse_config,
    resolve_paths,
)
from training.data.errors import DataError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    p.add_argument("config", nargs="?", help="Training config YAML.")
    p.add_argument("--config-env", help="Read the config as JSON from this env var instead.")
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: RAY_ADDRESS, else a private local Ray).",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a private local Ray.")
    return p


def read_config(args: argparse.Namespace) -> TrainConfig:
    """The config from a file (paths made absolute against cwd) or from an env var."""
    if args.config_env:
        raw = os.environ.get(args.config_env)
        if raw is None:
            raise ConfigError(f"env var {args.config_env} is not set")
        return parse_config(json.loads(raw), f"${args.config_env}")
    if not args.config:
        raise ConfigError("give a config file (or --config-env)")
    return resolve_paths(load_config(args.config))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = read_config(args)
        check_runnable(config)  # before Ray starts: a typo costs no cluster start-up
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from training.ray_init import init_ray
    from training.run import run_training

    init_ray(args.address, args.num_cpus)
    try:
        run_training(config)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    _ = constants
    sys.exit(main())
