"""Ed25519 signatures for release manifests (``cryptography``), so a bundle is anchored to a key, not only to itself.

``SHA256SUMS`` and ``manifest.json`` prove a bundle is internally consistent; anyone who swaps a model can recompute
both. The signature over ``manifest.json``'s exact bytes (which lists every file's sha256) ties the whole bundle to
the release key: ``edgepipe verify --pubkey KEY.pub`` then proves the bundle was released by the holder of that key.
Ed25519 signatures are deterministic, so a signed bundle stays reproducible byte for byte.

Keys: ``--key FILE`` or ``EDGEPIPE_SIGNING_KEY``, else ``~/.config/edgepipe/release-ed25519.key`` (written with
mode 0600 on first use, next to its ``.pub``). The private key never enters a bundle; the public key does, so a
receiver can see who signed even without having pinned a key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from targets.errors import ConfigError

SIGNATURE = "manifest.sig.json"
ALGORITHM = "ed25519"


def default_key_path() -> Path:
    env = os.environ.get("EDGEPIPE_SIGNING_KEY")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
    return base / "edgepipe" / "release-ed25519.key"


def key_id(public_raw: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(public_raw).digest()).decode().rstrip("=")


def generate_key(path: Path) -> Path:
    """Write a new private key (PEM, 0600) and its public key (``.pub``, OpenSSH format); return the .pub path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        raise ConfigError(f"{path}: a key already exists; refusing to overwrite it", hint="choose another --out")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = Path(str(path) + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b" edgepipe-release\n")
    return pub


def warn_loose_permissions(path: Path) -> bool:
    """One warning line on stderr when the private key is readable or writable by group or others (anyone who can
    read it can sign releases as you); True when it warned. The key is still used: refusing would break CI
    secrets mounted 0644 by a runner, a warning makes the exposure visible."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return False
    if not mode & 0o077:
        return False
    print(f"edgepipe: warning: signing key {path} is accessible by group or others (mode {mode:04o}); anyone who "
          f"can read it can sign releases: chmod 600 {path}", file=sys.stderr)
    return True


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable unencrypted PEM private key ({str(exc)[:120]})",
                          hint="create one with `edgepipe keygen --out FILE`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: the release key must be Ed25519, got {type(key).__name__}",
                          hint="create one with `edgepipe keygen --out FILE`")
    return key


def load_public_key(path: Path) -> bytes:
    """Raw 32-byte Ed25519 public key from an OpenSSH ``.pub`` line or a PEM public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = path.read_bytes()
        key = (serialization.load_ssh_public_key(data.strip().split(b" edgepipe")[0]) if data.startswith(b"ssh-")
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable Ed25519 public key ({str(exc)[:120]})",
                          hint="give the .pub file written next to the release key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_manifest(manifest_bytes: bytes, key_path: Path | None) -> tuple[dict[str, Any], Path]:
    """The signature record for the bundle and the key file used (created on first use at the default path)."""
    from cryptography.hazmat.primitives import serialization

    path = key_path or default_key_path()
    if not path.exists():
        if key_path is not None:
            raise ConfigError(f"{path}: no such signing key", hint="create one with `edgepipe keygen --out FILE`")
        if os.environ.get("EDGEPIPE_SIGNING_KEY"):   # a named key that is not there is a typo, not a new identity
            raise ConfigError(f"EDGEPIPE_SIGNING_KEY={os.environ['EDGEPIPE_SIGNING_KEY']}: no such signing key",
                              hint="fix the path, or create the key with `edgepipe keygen --out FILE`")
        pub = generate_key(path)
        # not silently: this key becomes the identity receivers pin, so say where it is and how to bring one's own
        print(f"edgepipe: created a release signing key {path} (public key {pub}); to sign with your own, pass "
              "--key FILE or set EDGEPIPE_SIGNING_KEY (`edgepipe keygen --out FILE` makes one)", file=sys.stderr)
    warn_loose_permissions(path)
    key = load_private_key(path)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = {"algorithm": ALGORITHM, "signed": "manifest.json", "key_id": key_id(public),
              "public_key": base64.b64encode(public).decode(),
              "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}
    return record, path


def check_signature(manifest_bytes: bytes, record: Any, trusted: list[bytes] | None) -> list[str]:
    """Problems with a bundle's signature record (empty: valid, and by a trusted key when any are given)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM:
        return [f"{SIGNATURE}: not an {ALGORITHM} signature record"]
    try:
        public = base64.b64decode(str(record["public_key"]), validate=True)
        signature = base64.b64decode(str(record["signature"]), validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(signature, manifest_bytes)
    except (KeyError, ValueError, InvalidSignature):
        return [f"{SIGNATURE}: the signature does not match manifest.json (the manifest was changed after signing)"]
    if trusted is not None and public not in trusted:
        return [f"{SIGNATURE}: signed by key {key_id(public)}, which is not the trusted key given"]
    return []
