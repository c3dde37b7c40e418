"""Fixtures for the python-asyncua interop tests.

The simulator binary is `$OPCUA_SIMULATOR_BIN` (default `<repo>/target/debug/opcua-simulator`).
It is started with `--port 0` and announces its endpoint with one stdout line
`endpoint: opc.tcp://127.0.0.1:PORT/`; its stderr goes to a file that is attached to the report
of any failing test that used it.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import Client
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from interop_helpers import CLIENT_APP_URI, NS_URI, OPERATOR_PASSWORD, OPERATOR_USER, REPO_ROOT

# The Rust test that writes the Parquet fixture chunks (tests/interop/test_parquet_readers.py).
PARQUET_FIXTURE_TEST = "sinks::parquet::tests::writes_reader_fixture"
CARGO_TIMEOUT_S = 1800  # a cold debug build of the workspace takes minutes on 2 cores

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
ENDPOINT_LINE = re.compile(r"^endpoint: (opc\.tcp://127\.0\.0\.1:(\d+)/?)\s*$")


def simulator_binary() -> Path:
    return Path(os.environ.get("OPCUA_SIMULATOR_BIN", REPO_ROOT / "target" / "debug" / "opcua-simulator"))


class Simulator:
    """One running simulator process."""

    def __init__(self, workdir: Path, extra_args: list[str]) -> None:
        binary = simulator_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            pytest.fail(
                f"simulator binary {binary} is missing; build it (cargo build -p simulator) "
                "or set OPCUA_SIMULATOR_BIN"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        self.pki_dir = workdir / "pki"
        self.stderr_path = workdir / "simulator.stderr.log"
        self.args = [str(binary), "--port", "0", "--pki-dir", str(self.pki_dir), *extra_args]
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=workdir,
        )
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        try:
            self.url = self._wait_for_endpoint()
        except BaseException:
            self.stop()
            raise

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:  # keeps draining after the endpoint line so the pipe never fills
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_for_endpoint(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"simulator printed no 'endpoint: ...' line within {STARTUP_TIMEOUT_S:.0f} s\n"
                    f"command: {' '.join(self.args)}\nstdout: {self.stdout_lines!r}\n"
                    f"stderr tail:\n{self.stderr_tail()}"
                )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(timeout=STOP_TIMEOUT_S)
                pytest.fail(
                    f"simulator exited (code {code}) before announcing its endpoint\n"
                    f"command: {' '.join(self.args)}\nstdout: {self.stdout_lines!r}\n"
                    f"stderr tail:\n{self.stderr_tail()}"
                )
            match = ENDPOINT_LINE.match(line)
            if match:
                assert int(match.group(2)) > 0, f"simulator announced port 0: {line!r}"
                return match.group(1)

    def stderr_tail(self, max_bytes: int = 8000) -> str:
        try:
            if not self._stderr.closed:  # closed once the simulator was stopped
                self._stderr.flush()
            data = self.stderr_path.read_bytes()
        except OSError as exc:
            return f"<cannot read {self.stderr_path}: {exc}>"
        return data[-max_bytes:].decode("utf-8", "replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=STOP_TIMEOUT_S)
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def launch_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory: start a simulator with extra CLI args; every one started is stopped at teardown."""
    started: list[Simulator] = []

    def launch(*extra_args: str) -> Simulator:
        sim = Simulator(tmp_path_factory.mktemp("simulator"), list(extra_args))
        started.append(sim)
        return sim

    yield launch
    for sim in started:
        sim.stop()


@pytest.fixture(scope="session")
def simulator(launch_simulator) -> Simulator:
    """The shared simulator: all security policies, anonymous allowed, user operator:secret-pw."""
    return launch_simulator("--security", "all", "--user", f"{OPERATOR_USER}:{OPERATOR_PASSWORD}")


def make_client(url: str) -> Client:
    client = Client(url, timeout=10)
    client.application_uri = CLIENT_APP_URI
    client.name = "opcua-connector interop tests"
    client.description = "opcua-connector interop tests (python-asyncua)"
    return client


@pytest_asyncio.fixture
async def client(simulator: Simulator) -> AsyncIterator[Client]:
    """An anonymous client on the SecurityPolicy None endpoint of the shared simulator."""
    c = make_client(simulator.url)
    async with c:
        yield c


@pytest_asyncio.fixture
async def ns(client: Client) -> int:
    """Namespace index of the bottling-line model, resolved from its URI."""
    return await client.get_namespace_index(NS_URI)


@pytest.fixture(scope="session")
def client_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Self-signed client application certificate (DER) and key (PEM) for CLIENT_APP_URI."""
    pki = tmp_path_factory.mktemp("client-pki")
    cert_path, key_path = pki / "client-cert.der", pki / "client-key.pem"
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        CLIENT_APP_URI,  # becomes the subject CN
        {"countryName": "DE", "organizationName": "opcua-connector"},
        [x509.UniformResourceIdentifier(CLIENT_APP_URI), x509.DNSName(socket.gethostname())],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=30,
    )
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path, key_path


@pytest.fixture(scope="session")
def rust_parquet_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the Rust fixture test once; returns the directory holding the chunks it wrote.

    13 samples of line `line-a`, PLC `filler`, every value kind, 7 on 2026-11-26 and 6 on
    2026-11-27 (UTC): two chunks in two `date=` partitions. Treat the directory as read-only.
    """
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo is not on PATH: it is needed to write the Parquet fixture")
    out = tmp_path_factory.mktemp("parquet-fixture")
    cmd = [cargo, "test", "--workspace", "--lib", PARQUET_FIXTURE_TEST, "--", "--exact"]
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env={**os.environ, "PARQUET_FIXTURE_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=CARGO_TIMEOUT_S,
        check=False,
    )
    report = f"command: {' '.join(cmd)}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    if proc.returncode != 0:
        pytest.fail(f"the Rust fixture test failed (exit {proc.returncode})\n{report}")
    if "test result: ok. 1 passed" not in proc.stdout:
        pytest.fail(f"the Rust fixture test did not run (filtered out?)\n{report}")
    if not list(out.glob("**/*.parquet")):
        pytest.fail(f"the Rust fixture test wrote no *.parquet file into {out}\n{report}")
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the simulator's stderr tail to the report of a failing test that used it."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        sim = funcargs.get("simulator")
        if isinstance(sim, Simulator):
            report.sections.append(("simulator stderr (tail)", sim.stderr_tail()))
