"""Secure loopback deployment: TLS with a generated CA, SuperNode authentication, and an unregistered key refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from flwr_gcfcp.app import deploy
from flwr_gcfcp.app.status import latest_run

REPO = Path(__file__).resolve().parent.parent


def test_tls_files_form_a_chain_that_standard_tls_verifies_for_loopback(tmp_path):
    """A TLS client trusting only the generated CA completes a handshake for 127.0.0.1 and localhost; a client
    trusting another CA refuses the certificate."""
    tls = deploy.make_tls_files(tmp_path / "tls")
    assert tls.server_key.stat().st_mode & 0o077 == 0  # private key readable by the owner only
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.server_cert, tls.server_key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(3)
    listener.settimeout(30)
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError):  # the client with the foreign CA aborts the handshake
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        for host in ("127.0.0.1", "localhost"):
            client_ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=host) as conn:
                    assert conn.recv(2) == b"ok"
        foreign = ssl.create_default_context(cafile=str(deploy.make_tls_files(tmp_path / "other").ca_cert))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                foreign.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        th.join(timeout=30)
        listener.close()


def test_certificate_names_and_supernode_keys():
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    with tempfile.TemporaryDirectory() as d:
        tls = deploy.make_tls_files(d)
        cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
        ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert sorted(p.name for p in Path(d).iterdir()) == ["ca.crt", "server.crt", "server.key"]  # no CA key kept
        private, public = deploy.make_supernode_key(d, "node0")
        key = load_ssh_private_key(private.read_bytes(), None)
        pub = load_ssh_public_key(public.read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert key.public_key().public_numbers() == pub.public_numbers()
        assert private.stat().st_mode & 0o077 == 0
        with pytest.raises(ValueError, match="name"):
            deploy.make_supernode_key(d, "../x")


def test_commands_are_secure_unless_insecure_is_asked_for(tmp_path):
    tls = deploy.TlsFiles(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    link = deploy.superlink_command("flower-superlink", 9000, tls)
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert link[link.index("--ssl-ca-certfile") + 1] == str(tls.ca_cert)
    node = deploy.supernode_command("flower-supernode", 9000, 9001, "partition-id=0", tls, tmp_path / "k")
    assert "--insecure" not in node and node[node.index("--auth-supernode-private-key") + 1] == str(tmp_path / "k")
    assert node[node.index("--root-certificates") + 1] == str(tls.ca_cert)
    with pytest.raises(ValueError, match="private_key"):
        deploy.supernode_command("flower-supernode", 9000, 9001, "partition-id=0", tls, None)
    assert "--insecure" in deploy.superlink_command("flower-superlink", 9000, None)
    assert "--insecure" in deploy.supernode_command("flower-supernode", 9000, 9001, "partition-id=0", None, None)
    assert "insecure = true" in deploy.connection_toml(9000, None)
    secure_toml = deploy.connection_toml(9000, tls)
    assert "insecure" not in secure_toml and f"root-certificates = '{tls.ca_cert}'" in secure_toml


def _exe(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


def _start_rogue(tmp_path: Path, name: str, port: int, ca_cert: Path, key: Path | None) -> subprocess.Popen:
    cmd = [_exe("flower-supernode"), "--root-certificates", str(ca_cert),
           "--superlink", f"127.0.0.1:{port}", "--node-config", "partition-id=0 num-partitions=2",
           "--host", "127.0.0.1", "--port", str(deploy.free_port()), "--max-retries", "3", "--max-wait-time", "60"]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    env = {**os.environ, **deploy.QUIET_ENV, "FLWR_HOME": str(tmp_path / f"{name}_home")}
    with open(tmp_path / f"{name}.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_authenticated_tls_deployment_calibrates_and_refuses_unregistered_supernodes(tmp_path, free_port):
    """Secure by default: 2 registered SuperNodes calibrate over TLS; a SuperNode with an unregistered key (and
    one with no key) is refused by the SuperLink and never takes part in the run."""
    out, work, port = tmp_path / "results", tmp_path / "work", free_port()
    cmd = [sys.executable, "-m", "flwr_gcfcp.app.deploy", "--num-supernodes", "2", "--results-dir", str(out),
           "--superlink-port", str(port), "--workdir", str(work), "--run-config", "num-server-rounds=1",
           "--timeout", "400"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, not an installed copy
    runner = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(runner.stdout.readline, "")), daemon=True)
    reader.start()  # drain the pipe while the rogues run, so the deployment never blocks on a full pipe
    rogues: list[subprocess.Popen] = []
    try:
        ca_cert = work / "tls" / "ca.crt"
        deadline = time.monotonic() + 120
        while not ca_cert.exists() and time.monotonic() < deadline and runner.poll() is None:
            time.sleep(0.2)
        deploy.wait_port(port, max(1.0, deadline - time.monotonic()), what="the SuperLink")
        rogue_key, _ = deploy.make_supernode_key(tmp_path / "rogue_keys", "rogue")  # never registered
        rogues = [_start_rogue(tmp_path, "rogue", port, ca_cert, rogue_key),
                  _start_rogue(tmp_path, "keyless", port, ca_cert, None)]
        for rogue in rogues:
            rogue.wait(timeout=120)
        runner.wait(timeout=460)
        reader.join(timeout=30)
    finally:
        deploy.stop_processes([p for p in [runner, *rogues] if p.poll() is None])
    log = "".join(lines)
    assert runner.returncode == 0, log[-4000:]
    assert "TLS, SuperNode authentication" in log and "stopped 4 process group(s)" in log
    for rogue, name in zip(rogues, ("rogue", "keyless")):
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert rogue.returncode != 0, text[-2000:]
        assert "could not establish a connection to the SuperLink" in text, text[-2000:]
    link_log = (work / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in link_log  # the unregistered key
    assert "ApiError:2001" in link_log  # the keyless node's self-registration: disabled under authentication
    # only the registered keys' nodes took part: their node ids are the calibration clients
    registered = {int(m) for m in re.findall(r"registered SuperNode \d public key \S+ as node (\d+)", log)}
    assert len(registered) == 2
    results = json.loads((latest_run(out) / "results.json").read_text())
    assert {c["node_id"] for c in results["calibration_clients"]} == registered
    assert not results["excluded_clients"]
    assert set(results["methods"]) == {"split_cp", "fedcp", "gcfcp_delta250"}
    for f in ("superlink.log", "supernode0.log", "supernode1.log"):
        assert "Exit Code" not in (work / f).read_text(errors="replace"), f
