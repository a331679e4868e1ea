"""``llm-cluster keys ...`` and ``llm-cluster tenants ...``: API keys, their tenants and
limits, and usage, in the durable store of the running cluster (or of ``--config``).

A key's secret is printed once, by ``create`` and ``rotate``; the store keeps only its hash.
Every entry point sees a change within ``gateway.keys_refresh_s``.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common.config_file import ConfigError

LIMIT_OPTIONS = (
    ("rpm", "requests per minute"),
    ("tpm", "tokens (prompt + completion) per minute"),
    ("max_concurrent", "requests in flight"),
    ("daily_tokens", "tokens per UTC day"),
)
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def when(text: str, future: bool) -> datetime:
    """A time from '2027-01-31', '2027-01-31T12:00', an ISO time with zone, or a duration
    ('30d', '12h') from now (``future``) or back from now."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        delta = timedelta(**{_UNITS[relative[2]]: int(relative[1])})
        return datetime.now(UTC) + (delta if future else -delta)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"cannot read the time {text!r}: use a date (2027-01-31), an ISO time or a "
            "duration such as 30d or 12h"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def store_for(args: argparse.Namespace) -> Any:
    """The store of ``--config``, else of the running cluster's config, else of the default."""
    from cluster.config import load_config
    from cluster.state import load_state
    from common.settings import get_settings
    from deployments.store import Store

    path = args.config
    if path is None:
        state = load_state()
        path = state.config if state is not None else get_settings().config
    # A --config that is not there is an error: never a silent switch to the default store.
    config = load_config(Path(path)) if args.config or Path(path).is_file() else None
    url = config.gateway.store.url if config is not None else None
    return Store(url)


def _limits(args: argparse.Namespace) -> Any:
    from deployments.store import Limits

    return Limits(**{name: getattr(args, name) for name, _ in LIMIT_OPTIONS})


def limits_view(limits: Any) -> dict[str, int | None]:
    """A key's or tenant's limits by name (None: unlimited)."""
    return {name: getattr(limits, name) for name, _ in LIMIT_OPTIONS}


def key_view(key: Any) -> dict[str, Any]:
    """A key as shown (here and on the dashboard): never its secret or hash."""
    limits = limits_view(key.limits)
    state = "revoked" if key.revoked_at else ("active" if key.usable() else "expired")
    return {
        "id": key.id, "name": key.name, "tenant": key.tenant, "prefix": key.prefix,
        "models": key.models or ["*"], "limits": limits, "state": state,
        "created_at": _iso(key.created_at), "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
    }  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _limits_text(limits: dict[str, int | None]) -> str:
    parts = [f"{name} {value}" for name, value in limits.items() if value is not None]
    return ", ".join(parts) or "no limits"


