"""``spx token USER``: mints a token the gateway accepts (shared secret file), refuses bad input."""

import os
import subprocess
import sys
import time

from services.gateway import auth
from services.gateway.config import GatewayConfig
from spx_common.config import RuntimeConfig


def _spx(run_dir, *args, env_extra=None):
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), **(env_extra or {})}
    env.pop("SPX_GATEWAY_TOKEN_SECRET", None)
    env.pop("SPX_TOKEN_SECRET", None)
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=30)


def test_spx_token_mints_a_token_for_the_gateway_secret(run_dir):
    res = _spx(run_dir, "token", "alice", "--ttl", "120")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    secret = auth.load_secret("", GatewayConfig().secret_path(RuntimeConfig(run_dir=run_dir)))
    user, expires = auth.verify(token, secret, time.time())
    assert user == "alice" and 100 < expires - time.time() <= 120
    url = _spx(run_dir, "token", "bob", "--url").stdout.strip()
    assert url.startswith("http://127.0.0.1:8765/?token=v1.bob.")
    bad = _spx(run_dir, "token", "not a user")
    assert bad.returncode == 2 and "bad user name" in bad.stderr
    assert _spx(run_dir, "token", "alice", "--ttl", "0").returncode == 2
