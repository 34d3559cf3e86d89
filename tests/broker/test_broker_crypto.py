"""Credentials at rest: sealing, tamper detection, context binding, key rotation, no plaintext in reprs."""

import os

import pytest

from spx_common.crypto import CryptoError, KeyRing, Secret, generate_key


def test_seal_open_round_trip_and_context_binding():
    ring = KeyRing.parse(generate_key("k1"))
    sealed = ring.seal("tok-123", "alice:access_token")
    assert "tok-123" not in sealed and sealed.startswith("v1.k1.")
    assert ring.open(sealed, "alice:access_token").reveal() == "tok-123"
    with pytest.raises(CryptoError, match="failed authentication"):
        ring.open(sealed, "bob:access_token")
    tampered = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    with pytest.raises(CryptoError):
        ring.open(tampered, "alice:access_token")
    with pytest.raises(CryptoError, match="not in the key ring"):
        KeyRing.parse(generate_key("k2")).open(sealed, "alice:access_token")
    with pytest.raises(CryptoError):
        ring.open("garbage", "x")


def test_secret_never_prints():
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2" and s == Secret("hunter2")


def test_bad_rings():
    with pytest.raises(CryptoError):
        KeyRing.parse("")
    with pytest.raises(CryptoError, match="32"):
        KeyRing.parse("k1:" + "QUJD")
    with pytest.raises(CryptoError, match="twice"):
        k = generate_key("k1")
        KeyRing.parse(f"{k},{k}")
    with pytest.raises(CryptoError):
        KeyRing.parse("no-colon")
    with pytest.raises(CryptoError, match="no credentials key"):
        KeyRing.from_env({})


def test_key_file_and_env(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# primary first\n" + generate_key("k1") + "\n")
    os.chmod(f, 0o644)
    with pytest.raises(CryptoError, match="chmod 600"):
        KeyRing.from_env({"SPX_CREDENTIALS_KEY_FILE": str(f)})
    os.chmod(f, 0o600)
    assert KeyRing.from_env({"SPX_CREDENTIALS_KEY_FILE": str(f)}).primary == "k1"
    assert KeyRing.from_env({"SPX_CREDENTIALS_KEYS": generate_key("e1")}).primary == "e1"


def test_sealed_in_the_store_with_rotation(tmp_path):
    from services.broker import credentials
    from spx_common.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        old = generate_key("old")
        credentials.save(store, KeyRing.parse(old), "alice", "tok-a", "VA1")
        row = store.credentials("alice", "tradier")
        assert b"tok-a" not in bytes(row["ciphertext"]) and row["key_id"] == "old" and row["account_id"] == "VA1"
        token, account = credentials.read(store, KeyRing.parse(old), "alice")
        assert token.reveal() == "tok-a" and account == "VA1"
        assert credentials.read(store, KeyRing.parse(old), "bob") is None
        # rotate: new key first, old still readable, re-seal, then drop the old key
        new = generate_key("new")
        both = KeyRing.parse(new + "," + old)
        assert credentials.rotate(store, both, "alice") and not credentials.rotate(store, both, "alice")
        assert store.credentials("alice", "tradier")["key_id"] == "new"
        assert credentials.read(store, KeyRing.parse(new), "alice")[0].reveal() == "tok-a"
        with pytest.raises(CryptoError, match="not in the key ring"):
            credentials.read(store, KeyRing.parse(old), "alice")
    finally:
        store.close()
