"""Credentials made in the test: a CA with server and client certificates, NKeys, and the JWT
chain (operator, account, user) of a ``.creds`` file, as nsc would make them."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nacl.signing import SigningKey


@dataclass
class Certificates:
    """Paths of a CA and of a server's and a client's certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: ExtendedKeyUsageOID | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path, *, authority: str = "Test CA") -> Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(authority, ca_key, _name(authority), ca_key, ca=True)
    paths = {}
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"{role}.test", key, ca_cert.subject, ca_key, usage=usage)
        (directory / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[role] = (directory / f"{role}.pem", _write_key(key, directory / f"{role}-key.pem"))
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return Certificates(ca_path, *paths["server"], *paths["client"])


# NKeys and JWTs (https://docs.nats.io/running-a-nats-service/configuration/securing_nats/jwt)

PREFIXES = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT}


@dataclass
class KeyPair:
    seed: bytes
    public: str

    def sign(self, data: bytes) -> bytes:
        return nkeys.from_seed(self.seed).sign(data)


def make_keypair(kind: str = "user") -> KeyPair:
    """A fresh NKey of ``kind`` (user, account, operator)."""
    prefix = PREFIXES.get(kind, nkeys.PREFIX_BYTE_USER)
    raw = bytes(SigningKey.generate())
    seed = nkeys.encode_seed(raw, prefix)
    return KeyPair(seed=seed, public=nkeys.from_seed(seed).public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict, issuer: KeyPair) -> str:
    """A NATS JWT (``ed25519-nkey``) of ``claims``, signed by ``issuer``."""
    claims = {"iat": int(time.time()), "iss": issuer.public, **claims}
    claims["jti"] = base64.b32encode(
        hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    ).decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


@dataclass
class Operator:
    """An operator, one account and one user: the server's configuration and the user's
    ``.creds`` file."""

    operator_jwt: str
    account: KeyPair
    account_jwt: str
    user: KeyPair
    user_jwt: str

    def server_config(self) -> str:
        return (
            f"operator: {self.operator_jwt}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{ {self.account.public}: {self.account_jwt} }}\n"
        )

    def creds(self) -> str:
        return (
            "-----BEGIN NATS USER JWT-----\n"
            f"{self.user_jwt}\n"
            "------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{self.user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )


def make_operator() -> Operator:
    operator = make_keypair("operator")
    account = make_keypair("account")
    user = make_keypair("user")
    operator_jwt = encode_jwt(
        {"sub": operator.public, "name": "test", "nats": {"type": "operator", "version": 2}},
        operator,
    )
    account_jwt = encode_jwt(
        {
            "sub": account.public,
            "name": "app",
            "nats": {
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1,
                    "conn": -1,
                    "leaf": -1,
                    "imports": -1,
                    "exports": -1,
                    "data": -1,
                    "payload": -1,
                    "wildcards": True,
                    "mem_storage": -1,
                    "disk_storage": -1,
                    "streams": -1,
                    "consumer": -1,
                },
            },
        },
        operator,
    )
    user_jwt = encode_jwt(
        {
            "sub": user.public,
            "name": "service",
            "nats": {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1},
        },
        account,
    )
    return Operator(operator_jwt, account, account_jwt, user, user_jwt)
