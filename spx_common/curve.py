"""ZeroMQ CURVE encryption and authentication for tcp deployments across hosts.

Layout of the key directory (``[bus] curve_dir``, default ``<run_dir>/keys``), made by
``spx keys generate NAME``::

    keys/private/<name>.key_secret   this host's keypair: copy only to the host that runs <name>
    keys/public/<name>.key           every peer's public key: copy the whole folder to every host

A process named ``<name>`` (its service name, or ``[bus] curve_identity``) binds as a CURVE
server with its own secret key and accepts only clients whose public key is in
``keys/public`` (a ZAP handler); it connects to peers as a CURVE client, trusting the peer's
public key ``keys/public/<peer>.key``.  A peer without an authorized key never completes
the handshake: its frames are never delivered and its requests are never answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from spx_common.errors import Fatal


class CurveError(Fatal, RuntimeError):
    pass


def generate(keys_dir: Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Create a keypair for ``name``; returns (public, secret) paths."""
    public_dir, private_dir = keys_dir / "public", keys_dir / "private"
    public_dir.mkdir(parents=True, exist_ok=True)
    private_dir.mkdir(parents=True, exist_ok=True)
    private_dir.chmod(0o700)
    pub, sec = public_dir / f"{name}.key", private_dir / f"{name}.key_secret"
    if (pub.exists() or sec.exists()) and not overwrite:
        raise CurveError(f"keys for {name!r} already exist in {keys_dir} (use --force to replace)")
    tmp_pub, tmp_sec = zmq.auth.create_certificates(str(private_dir), name)
    Path(tmp_pub).replace(pub)
    Path(tmp_sec).chmod(0o600)
    return pub, Path(tmp_sec)


@dataclass
class CurveKeys:
    """This process's keypair plus the public keys of every authorized peer."""

    identity: str
    public: bytes
    secret: bytes
    peers: dict[str, bytes] = field(default_factory=dict)
    public_dir: Path | None = None

    @classmethod
    def load(cls, keys_dir: Path, identity: str) -> CurveKeys:
        sec_path = keys_dir / "private" / f"{identity}.key_secret"
        if not sec_path.is_file():
            raise CurveError(f"no secret key {sec_path}; run 'spx keys generate {identity}' on this host")
        public, secret = zmq.auth.load_certificate(str(sec_path))
        if secret is None:
            raise CurveError(f"{sec_path} holds no secret key")
        peers = {}
        public_dir = keys_dir / "public"
        for path in sorted(public_dir.glob("*.key")):
            peers[path.stem] = zmq.auth.load_certificate(str(path))[0]
        return cls(identity, public, secret, peers, public_dir)

    def server_key(self, peer: str) -> bytes:
        base = peer.split("-", 1)[0]
        key = self.peers.get(peer) or self.peers.get(base)
        if key is None:
            raise CurveError(f"no public key for peer {peer!r} in {self.public_dir}")
        return key

    def make_server(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def make_client(self, sock: zmq.Socket[Any], peer: str) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_key(peer)

    def start_authenticator(self, ctx: zmq.Context[Any]) -> ThreadAuthenticator:
        """Start the ZAP handler that admits only clients with a key in ``keys/public``."""
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.public_dir))
        return auth
