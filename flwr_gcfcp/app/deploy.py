"""Run the app on Flower's deployment engine on this machine (loopback only).

    python -m flwr_gcfcp.app.deploy --num-supernodes 2 [--insecure] [--app DIR] [--results-dir DIR] [--run-config "k=v ..."]

Starts one ``flower-superlink`` and N ``flower-supernode`` processes on 127.0.0.1 (free ports unless given), each
SuperNode with node config ``partition-id=i num-partitions=N``; writes a private ``FLWR_HOME`` whose
``config.toml`` names a ``localdeploy`` connection to that SuperLink; runs ``flwr run <app> localdeploy --stream``
from a neutral temporary directory; waits for the run's own folder under ``--results-dir`` (the ``latest`` link)
to report ``ok`` or ``failed`` in its ``status.json``; and always (try/finally) stops every process it started, by
process group, plus any ``flower-superexec`` / ``flwr-clientapp`` descendants they spawned (those run in their own
sessions). Exit status 0 only when the run succeeded.

Secure by default: a fresh CA and a server certificate for ``127.0.0.1`` / ``localhost`` (:func:`make_tls_files`)
give the SuperLink TLS, and SuperNode authentication is on (``--enable-supernode-auth``): every SuperNode gets its
own EC P-384 key pair (:func:`make_supernode_key`), its public key is registered with ``flwr supernode register``
before it starts, and the SuperLink refuses any SuperNode whose key was not registered. ``--insecure`` runs the
old plaintext, unauthenticated deployment. See docs/security.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from flwr_gcfcp.app import status as run_status

QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


def descendants(pids: list[int]) -> list[int]:
    """All living descendants of ``pids``."""
    out: list[int] = []
    for pid in pids:
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            continue
        out += [c.pid for c in children if c.pid not in out]
    return out


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_processes(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM then SIGKILL every started process group and every descendant, by PID."""
    leaders = [p.pid for p in procs]
    extra = descendants(leaders)
    for pid in leaders:
        _signal(pid, signal.SIGTERM, group=True)
    for pid in extra:
        _signal(pid, signal.SIGTERM, group=False)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    extra += [d for d in descendants(leaders) if d not in extra]
    while time.monotonic() < deadline and any(_alive(pid) for pid in extra):
        time.sleep(0.1)
    for pid in leaders:
        _signal(pid, signal.SIGKILL, group=True)
    for pid in extra:
        if _alive(pid):
            _signal(pid, signal.SIGKILL, group=False)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def pids_with_arg(fragment: str) -> list[int]:
    """PIDs (other than this one) whose command line contains ``fragment``, e.g. a private FLWR_HOME path."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] != os.getpid() and fragment in cmd:
            out.append(int(proc.info["pid"]))
    return out


def stop_pid_trees(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, the given PIDs and all their descendants; return the PIDs signalled."""
    tree = list(dict.fromkeys(list(pids) + descendants(list(pids))))
    for pid in tree:
        _signal(pid, signal.SIGTERM, group=False)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)
    for pid in tree:
        if _alive(pid):
            _signal(pid, signal.SIGKILL, group=False)
    return tree


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a loopback TLS setup: the CA certificate, the server certificate and its private key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_tls_files(directory: str | Path, days: int = 30) -> TlsFiles:
    """Create a CA and a server certificate for ``127.0.0.1`` / ``localhost`` signed by it (EC P-384, SHA-384).

    Parameters
    ----------
    directory : str or Path
        Where to write ``ca.crt``, ``server.crt`` and ``server.key`` (the key with mode 0600). The CA's private
        key is never written: nothing else can be signed with it once this returns.
    days : int, default 30
        Validity of both certificates.

    Returns
    -------
    TlsFiles
        Paths of the three files.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise ValueError(f"days must be a positive int, got {days!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flwr-gcfcp loopback CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    files = TlsFiles(out / "ca.crt", out / "server.crt", out / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        files.server_key,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return files


def make_supernode_key(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create a SuperNode authentication key pair (EC P-384, OpenSSH format, as ``flower-supernode`` reads it).

    Returns
    -------
    (private_key, public_key)
        Paths ``<directory>/<name>`` (mode 0600, for ``--auth-supernode-private-key``) and ``<name>.pub`` (for
        ``flwr supernode register``).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a plain file name, got {name!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return private, public


def connection_toml(port: int, tls: TlsFiles | None) -> str:
    """``$FLWR_HOME/config.toml`` with a ``localdeploy`` connection to ``127.0.0.1:port`` (TLS unless ``tls`` is None)."""
    head = f'[superlink]\ndefault = "localdeploy"\n\n[superlink.localdeploy]\naddress = "127.0.0.1:{port}"\n'
    if tls is None:
        return head + "insecure = true\n"
    return head + f"root-certificates = {_toml_str(str(tls.ca_cert))}\n"


def superlink_command(exe: str, port: int, tls: TlsFiles | None) -> list[str]:
    """``flower-superlink`` on 127.0.0.1:port: TLS and SuperNode authentication, or ``--insecure`` (tls None)."""
    security = ["--insecure"] if tls is None else [
        "--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key), "--enable-supernode-auth",
    ]
    return [exe, *security, "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"]


def supernode_command(exe: str, link_port: int, port: int, node_config: str, tls: TlsFiles | None,
                      private_key: Path | None) -> list[str]:
    """``flower-supernode`` for the SuperLink on 127.0.0.1:link_port (``--insecure`` when tls is None)."""
    if tls is None:
        security = ["--insecure"]
    else:
        if private_key is None:
            raise ValueError("a TLS SuperNode needs private_key (SuperNode authentication is on)")
        security = ["--root-certificates", str(tls.ca_cert), "--auth-supernode-private-key", str(private_key)]
    return [exe, *security, "--superlink", f"127.0.0.1:{link_port}", "--node-config", node_config,
            "--host", "127.0.0.1", "--port", str(port)]


def register_supernode(flwr_exe: str, public_key: Path, env: dict[str, str], cwd: Path, timeout: float = 60.0) -> str:
    """Register a SuperNode's public key with the ``localdeploy`` SuperLink; return the node id it was given."""
    import json

    proc = subprocess.run(
        [flwr_exe, "supernode", "register", str(public_key), "localdeploy", "--format", "json"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    try:
        reply = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        reply = {}
    if proc.returncode != 0 or not reply.get("success"):
        raise RuntimeError(
            f"flwr supernode register {public_key.name} failed (exit {proc.returncode}): "
            f"{(proc.stdout + proc.stderr).strip()[-1000:]}"
        )
    return str(reply["node-id"])


def default_client_classes(n: int, n_classes: int = 10) -> str:
    """Split the labels 0..n_classes-1 into n contiguous, disjoint label sets."""
    if not 1 <= n <= n_classes:
        raise ValueError(f"--num-supernodes must be in [1, {n_classes}] for the default split, got {n}")
    bounds = [round(i * n_classes / n) for i in range(n + 1)]
    return ";".join(",".join(str(c) for c in range(bounds[i], bounds[i + 1])) for i in range(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flwr_gcfcp.app.deploy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-supernodes", type=int, default=2)
    ap.add_argument("--app", default=None, help="app directory (default: the repository holding this package)")
    ap.add_argument("--results-dir", default=None, help="absolute results directory (default: ./results-deploy)")
    ap.add_argument("--run-config", default="", help='extra run config, e.g. "num-server-rounds=2 alpha=0.2"')
    ap.add_argument("--superlink-port", type=int, default=0, help="0 = pick a free port")
    ap.add_argument("--supernode-base-port", type=int, default=0, help="0 = free ports")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--workdir", default=None, help="keep logs and FLWR_HOME here (default: a temp dir, removed)")
    ap.add_argument(
        "--insecure", action="store_true",
        help="no TLS and no SuperNode authentication (default: TLS with a fresh loopback CA, and only SuperNodes "
             "whose generated keys were registered may join)",
    )
    args = ap.parse_args(argv)

    n = int(args.num_supernodes)
    if n < 1:
        ap.error(f"--num-supernodes must be >= 1, got {n}")
    app_dir = Path(args.app).resolve() if args.app else Path(__file__).resolve().parents[2]
    if not (app_dir / "pyproject.toml").is_file():
        ap.error(f"--app {app_dir} has no pyproject.toml")
    results_dir = Path(args.results_dir).resolve() if args.results_dir else Path.cwd() / "results-deploy"
    previous_run = run_status.latest_run(results_dir)  # this run gets its own folder; wait for a new one

    def finished_run() -> Path | None:
        """The new run's folder once its status.json says ok or failed."""
        run = run_status.latest_run(results_dir)
        if run is None or run == previous_run:
            return None
        try:
            return run if run_status.read_status(run)["status"] in ("ok", "failed") else None
        except (OSError, ValueError, KeyError):
            return None

    keep = args.workdir is not None
    work = Path(args.workdir).resolve() if keep else Path(tempfile.mkdtemp(prefix="gcfcp-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    flwr_home = work / "flwr_home"
    flwr_home.mkdir(exist_ok=True)
    neutral = work / "cwd"
    neutral.mkdir(exist_ok=True)
    link_port = args.superlink_port or free_port()
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(flwr_home)}
    bindir = Path(sys.executable).parent

    def exe(name: str) -> str:
        cand = bindir / name
        return str(cand) if cand.exists() else (shutil.which(name) or name)

    # run config: client-classes must have one entry per SuperNode
    extra = args.run_config.strip()
    overrides = [f"results-dir={_toml_str(str(results_dir))}"]
    if "client-classes" not in extra:
        overrides.append(f"client-classes={_toml_str(default_client_classes(n))}")
    if "min-calibration-clients" not in extra:
        overrides.append(f"min-calibration-clients={min(2, n)}")
    run_config = " ".join(overrides + ([extra] if extra else []))

    procs: list[subprocess.Popen] = []
    logs = []
    t0 = time.monotonic()
    try:
        tls = None if args.insecure else make_tls_files(work / "tls")
        node_keys = [None] * n if tls is None else [make_supernode_key(work / "keys", f"supernode{i}") for i in range(n)]
        (flwr_home / "config.toml").write_text(connection_toml(link_port, tls))
        log = open(work / "superlink.log", "wb")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                superlink_command(exe("flower-superlink"), link_port, tls),
                cwd=neutral, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )
        wait_port(link_port, 60, procs[0], "flower-superlink")
        mode = "insecure (no TLS, no SuperNode authentication)" if tls is None else "TLS, SuperNode authentication"
        print(f"[deploy] SuperLink pid {procs[0].pid} on 127.0.0.1:{link_port}, {mode}", flush=True)
        for i, keys in enumerate(node_keys):
            if keys is not None:
                node_id = register_supernode(exe("flwr"), keys[1], env, neutral)
                print(f"[deploy] registered SuperNode {i} public key {keys[1].name} as node {node_id}", flush=True)
        for i, keys in enumerate(node_keys):
            port = args.supernode_base_port + i if args.supernode_base_port else free_port()
            log = open(work / f"supernode{i}.log", "wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    supernode_command(exe("flower-supernode"), link_port, port, f"partition-id={i} num-partitions={n}",
                                      tls, None if keys is None else keys[0]),
                    cwd=neutral, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )
            print(f"[deploy] SuperNode {i} pid {procs[-1].pid} (runtime port {port})", flush=True)
        cmd = [exe("flwr"), "run", str(app_dir), "localdeploy", "--stream", "--run-config", run_config]
        print("[deploy] " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        log = open(work / "flwr_run.log", "wb")
        logs.append(log)
        runner = subprocess.Popen(cmd, cwd=neutral, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(runner)
        deadline = t0 + args.timeout
        import threading

        def pump() -> None:
            assert runner.stdout is not None
            for line in iter(runner.stdout.readline, b""):
                log.write(line)
                sys.stdout.write(line.decode(errors="replace"))
                sys.stdout.flush()

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        while time.monotonic() < deadline:
            if finished_run() is not None:
                break
            if runner.poll() is not None:
                # --stream may return before the ServerApp finishes writing: give it a moment
                grace = time.monotonic() + 30
                while time.monotonic() < grace and finished_run() is None:
                    time.sleep(0.5)
                break
            for p in procs[1 : n + 1]:
                if p.poll() is not None:
                    print(f"[deploy] warning: SuperNode pid {p.pid} exited with {p.returncode}", flush=True)
            time.sleep(0.5)
        run = finished_run()
        if run is not None and run_status.check(run)[0] == 0:
            print(f"[deploy] results: {run / 'results.json'} ({time.monotonic() - t0:.1f} s)", flush=True)
            return 0
        if run is not None:
            print(f"[deploy] the run failed: {run_status.check(run)[1]}; logs in {work}", flush=True)
        else:
            print(f"[deploy] no finished run in {results_dir} after {time.monotonic() - t0:.1f} s; logs in {work}",
                  flush=True)
        _tail_logs(work)
        return 1
    except RuntimeError as err:  # a process that did not start, or a key the SuperLink did not register
        print(f"[deploy] error: {err}; logs in {work}", flush=True)
        _tail_logs(work)
        return 1
    finally:
        stop_processes(procs)
        for fh in logs:
            fh.close()
        print(f"[deploy] stopped {len(procs)} process group(s)", flush=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _tail_logs(work: Path, n_lines: int = 30) -> None:
    for f in sorted(work.glob("*.log")):
        lines = f.read_text(errors="replace").splitlines()[-n_lines:]
        print(f"----- {f.name} -----\n" + "\n".join(lines), flush=True)


def _toml_str(s: str) -> str:
    return "'" + s.replace("'", "") + "'"


if __name__ == "__main__":
    sys.exit(main())