def cmd_create(args: argparse.Namespace) -> int:
    models = [m for m in (args.models or "").split(",") if m.strip()]
    expires = when(args.expires, future=True) if args.expires else None
    if expires is not None and expires <= datetime.now(UTC):
        raise ConfigError(f"--expires {args.expires!r} is in the past ({_iso(expires)})")
    key, secret = store_for(args).create_key(
        args.name, tenant=args.tenant, models=[m.strip() for m in models],
        limits=_limits(args), expires_at=expires,
    )  # fmt: skip
    if args.json:
        print(json.dumps({**key_view(key), "key": secret}, indent=2))
        return 0
    print(f"Created API key {key.id} ({key.name}, tenant {key.tenant}).")
    print(f"  {secret}")
    print("Shown once: store it now (only its hash is kept).")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    views = [key_view(k) for k in store_for(args).list_keys()]
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    print(f"{'ID':<18}{'NAME':<20}{'TENANT':<14}{'STATE':<9}{'PREFIX':<11}{'MODELS':<16}LIMITS")
    for v in views:
        print(f"{v['id']:<18}{v['name']:<20}{v['tenant']:<14}{v['state']:<9}{v['prefix']:<11}"
              f"{','.join(v['models']):<16}{_limits_text(v['limits'])}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(key_view(store_for(args).get_key(args.key)), indent=2))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    key = store_for(args).revoke_key(args.key)
    print(f"Revoked API key {key.id} ({key.name}); refused everywhere within a second.")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    key, secret = store_for(args).rotate_key(args.key)
    if args.json:
        print(json.dumps({**key_view(key), "key": secret}, indent=2))
        return 0
    print(f"New secret of API key {key.id} ({key.name}); the old one no longer works:")
    print(f"  {secret}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    since = when(args.since, future=False)
    rows = store_for(args).usage(since=since, key=args.key, tenant=args.tenant)
    fields = ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "rate_limited",
              "errors")  # fmt: skip
    views = [{"key_id": r.key_id, "tenant": r.tenant, "model": r.model,
              **{f: getattr(r, f) for f in fields}} for r in rows]  # fmt: skip
    if args.json:
        print(json.dumps({"since": _iso(since), "usage": views}, indent=2))
        return 0
    print(f"Usage since {_iso(since)}:")
    print(f"{'KEY':<18}{'TENANT':<14}{'MODEL':<14}{'REQUESTS':>9}{'PROMPT':>10}{'COMPL.':>10}"
          f"{'CACHED':>8}{'429s':>7}{'ERRORS':>8}")  # fmt: skip
    for v in views:
        print(f"{v['key_id']:<18}{v['tenant']:<14}{v['model']:<14}{v['requests']:>9}"
              f"{v['prompt_tokens']:>10}{v['completion_tokens']:>10}{v['cache_hits']:>8}"
              f"{v['rate_limited']:>7}{v['errors']:>8}")  # fmt: skip
    return 0


def cmd_tenant_set(args: argparse.Namespace) -> int:
    tenant = store_for(args).set_tenant(args.name, _limits(args))
    limits = limits_view(tenant.limits)
    print(f"Tenant {tenant.name}: {_limits_text(limits)}.")
    return 0


def cmd_tenant_list(args: argparse.Namespace) -> int:
    tenants = store_for(args).list_tenants()
    views = [{"name": t.name, "limits": limits_view(t.limits)} for t in tenants]
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    for v in views:
        print(f"{v['name']:<20}{_limits_text(v['limits'])}")
    return 0


def _common(parser: argparse.ArgumentParser, json_option: bool = True) -> None:
    parser.add_argument("--config", help="whose store (default: the running cluster's config)")
    if json_option:
        parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def _limit_options(parser: argparse.ArgumentParser) -> None:
    for name, what in LIMIT_OPTIONS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=_non_negative, metavar="N", help=what)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value


def add_keys_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list, revoke and rotate API keys; usage")
    ks = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = ks.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="a unique name for the key")
    create.add_argument("--tenant", default="default", help="its tenant (created if new)")
    create.add_argument("--models", help="comma-separated models it may use (default: all)")
    create.add_argument("--expires", help="a date, ISO time or duration (30d) it expires at")
    _limit_options(create)
    _common(create)
    create.set_defaults(func=cmd_create)
    listing = ks.add_parser("list", help="every key (never their secrets)")
    _common(listing)
    listing.set_defaults(func=cmd_list)
    for name, func, what in (("show", cmd_show, "one key"), ("revoke", cmd_revoke, "revoke a key"),
                             ("rotate", cmd_rotate, "a new secret for a key")):  # fmt: skip
        command = ks.add_parser(name, help=what)
        command.add_argument("key", help="the key's id or name")
        _common(command, json_option=name == "rotate")
        command.set_defaults(func=func)
    usage = ks.add_parser("usage", help="requests and tokens per key and model")
    usage.add_argument("key", nargs="?", help="only this key (id or name)")
    usage.add_argument("--tenant", help="only this tenant's keys")
    usage.add_argument("--since", default="24h", help="a date, ISO time or duration (24h)")
    _common(usage)
    usage.set_defaults(func=cmd_usage)

    tenants = sub.add_parser("tenants", help="tenants and their shared limits")
    ts = tenants.add_subparsers(dest="tenants_command", required=True, metavar="COMMAND")
    set_ = ts.add_parser("set", help="create a tenant or replace its limits")
    set_.add_argument("name")
    _limit_options(set_)
    _common(set_, json_option=False)
    set_.set_defaults(func=cmd_tenant_set)
    tlist = ts.add_parser("list", help="every tenant and its limits")
    _common(tlist)
    tlist.set_defaults(func=cmd_tenant_list)
