"""A test double of IoT Hub's device file-upload API, over HTTPS on loopback.

It speaks the two requests Microsoft documents for devices (api-version 2021-04-12):

- `POST /devices/{id}/files` with `{"blobName": name}`: answers 200 with a correlation id and
  a SAS URI of the blob `{id}/{name}` in its storage account (`hostName`, `containerName`,
  `blobName`, `sasToken`); the account here is Azurite over HTTPS, and the SAS is a real
  Azure Storage service SAS (read, create, write on that one blob) signed with the
  emulator's account key by azure-storage-blob.
- `POST /devices/{id}/files/notifications` with `{"correlationId", "isSuccess",
  "statusCode", "statusDescription"}`: answers 204 and records it with the blob it names.

Device authentication is checked on every request, as the hub does: either
`Authorization: SharedAccessSignature sr=...&sig=...&se=...` signed with the device key for
`{host}/devices/{id}` and not expired, or (X.509) a client certificate that the test CA
signed with the device id as its common name. A request that fails it gets 401 and is
counted. Also: `PKI`, a test CA and the certificates the tests need, made with
`cryptography`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HUB_HOST = "testhub.azure-devices.net"


class PKI:
    """A test CA in `dir` and certificates it signs: `server(name)` for a DNS name or an IP
    address, `client(cn)` for a device."""

    def __init__(self, dir: Path) -> None:
        dir.mkdir(parents=True, exist_ok=True)
        self.dir = dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opcua-connector test CA")])
        self.name = name
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = dir / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, stem: str, cn: str, san: x509.GeneralName | None, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_file, key_file

    def server(self, stem: str, name: str) -> tuple[Path, Path]:
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            san = x509.DNSName(name)
        return self._issue(stem, name, san, x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, stem: str, cn: str) -> tuple[Path, Path]:
        return self._issue(stem, cn, None, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)


def sas_signature(resource: str, key_b64: str, expiry: str) -> str:
    """IoT Hub's SAS signature of `resource` (already URL-encoded) until `expiry`."""
    mac = hmac.new(base64.b64decode(key_b64), f"{resource}\n{expiry}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@dataclass
class Notification:
    blob: str
    success: bool
    status: int
    description: str


@dataclass
class HubState:
    device_id: str
    device_key: str | None  # None: X.509 devices only
    storage_host: str
    storage_key: str
    account: str
    container: str
    grants: dict[str, str] = field(default_factory=dict)  # correlation id -> blob name
    notifications: list[Notification] = field(default_factory=list)
    requests: int = 0
    rejected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authenticated(self, device: str) -> str | None:
        """None when the request is the device's; else why not."""
        hub = self.server.state
        if device != hub.device_id:
            return f"unknown device {device!r}"
        auth = self.headers.get("Authorization")
        if auth is not None:
            if hub.device_key is None:
                return "a SAS token for an X.509 device"
            if not auth.startswith("SharedAccessSignature "):
                return "Authorization is not a SharedAccessSignature"
            fields = dict(urllib.parse.parse_qsl(auth.removeprefix("SharedAccessSignature "), keep_blank_values=True))
            if fields.get("sr") != f"{HUB_HOST}/devices/{device}":
                return f"sr {fields.get('sr')!r} is not this device's resource"
            resource = urllib.parse.quote(f"{HUB_HOST}/devices/{device}", safe="")
            expiry = fields.get("se", "0")
            if not expiry.isdigit() or int(expiry) < time.time():
                return f"expired or missing se {expiry!r}"
            want = sas_signature(resource, hub.device_key, expiry)
            if not hmac.compare_digest(fields.get("sig", ""), want):
                return "bad signature"
            return None
        cert = self.connection.getpeercert()  # verified against the test CA by the TLS layer
        if not cert:
            return "neither a SAS token nor a client certificate"
        cn = dict(x[0] for x in cert.get("subject", ())).get("commonName")
        if cn != device:
            return f"the client certificate is {cn!r}'s"
        return None

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        hub = self.server.state
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with hub.lock:
            hub.requests += 1
        if urllib.parse.parse_qs(url.query).get("api-version") != ["2021-04-12"]:
            return self._reply(400, {"Message": "api-version must be 2021-04-12"})
        if len(parts) < 3 or parts[0] != "devices" or parts[2] != "files":
            return self._reply(404, {"Message": f"no such endpoint {url.path}"})
        device = urllib.parse.unquote(parts[1])
        why = self._authenticated(device)
        if why is not None:
            with hub.lock:
                hub.rejected.append(why)
            return self._reply(401, {"Message": why})
        request = json.loads(body)
        if parts[3:] == []:
            blob = f"{device}/{request['blobName']}"
            sas = generate_blob_sas(
                account_name=hub.account, container_name=hub.container, blob_name=blob,
                account_key=hub.storage_key, permission=BlobSasPermissions(read=True, create=True, write=True),
                expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), protocol="https",
            )
            correlation = str(uuid.uuid4())
            with hub.lock:
                hub.grants[correlation] = blob
            return self._reply(200, {"correlationId": correlation, "hostName": hub.storage_host,
                                     "containerName": hub.container, "blobName": blob, "sasToken": f"?{sas}"})
        if parts[3:] == ["notifications"]:
            with hub.lock:
                typed = (isinstance(request.get("isSuccess"), bool) and isinstance(request.get("statusCode"), int)
                         and isinstance(request.get("statusDescription"), str))
                if not typed:
                    return self._reply(400, {"Message": "isSuccess, statusCode, statusDescription: wrong types"})
                blob = hub.grants.pop(request.get("correlationId"), None)
                if blob is None:
                    return self._reply(400, {"Message": "unknown correlationId"})
                hub.notifications.append(Notification(blob, request["isSuccess"], request["statusCode"],
                                                      request["statusDescription"]))
            return self._reply(204)
        return self._reply(404, {"Message": f"no such endpoint {url.path}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


class HubDouble:
    """The file-upload API on a free loopback port, with the certificate `cert`/`key` for
    HUB_HOST; X.509 clients are verified against `ca_file`."""

    def __init__(self, state: HubState, cert: Path, key: Path, ca_file: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
        self.state = state
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = state
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
