"""Server certificates issued by a plant's CA: the connector's trust of `pki/issuers/`.

A test CA (RSA, made here with `cryptography`) issues the simulator's certificate, which the
test places in the simulator's PKI before it starts (`own/cert.der`, `private/private.pem`);
the CA's certificate and its CRL (version 2) go into the connector's `pki/issuers/`, and
`trust_unknown_servers` is off. The connector runs `Basic256Sha256` / `SignAndEncrypt`.

- Issued by the CA, not revoked: samples flow without the certificate ever having been put
  in `trusted/` by hand (the connector copies it there for the OPC UA stack); its alternative
  names list a DNS name first, then the application URI (as node-opcua and others do).
- The same CA's certificate revoked in the CRL, an expired one, one naming another
  application URI, and a CA without a CRL: refused, the reason in the log, no sample.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import Simulator
from interop_helpers import connector_binary, free_port
from upload_helpers import wait_until

SIM_URI = "urn:opcua-connector:simulator"
NS = "nsu=urn:opcua-connector:bottling-line;s="
NOW = dt.datetime.now(dt.timezone.utc)


class CA:
    """A test CA with an RSA key: issues server certificates and CRLs."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Plant test CA"),
                               x509.NameAttribute(NameOID.ORGANIZATION_NAME, "opcua-connector tests")])
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def server(self, uri: str = SIM_URI, valid_days: tuple[int, int] = (-1, 30)) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """A server certificate: DNS name first, then the IP address, then the application URI."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opcua-connector simulator")]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW + dt.timedelta(days=valid_days[0]))
            .not_valid_after(NOW + dt.timedelta(days=valid_days[1]))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.UniformResourceIdentifier(uri),
            ]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def crl(self, revoked: list[x509.Certificate]) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(self.name)
            .last_update(NOW - dt.timedelta(hours=1)).next_update(NOW + dt.timedelta(days=7))
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for c in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                .revocation_date(NOW - dt.timedelta(minutes=5)).build())
        return builder.sign(self.key, hashes.SHA256())


def pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def simulator_with(workdir: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Simulator:
    pki = workdir / "pki"
    (pki / "own").mkdir(parents=True)
    (pki / "private").mkdir(parents=True)
    (pki / "own" / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (pki / "private" / "private.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Simulator(workdir, ["--security", "Basic256Sha256:SignAndEncrypt"])


class Run:
    """`opcua-connector run` with Basic256Sha256 SignAndEncrypt and a PKI whose issuers/ holds
    `issuers` (file name -> bytes); metrics on a free port."""

    def __init__(self, workdir: Path, endpoint: str, issuers: dict[str, bytes]) -> None:
        workdir.mkdir(parents=True)
        self.workdir = workdir
        self.pki = workdir / "pki"
        (self.pki / "issuers").mkdir(parents=True)
        for name, data in issuers.items():
            (self.pki / "issuers" / name).write_bytes(data)
        self.metrics_port = free_port()
        config = workdir / "line.toml"
        config.write_text(
            f'[line]\nid = "trust"\n\n[[plc]]\nid = "sim"\nendpoint = "{endpoint}"\n'
            'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\n\n'
            f'  [[plc.group]]\n  name = "g"\n  publishing_interval = "100ms"\n  nodes = ["{NS}Filler.BottlesFilled"]\n\n'
            f'[pki]\ndir = "{self.pki}"\ntrust_unknown_servers = false\n\n'
            f'[sink.parquet]\ndir = "{workdir / "parquet"}"\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
        )
        self.log = workdir / "connector.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(connector_binary()), "run", "--config", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def samples(self) -> float:
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                body = r.read().decode()
        except OSError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith("opcua_connector_samples_received_total"))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def ca() -> CA:
    return CA()


def test_a_certificate_issued_by_a_ca_in_issuers_is_trusted_without_being_in_trusted(tmp_path: Path, ca: CA) -> None:
    cert, key = ca.server()
    sim = simulator_with(tmp_path / "sim", cert, key)
    try:
        run = Run(tmp_path / "run", sim.url, {"plant-ca.pem": pem(ca.cert), "plant-ca.crl": pem(ca.crl([]))})
        try:
            wait_until("samples flow", lambda: run.samples() > 0, timeout=60)
        finally:
            assert run.stop() == 0, run.text()[-3000:]
    finally:
        sim.stop()
    # The connector copied it into trusted/ for the stack; nothing was rejected.
    trusted = list((run.pki / "trusted").glob("*.der"))
    assert [p.read_bytes() for p in trusted] == [cert.public_bytes(serialization.Encoding.DER)], trusted
    assert not list((run.pki / "rejected").glob("*"))
    assert "issued by" in run.text()


@pytest.mark.parametrize("case", ["revoked", "expired", "wrong_uri", "no_crl"])
def test_a_revoked_expired_misnamed_or_unverifiable_certificate_is_refused_with_the_reason(
    tmp_path: Path, ca: CA, case: str
) -> None:
    if case == "expired":
        cert, key = ca.server(valid_days=(-30, -1))
    elif case == "wrong_uri":
        cert, key = ca.server(uri="urn:someone-else:server")
    else:
        cert, key = ca.server()
    issuers = {"plant-ca.pem": pem(ca.cert)}
    if case != "no_crl":
        issuers["plant-ca.crl"] = pem(ca.crl([cert] if case == "revoked" else []))
    reason = {
        "revoked": "revoked",
        "expired": "is valid from",
        "wrong_uri": "names the application URIs",
        "no_crl": "no CRL",
    }[case]
    sim = simulator_with(tmp_path / "sim", cert, key)
    try:
        run = Run(tmp_path / "run", sim.url, issuers)
        try:
            wait_until(f"the refusal ({reason}) is logged", lambda: reason in run.text(), timeout=60)
            assert run.samples() == 0
        finally:
            assert run.stop() == 0, run.text()[-3000:]
    finally:
        sim.stop()
    # Logged once per outage, not per attempt; nothing was trusted.
    assert run.text().count(reason) == 1, run.text()[-3000:]
    assert not list((run.pki / "trusted").glob("*.der"))
