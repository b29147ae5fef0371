"""Throwaway TLS certificates and SuperNode keys for trying a secure Flower deployment on one machine.

``fedsb flower deploy --tls`` uses them to run the same setup as several machines would (TLS on every
connection, only registered SuperNodes may join), on 127.0.0.1. The files follow what Flower expects:
a PEM CA certificate (``--ssl-ca-certfile`` / ``--root-certificates`` / ``root-certificates``), a PEM
server certificate whose SAN names 127.0.0.1 and localhost with its key, and one EC (SECP384R1) key pair
per SuperNode in OpenSSH format (``--auth-supernode-private-key``, ``flwr supernode register KEY.pub``).
Generated with ``cryptography`` (a Flower dependency). For real use, issue certificates from your own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedsb.io.rundir import atomic_write_bytes


@dataclass(frozen=True)
class Credentials:
    """Paths of the generated files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[Path]  # private keys; the public key of each is the same path + ".pub"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_secret(path: Path, data: bytes) -> None:
    # Private keys: owner only from the first byte, temp file included (OpenSSH also refuses group-readable keys).
    atomic_write_bytes(path, data, mode=0o600)


def make_credentials(directory: str | Path, supernodes: int, days: int = 7) -> Credentials:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and ``supernodes`` EC key pairs."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedsb local CA")).issuer_name(_name("fedsb local CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    server = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(san, critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))

    creds = Credentials(d / "ca.crt", d / "server.pem", d / "server.key", [d / f"supernode{i}" for i in range(supernodes)])
    atomic_write_bytes(creds.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(creds.server_cert, server.public_bytes(serialization.Encoding.PEM))
    _write_secret(creds.server_key, _pem_key(server_key))
    for path in creds.node_keys:
        key = ec.generate_private_key(ec.SECP384R1())
        _write_secret(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        atomic_write_bytes(Path(f"{path}.pub"), pub + b"\n")
    return creds
