"""Parquet chunks uploaded to object storage, checked by independent clients.

The stores are real servers on loopback: Azurite (the Azure Storage emulator, from the npm
registry, in tests/node) read back with Microsoft's azure-storage-blob, and moto's S3 server
read back with boto3. The connector runs as a process (`opcua-connector run`) against the
bundled simulator, rolling a chunk every second, and uploads through its `az://` or `s3://`
configuration with the account key / access keys given by environment variables, as in
production (no emulator shortcut).

Checked: every completed chunk is in the store exactly once, under
`<prefix>/line=<line>/date=<date>/<file>.parquet`, byte-identical to the local file; the
pending gauge returns to 0; after the store was down for a while and the connector was
SIGKILLed during uploads, a restart uploads what was left, none twice; with
`keep_local = "0s"` a local file disappears only once its object is in the store.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from azure.storage.blob import BlobServiceClient
from moto.server import ThreadedMotoServer

from interop_helpers import REPO_ROOT

AZURITE = REPO_ROOT / "tests" / "node" / "node_modules" / ".bin" / "azurite-blob"
# The emulator's account and its published development key (not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
LINE = "line-up"
NS = "nsu=urn:opcua-connector:bottling-line;s="
COUNTERS = ["Filler.BottlesFilled", "Capper.CapsApplied", "Labeler.LabelsApplied"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def connector_binary() -> Path:
    return Path(os.environ.get("OPCUA_CONNECTOR_BIN", REPO_ROOT / "target" / "debug" / "opcua-connector"))


class Azurite:
    """Azurite's blob service on a free loopback port, its data in `location`."""

    def __init__(self, location: Path) -> None:
        if not AZURITE.exists():
            pytest.fail(f"{AZURITE} is missing: run `npm ci` in tests/node (tests/run does)")
        self.location = location
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(self.location), "--silent", "--skipApiVersionCheck", "--loose"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until("azurite listens", lambda: port_open(self.port), timeout=30)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def client(self) -> BlobServiceClient:
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )
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


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    a = Azurite(tmp_path / "azurite")
    a.client().create_container("chunks")
    yield a
    a.kill()


@pytest.fixture
def s3() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="chunks")
    yield endpoint
    server.stop()


