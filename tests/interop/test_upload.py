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

IoT Hub's file upload (`via = "iothub"`) goes through a double of the hub's HTTPS API
(hub_double.py) that grants blobs in Azurite over HTTPS (a test CA the connector trusts as the
hub's `ca_file`); the device authenticates with a SAS token or an X.509 certificate, checked on
every request; each chunk ends in exactly one success notification naming its blob.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from moto.server import ThreadedMotoServer

from hub_double import HUB_HOST, PKI, HubDouble, HubState
from interop_helpers import free_port
from upload_helpers import (
    ACCOUNT, ACCOUNT_KEY, Azurite, Connector, Mosquitto, Relay, az_connector, blobs, objects, restart_until_nothing_pending,
    run_until, uploaded, uploaded_equals_local, wait_until,
)


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


def test_az_every_chunk_lands_in_azurite_byte_identical(tmp_path: Path, simulator, azurite: Azurite) -> None:
    # With a SAS token of the container (the other tests use the account key).
    sas = generate_container_sas(ACCOUNT, "chunks", account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, create=True, write=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    upload = (
        '[sink.parquet.upload]\nto = "az://chunks/plant-1"\n'
        f'options = {{ azure_storage_account_name = "{ACCOUNT}", azure_storage_endpoint = "{azurite.endpoint}", '
        'azure_allow_http = "true" }\nsecret_env = { azure_storage_sas_key = "TEST_AZURE_SAS" }\n'
    )
    c = Connector(tmp_path / "run", simulator.url, upload, {"TEST_AZURE_SAS": sas})
    run_until(c, "5 chunks uploaded", uploaded(5))
    restart_until_nothing_pending(c)
    stored = blobs(azurite, "plant-1/")
    uploaded_equals_local(c, stored, "plant-1")
    # Each went up in one Put Blob with the Content-MD5 of its bytes, which the store checks
    # and keeps as the blob's property (not with the account key: docs/parquet.md).
    container = azurite.client().get_container_client("chunks")
    for name, data in stored.items():
        md5 = container.get_blob_client(name).get_blob_properties().content_settings.content_md5
        assert md5 is not None and bytes(md5) == hashlib.md5(data).digest(), name


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


# IoT Hub's file upload: the hub double (HTTPS, tests/interop/hub_double.py) grants blobs in
# Azurite (HTTPS, a test CA), the hub's MQTT side is mosquitto.
DEVICE = "line-7"
DEVICE_KEY = base64.b64encode(b"the device key of line-7 (test)!").decode()
HUB_CONTAINER = "device-uploads"


class HubSetup:
    def __init__(self, tmp_path: Path) -> None:
        self.pki = PKI(tmp_path / "test-pki")
        az_cert, az_key = self.pki.server("azurite", "127.0.0.1")
        self.hub_cert = self.pki.server("hub", HUB_HOST)
        self.azurite = Azurite(tmp_path / "azurite", tls=(az_cert, az_key, self.pki.ca_file))
        self.azurite.client().create_container(HUB_CONTAINER)
        self.mosquitto = Mosquitto(tmp_path)
        self.doubles: list[HubDouble] = []

    def hub(self, device_key: str | None) -> HubDouble:
        state = HubState(DEVICE, device_key, self.azurite.host, ACCOUNT_KEY, ACCOUNT, HUB_CONTAINER)
        double = HubDouble(state, *self.hub_cert, self.pki.ca_file)
        self.doubles.append(double)
        return double

    def connector(self, tmp_path: Path, simulator, double: HubDouble, auth: str, key: str = DEVICE_KEY) -> Connector:
        env = {"OPCUA_CONNECTOR_FAULT_UPLOAD_PART_BYTES": "1024"}  # every chunk in several blocks
        if auth == "sas":
            identity = 'connection_string_env = "TEST_HUB_CS"'
            env["TEST_HUB_CS"] = f"HostName={HUB_HOST};DeviceId={DEVICE};SharedAccessKey={key}"
        else:
            cert, cert_key = self.pki.client("device", DEVICE)
            identity = (f'x509 = {{ host = "{HUB_HOST}", device_id = "{DEVICE}", '
                        f'cert_file = "{cert}", key_file = "{cert_key}" }}')
        upload = (
            '[sink.parquet.upload]\nvia = "iothub"\n\n'
            f'[hub]\n{identity}\ninsecure_endpoint = "127.0.0.1:{self.mosquitto.port}"\n'
            f'https_endpoint = "127.0.0.1:{double.port}"\nca_file = "{self.pki.ca_file}"\n'
        )
        return Connector(tmp_path / "run", simulator.url, upload, env)

    def stored(self) -> dict[str, bytes]:
        return blobs(self.azurite, f"{DEVICE}/", container=HUB_CONTAINER)

    def close(self) -> None:
        for d in self.doubles:
            d.close()
        self.azurite.kill()
        self.mosquitto.stop()


@pytest.fixture
def hub_setup(tmp_path: Path) -> Iterator[HubSetup]:
    setup = HubSetup(tmp_path)
    yield setup
    setup.close()


@pytest.mark.parametrize("auth", ["sas", "x509"])
def test_iothub_file_upload_puts_every_chunk_in_the_hubs_storage_with_one_notification_each(
    tmp_path: Path, simulator, hub_setup: HubSetup, auth: str
) -> None:
    double = hub_setup.hub(DEVICE_KEY if auth == "sas" else None)
    c = hub_setup.connector(tmp_path, simulator, double, auth)
    run_until(c, "4 chunks uploaded", uploaded(4))
    restart_until_nothing_pending(c)
    stored = hub_setup.stored()
    # Under the device's folder of the hub's container, byte-identical, as local.
    uploaded_equals_local(c, stored, DEVICE)
    hub = double.state
    assert hub.rejected == [], hub.rejected
    # One success notification per chunk, naming its blob; nothing else notified.
    assert [n for n in hub.notifications if not (n.success and n.status == 200)] == []
    assert Counter(n.blob for n in hub.notifications) == Counter(stored.keys())
    # Each request authenticated; every grant notified, but for one a stop may have cut
    # (two stops here; the hub lets such a grant expire).
    assert len(hub.grants) <= 2, hub.grants
    # Chunks larger than a part (1 KiB here) went up as blocks and a block list.
    container = hub_setup.azurite.client().get_container_client(HUB_CONTAINER)
    blocks = {k: len(container.get_blob_client(k).get_block_list("committed")[0]) for k in stored}
    big = {k: n for k, n in blocks.items() if len(stored[k]) > 1024}
    assert big and all(n == -(-len(stored[k]) // 1024) for k, n in big.items()), blocks


def test_iothub_file_upload_with_a_wrong_device_key_is_refused_and_nothing_counts_as_uploaded(
    tmp_path: Path, simulator, hub_setup: HubSetup
) -> None:
    double = hub_setup.hub(DEVICE_KEY)
    wrong = base64.b64encode(b"not the key of this device (test)").decode()
    c = hub_setup.connector(tmp_path, simulator, double, "sas", key=wrong)
    m = run_until(c, "failed attempts", lambda m: m.get("parquet_upload_failures_total", 0) >= 2
                  and m.get("parquet_upload_pending_chunks", 0) >= 1)
    assert m.get("parquet_upload_chunks_total", 0) == 0, m
    assert double.state.rejected and set(double.state.rejected) == {"bad signature"}, double.state.rejected
    assert double.state.notifications == [] and hub_setup.stored() == {}
    assert "401" in c.log(), c.log()[-2000:]
    # Nothing was marked uploaded.
    assert not list((c.workdir / "parquet").rglob(".*.uploaded"))
