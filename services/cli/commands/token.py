"""``spx token USER``: mint a signed gateway token for a user's coach and account channels."""

from __future__ import annotations

import time

from services.cli.common import configs, fail, gateway_url
from services.gateway import auth
from services.gateway.config import GatewayConfig
from spx_common.config import ConfigError, load


def register(sub) -> None:
    p = sub.add_parser("token", help="mint a gateway token for USER (coach, positions, orders, fills channels)",
                       description="Prints an HMAC-signed token with an expiry. Give it at websocket connect "
                       "(ws://host:port/ws?token=...) or open the dashboard with ?token=... The secret is "
                       "[gateway] token_secret, else <run_dir>/keys/gateway_token.key (shared with the gateway).")
    p.add_argument("user", help="user name: letters, digits, '_' or '-' (at most 64)")
    p.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default [gateway] token_ttl_s)")
    p.add_argument("--url", action="store_true", help="print the dashboard URL with the token instead")
    p.set_defaults(func=cmd_token)


def cmd_token(args) -> int:
    try:
        cfg = load(GatewayConfig)
    except ConfigError as exc:
        return fail(str(exc), 2)
    if not auth.USER_RE.match(args.user):
        return fail(f"bad user name {args.user!r}: use letters, digits, '_' or '-' (at most 64)", 2)
    ttl = cfg.token_ttl_s if args.ttl is None else args.ttl
    if ttl <= 0:
        return fail("--ttl must be positive", 2)
    runtime, _ = configs()
    secret = auth.load_secret(cfg.token_secret, cfg.secret_path(runtime))
    token = auth.mint(args.user, secret, int(time.time()) + ttl)
    print(f"{gateway_url()}?token={token}" if args.url else token)
    return 0
