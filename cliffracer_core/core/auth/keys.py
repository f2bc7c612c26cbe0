"""The key pair that signs and verifies access tokens (RS256).

Asymmetric signing lets a service verify tokens with the public key alone: only the process
that issues tokens (the web process) needs the private key. Deployments pass the keys in the
environment (``JWT_PRIVATE_KEY``/``JWT_PUBLIC_KEY`` as PEM text, or ``…_FILE`` as paths); a
development checkout generates a pair once under ``var/`` (never in the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cliffracer_core.core.files import write_once


def _from_environment(name: str) -> str | None:
    if value := os.environ.get(name):
        return value.replace("\\n", "\n")
    if path := os.environ.get(f"{name}_FILE"):
        return Path(path).read_text()
    return None


def generate_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def load_keys(var_dir: Path) -> tuple[str, str]:
    """Return (private PEM, public PEM); the private one is "" where only verifying is possible."""
    private = _from_environment("JWT_PRIVATE_KEY")
    public = _from_environment("JWT_PUBLIC_KEY")
    if public:
        return private or "", public
    if private:
        key = serialization.load_pem_private_key(private.encode(), password=None)
        public = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        return private, public
    private_path = var_dir / "jwt-private.pem"
    public_path = var_dir / "jwt-public.pem"
    if not private_path.exists():
        # Both halves live in one file first, so a race cannot pair two different keys.
        private, public = generate_pair()
        write_once(private_path, private + public)
    combined = private_path.read_text()
    marker = "-----BEGIN PUBLIC KEY-----"
    private, public = combined.split(marker)[0], marker + combined.split(marker)[1]
    if not public_path.exists():
        write_once(public_path, public)
    return private, public
