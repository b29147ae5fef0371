"""Throwaway TLS certificates and SuperNode keys have the shape Flower expects."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedsb.flower.credentials import make_credentials


def test_server_certificate_is_signed_by_the_ca_and_names_loopback(tmp_path: Path) -> None:
    c = make_credentials(tmp_path, supernodes=2)
    ca = x509.load_pem_x509_certificate(c.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(c.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    key = load_pem_private_key(c.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    assert stat.S_IMODE(c.server_key.stat().st_mode) == 0o600


def test_one_openssh_ec_key_pair_per_supernode(tmp_path: Path) -> None:
    c = make_credentials(tmp_path, supernodes=3)
    assert len(c.node_keys) == 3
    publics = set()
    for path in c.node_keys:
        private = load_ssh_private_key(path.read_bytes(), password=None)
        public = load_ssh_public_key(Path(f"{path}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        publics.add(Path(f"{path}.pub").read_bytes())
    assert len(publics) == 3, "every SuperNode gets its own key"