class Connector:
    """`opcua-connector run` on a config in `workdir`, stderr in `workdir/connector.log`."""

    def __init__(self, workdir: Path, endpoint: str, upload: str, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.metrics_port = free_port()
        nodes = ", ".join(f'"{NS}{c}"' for c in COUNTERS)
        config = workdir / "line.toml"
        config.write_text(
            f'[line]\nid = "{LINE}"\n\n[[plc]]\nid = "sim"\nendpoint = "{endpoint}"\n\n'
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


def blobs(a: Azurite, prefix: str) -> dict[str, bytes]:
    container = a.client().get_container_client("chunks")
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


def az_connector(tmp_path: Path, simulator, a: Azurite, extra: str = "", port: int | None = None) -> Connector:
    endpoint = a.endpoint if port is None else f"http://127.0.0.1:{port}/{ACCOUNT}"
    upload = AZ_UPLOAD.format(account=ACCOUNT, endpoint=endpoint, extra=extra)
    return Connector(tmp_path / "run", simulator.url, upload, {"TEST_AZURE_KEY": ACCOUNT_KEY})


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


def test_az_every_chunk_lands_in_azurite_byte_identical(tmp_path: Path, simulator, azurite: Azurite) -> None:
    c = az_connector(tmp_path, simulator, azurite)
    run_until(c, "5 chunks uploaded", uploaded(5))
    restart_until_nothing_pending(c)
    uploaded_equals_local(c, blobs(azurite, "plant-1/"), "plant-1")


def test_s3_every_chunk_lands_in_the_s3_server_byte_identical(tmp_path: Path, simulator, s3: str) -> None:
    upload = (
        '[sink.parquet.upload]\nto = "s3://chunks/plant-1/edge"\n'
        f'options = {{ aws_endpoint = "{s3}", aws_region = "us-east-1", aws_allow_http = "true" }}\n'
        'secret_env = { aws_access_key_id = "TEST_S3_KEY_ID", aws_secret_access_key = "TEST_S3_SECRET" }\n'
    )
    c = Connector(tmp_path / "run", simulator.url, upload,
                  {"TEST_S3_KEY_ID": "testing", "TEST_S3_SECRET": "testing"})
    run_until(c, "4 chunks uploaded", uploaded(4))
    restart_until_nothing_pending(c)
    uploaded_equals_local(c, objects(s3, "plant-1/edge/"), "plant-1/edge")


def test_store_down_then_a_sigkill_during_uploads_loses_nothing_and_repeats_nothing(
    tmp_path: Path, simulator, azurite: Azurite
) -> None:
    relay = Relay(azurite.port)
    c = az_connector(tmp_path, simulator, azurite, port=relay.port)
    c.start()
    try:
        wait_until("2 chunks uploaded", lambda: c.metrics().get("parquet_upload_chunks_total", 0) >= 2)
        relay.down()
        down_since = time.monotonic()
        wait_until("uploads fail while the store is down",
                   lambda: c.metrics().get("parquet_upload_failures_total", 0) >= 1)
        wait_until("a backlog builds", lambda: c.metrics().get("parquet_upload_pending_chunks", 0) >= 5)
        # Down for 30 s in all.
        time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
        relay.up()
        # Killed while the backlog is going up.
        wait_until("uploads resume", lambda: c.metrics().get("parquet_upload_chunks_total", 0) >= 4)
        c.kill()
    finally:
        c.kill()
    # The backlog (and what the kill cut) goes up after the restart.
    restart_until_nothing_pending(c)
    stored = blobs(azurite, "plant-1/")
    uploaded_equals_local(c, stored, "plant-1")
    # None twice under another name: no `<name>.<n>.parquet` was needed.
    assert not [k for k in stored if k.removesuffix(".parquet").rsplit(".", 1)[-1].isdigit()], sorted(stored)


def test_keep_local_0s_removes_a_local_file_only_once_it_is_in_the_store(
    tmp_path: Path, simulator, azurite: Azurite
) -> None:
    c = az_connector(tmp_path, simulator, azurite, extra='keep_local = "0s"')
    m = run_until(c, "6 chunks uploaded", uploaded(6))
    assert m.get("parquet_upload_lost_chunks_total", 0) == 0, m
    stored = {k.removeprefix("plant-1/"): v for k, v in blobs(azurite, "plant-1/").items()}
    local = c.chunks()
    # Each chunk file is numbered (<plc>-<time>-NNNNNN.parquet): together the store and the
    # disk hold every number from 1 on, once; what left the disk is in the store.
    def number(key: str) -> int:
        return int(key.rsplit("-", 1)[1].removesuffix(".parquet"))
    numbers = sorted(number(k) for k in stored) + sorted(number(k) for k in local if k not in stored)
    assert sorted(numbers) == list(range(1, len(numbers) + 1)), (sorted(stored), sorted(local))
    assert len(stored) >= 6
    # Locally at most the chunk closed by the stop (and one completed just before it).
    assert len([k for k in local if k not in stored]) <= 2, sorted(local)
    assert len(local) <= 2, sorted(local)


def test_file_store_on_a_mounted_directory_gets_every_chunk(tmp_path: Path, simulator) -> None:
    nas = tmp_path / "nas" / "opcua"  # created by the first upload, not before
    c = Connector(tmp_path / "run", simulator.url, f'[sink.parquet.upload]\nto = "file://{nas}"\n', {})
    run_until(c, "3 chunks uploaded", uploaded(3))
    stored = {f"nas/{p.relative_to(nas)}": p.read_bytes() for p in nas.rglob("*.parquet")}
    uploaded_equals_local(c, stored, "nas")
