"""Object stores on loopback and the connector as a process, for the upload tests and the
readers of the uploaded data set: Azurite (the Azure Storage emulator, from the npm registry,
in tests/node; plain HTTP or HTTPS with a test certificate), a TCP relay that cuts a store
off, and `opcua-connector run` with its metrics.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from azure.storage.blob import BlobServiceClient

from interop_helpers import REPO_ROOT, connector_binary, free_port

AZURITE = REPO_ROOT / "tests" / "node" / "node_modules" / ".bin" / "azurite-blob"
# The emulator's account and its published development key (not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
LINE = "line-up"
NS = "nsu=urn:opcua-connector:bottling-line;s="
COUNTERS = ["Filler.BottlesFilled", "Capper.CapsApplied", "Labeler.LabelsApplied"]


def wait_until(what: str, check: Callable[[], object], timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(every)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Azurite:
    """Azurite's blob service on a free loopback port, its data in `location`; over HTTPS
    when given a certificate and key (PEM) and the CA file that verifies them."""

    def __init__(self, location: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        if not AZURITE.exists():
            pytest.fail(f"{AZURITE} is missing: run `npm ci` in tests/node (tests/run does)")
        self.location = location
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        args = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--location", str(self.location), "--silent", "--skipApiVersionCheck", "--loose"]
        if self.tls:
            cert, key, _ = self.tls
            args += ["--cert", str(cert), "--key", str(key)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until("azurite listens", lambda: port_open(self.port), timeout=30)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def host(self) -> str:
        """The account's host as IoT Hub names it in a grant (the emulator's path style)."""
        return f"127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def client(self) -> BlobServiceClient:
        conn = (
            f"DefaultEndpointsProtocol={'https' if self.tls else 'http'};AccountName={ACCOUNT};"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.endpoint};"
        )
        if self.tls:
            return BlobServiceClient.from_connection_string(conn, connection_verify=str(self.tls[2]))
        return BlobServiceClient.from_connection_string(conn)


class Relay:
    """A TCP relay on loopback in front of a store: `down()` drops every connection and
    refuses new ones until `up()`, as a cut uplink does."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.is_down = False
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self) -> None:
        self.is_down = True
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.open.clear()

    def up(self) -> None:
        self.is_down = False


class Connector:
    """`opcua-connector run` on a config in `workdir`, stderr in `workdir/connector.log`."""

    def __init__(self, workdir: Path, endpoint: str, upload: str, env: dict[str, str], line: str = LINE) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.metrics_port = free_port()
        nodes = ", ".join(f'"{NS}{c}"' for c in COUNTERS)
        config = workdir / "line.toml"
        config.write_text(
            f'[line]\nid = "{line}"\n\n[[plc]]\nid = "sim"\nendpoint = "{endpoint}"\n\n'
            f'  [[plc.group]]\n  name = "fast"\n  publishing_interval = "100ms"\n'
            f'  sampling_interval = "0ms"\n  nodes = [{nodes}]\n\n'
            f'[pki]\ndir = "{workdir / "pki"}"\ntrust_unknown_servers = true\n\n'
            f'[sink.parquet]\ndir = "{workdir / "parquet"}"\nroll_interval = "1s"\n\n'
            f"{upload}\n"
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
        )
        self.config = config
        self.env = {**os.environ, "RUST_LOG": "info", **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.workdir / "connector.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(connector_binary()), "run", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=self.env,
        )
        log.close()

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("opcua_connector_") and " " in line:
                name, value = line.rsplit(" ", 1)
                base = name.split("{", 1)[0].removeprefix("opcua_connector_")
                out[base] = out.get(base, 0.0) + float(value)
        return out

    def log(self) -> str:
        return (self.workdir / "connector.log").read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def chunks(self) -> dict[str, bytes]:
        """Completed local chunks by key (relative path), with their bytes."""
        root = self.workdir / "parquet"
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*.parquet"))
            if not p.name.startswith(".")
        }


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def blobs(a: Azurite, prefix: str, container: str = "chunks") -> dict[str, bytes]:
    container = a.client().get_container_client(container)
    return {
        b.name: container.download_blob(b.name).readall()
        for b in container.list_blobs(name_starts_with=prefix)
    }


def objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing")
    listed = c.list_objects_v2(Bucket="chunks", Prefix=prefix).get("Contents", [])
    return {o["Key"]: c.get_object(Bucket="chunks", Key=o["Key"])["Body"].read() for o in listed}


AZ_UPLOAD = """[sink.parquet.upload]
to = "az://chunks/plant-1"
options = {{ azure_storage_account_name = "{account}", azure_storage_endpoint = "{endpoint}", azure_allow_http = "true" }}
secret_env = {{ azure_storage_account_key = "TEST_AZURE_KEY" }}
{extra}
"""


def az_connector(
    tmp_path: Path, simulator, a: Azurite, extra: str = "", port: int | None = None, line: str = LINE
) -> Connector:
    endpoint = a.endpoint if port is None else f"http://127.0.0.1:{port}/{ACCOUNT}"
    upload = AZ_UPLOAD.format(account=ACCOUNT, endpoint=endpoint, extra=extra)
    return Connector(tmp_path / "run", simulator.url, upload, {"TEST_AZURE_KEY": ACCOUNT_KEY}, line=line)


def run_until(
    c: Connector, what: str, check: Callable[[dict[str, float]], bool], timeout: float = 60.0
) -> dict[str, float]:
    """Starts the connector, waits until `check` holds for its metrics, stops it (exit 0);
    returns those metrics."""
    def satisfied() -> dict[str, float] | None:
        m = c.metrics()
        return m if check(m) else None

    c.start()
    try:
        return wait_until(what, satisfied, timeout=timeout)
    finally:
        assert c.stop() == 0, c.log()[-3000:]


def uploaded(n: int) -> Callable[[dict[str, float]], bool]:
    return lambda m: m.get("parquet_upload_chunks_total", 0) >= n


def restart_until_nothing_pending(c: Connector) -> None:
    """Starts the connector again and stops it once nothing is pending (what a stop left
    behind goes up at the next start)."""
    run_until(c, "nothing pending", lambda m: m.get("parquet_upload_pending_chunks", 1) == 0
              and uploaded(1)(m), timeout=120)


def uploaded_equals_local(c: Connector, stored: dict[str, bytes], prefix: str) -> None:
    """Every local chunk the connector marked uploaded is in the store, byte-identical, under
    its key, and the store holds nothing else; unmarked is at most the chunk the last stop
    closed (it goes up in the stop's drain or at the next start)."""
    root = c.workdir / "parquet"
    every = c.chunks()
    local = {k: v for k, v in every.items() if (root / k).with_name(f".{Path(k).name}.uploaded").exists()}
    assert local, f"no chunk was uploaded\n{c.log()[-3000:]}"
    assert len(every) - len(local) <= 1, sorted(set(every) - set(local))
    expected = {f"{prefix}/{k}": digest(v) for k, v in local.items()}
    got = {k: digest(v) for k, v in stored.items()}
    assert got == expected, f"store vs local:\nonly in store: {sorted(set(got) - set(expected))}\n" \
        f"only local: {sorted(set(expected) - set(got))}"
    for key in got:
        assert key.startswith(f"{prefix}/line={LINE}/date="), key


class Mosquitto:
    """mosquitto with one plain loopback listener (anonymous: any username and password), as
    the hub's MQTT side of a test whose hub double only speaks HTTPS."""

    def __init__(self, dir: Path) -> None:
        binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
        self.port = free_port()
        conf = dir / "mosquitto.conf"
        conf.write_text(f"allow_anonymous true\nlistener {self.port} 127.0.0.1\n")
        try:
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            pytest.fail("mosquitto is missing (apt-get install mosquitto; .ci/run does it)")
        wait_until("mosquitto listens", lambda: port_open(self.port), timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
