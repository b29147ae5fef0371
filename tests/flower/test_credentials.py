"""Throwaway TLS certificates and SuperNode keys have the shape Flower expects."""

from __future__ import annotations

import ipaddress
import re
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


def test_private_keys_are_owner_only_from_the_first_byte(tmp_path: Path, monkeypatch) -> None:
    """No moment at which another local user could open a private key: the temp file is 0600 when created and
    when renamed into place, and nothing ever widens a key's mode (the old code chmod-ed the temp file to
    0644 under umask 022, renamed it, then narrowed it)."""
    import os
    import tempfile

    import fedsb.io.rundir

    monkeypatch.setattr(fedsb.io.rundir, "_UMASK", 0o022)  # the usual umask, whatever this machine's is
    modes: list[tuple[str, str, int]] = []  # (event, file name, mode) for every private key written
    secret = {"server.key", "supernode0", "supernode1"}

    def key_name(p) -> str | None:
        name = Path(p).name
        return next((s for s in secret if name == s or re.fullmatch(rf"\.{re.escape(s)}\.[a-z0-9_]+\.tmp", name)), None)

    real_mkstemp, real_replace, real_chmod = tempfile.mkstemp, os.replace, os.chmod

    def mkstemp(*a, **kw):
        fd, path = real_mkstemp(*a, **kw)
        if key_name(path):
            modes.append(("created", path, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd, path

    def replace(src, dst, *a, **kw):
        if key_name(dst):
            modes.append(("renamed", str(src), stat.S_IMODE(os.stat(src).st_mode)))
        real_replace(src, dst, *a, **kw)
        if key_name(dst):
            modes.append(("in place", str(dst), stat.S_IMODE(os.stat(dst).st_mode)))

    def chmod(path, mode, *a, **kw):
        if key_name(path):
            modes.append(("chmod", str(path), stat.S_IMODE(mode)))
        real_chmod(path, mode, *a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "chmod", chmod)
    c = make_credentials(tmp_path, supernodes=2)
    events = {e for e, _, _ in modes}
    assert {"created", "renamed", "in place"} <= events, modes
    assert {Path(p).name for e, p, _ in modes if e == "in place"} == secret
    wide = [(e, Path(p).name, oct(m)) for e, p, m in modes if m != 0o600]
    assert wide == [], wide
    for path in [c.server_key, *c.node_keys]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(c.ca_cert.stat().st_mode) == 0o644  # public files keep the usual permissions
