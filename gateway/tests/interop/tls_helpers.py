"""Helpers for the TLS interop tests (no test lives here): a PKI made with the `openssl` CLI and a
gateway with two TLS listeners on it.

`make_pki(directory)` writes a CA, a server certificate for `DNS:localhost, IP:127.0.0.1` and a
client certificate with CN `device-8`, all signed by the CA (P-256 keys). `tls_gateway_config`
is the gateway configuration of the `tls_gateway` fixtures: a `tls` listener without client
authentication and a mutual TLS one (`require_client_cert`, `use_identity_as_username`), anonymous
clients allowed, and an ACL granting `open/#` to everyone and `dev/<username>/#` to each
identified client, so a subscription under `dev/device-8/` is granted only to a connection whose
username is the certificate's CN.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# Every client is tried by IP literal and by name; the server certificate holds both.
HOSTS = ["127.0.0.1", "localhost"]
DEVICE = "device-8"


@dataclass
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(directory: Path, name: str, subject: str, ca: Path, ca_key: Path, ext: str) -> None:
    key, csr, cert = (directory / f"{name}.{e}" for e in ("key", "csr", "pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", subject)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext_file))


def make_pki(directory: Path) -> Pki:
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=interop TLS CA")
    _issue(directory, "server", "/CN=localhost", ca, ca_key,
           "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(directory, "client", f"/CN={DEVICE}", ca, ca_key, "extendedKeyUsage=clientAuth\n")
    return Pki(str(ca), str(directory / "server.pem"), str(directory / "server.key"),
               str(directory / "client.pem"), str(directory / "client.key"))


def tls_gateway_config(pki: Pki, acl: Path, tls_port: int, mutual_port: int) -> str:
    acl.write_text("topic readwrite open/#\npattern readwrite dev/%u/#\n")
    return f"""
[auth]
allow_anonymous = true
acl_file = "{acl}"

[[listeners]]
kind = "tls"
bind = "127.0.0.1:{tls_port}"
cert = "{pki.server_cert}"
key = "{pki.server_key}"

[[listeners]]
kind = "tls"
bind = "127.0.0.1:{mutual_port}"
cert = "{pki.server_cert}"
key = "{pki.server_key}"
ca = "{pki.ca}"
require_client_cert = true
use_identity_as_username = true
"""
