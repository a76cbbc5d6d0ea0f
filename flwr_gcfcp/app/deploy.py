"""Run the app on Flower's deployment engine on this machine (loopback only).

    python -m flwr_gcfcp.app.deploy --num-supernodes 2 [--app DIR] [--results-dir DIR] [--run-config "k=v ..."]

Starts one ``flower-superlink`` and N ``flower-supernode`` processes on 127.0.0.1 (free ports unless given), each
SuperNode with node config ``partition-id=i num-partitions=N``; writes a private ``FLWR_HOME`` whose
``config.toml`` names a ``localdeploy`` connection to that SuperLink; runs ``flwr run <app> localdeploy --stream``
from a neutral temporary directory; waits for ``results.json``; and always (try/finally) stops every process it
started, by process group, plus any ``flower-superexec`` / ``flwr-clientapp`` descendants they spawned (those run
in their own sessions). Exit status 0 only when results.json was written.
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
from pathlib import Path

import psutil

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
    args = ap.parse_args(argv)

    n = int(args.num_supernodes)
    if n < 1:
        ap.error(f"--num-supernodes must be >= 1, got {n}")
    app_dir = Path(args.app).resolve() if args.app else Path(__file__).resolve().parents[2]
    if not (app_dir / "pyproject.toml").is_file():
        ap.error(f"--app {app_dir} has no pyproject.toml")
    results_dir = Path(args.results_dir).resolve() if args.results_dir else Path.cwd() / "results-deploy"
    results_json = results_dir / "results.json"
    if results_json.exists():
        results_json.unlink()

    keep = args.workdir is not None
    work = Path(args.workdir).resolve() if keep else Path(tempfile.mkdtemp(prefix="gcfcp-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    flwr_home = work / "flwr_home"
    flwr_home.mkdir(exist_ok=True)
    neutral = work / "cwd"
    neutral.mkdir(exist_ok=True)
    link_port = args.superlink_port or free_port()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "localdeploy"\n\n'
        f'[superlink.localdeploy]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
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
        log = open(work / "superlink.log", "wb")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [exe("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
                 "--disable-runtime-dependency-installation"],
                cwd=neutral, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )
        wait_port(link_port, 60, procs[0], "flower-superlink")
        print(f"[deploy] SuperLink pid {procs[0].pid} on 127.0.0.1:{link_port}", flush=True)
        for i in range(n):
            port = args.supernode_base_port + i if args.supernode_base_port else free_port()
            log = open(work / f"supernode{i}.log", "wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [exe("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                     "--node-config", f"partition-id={i} num-partitions={n}",
                     "--host", "127.0.0.1", "--port", str(port)],
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
            if results_json.exists() and _complete(results_json):
                break
            if runner.poll() is not None and not results_json.exists():
                # --stream may return before the ServerApp finishes writing: give it a moment
                grace = time.monotonic() + 30
                while time.monotonic() < grace and not results_json.exists():
                    time.sleep(0.5)
                break
            for p in procs[1 : n + 1]:
                if p.poll() is not None:
                    print(f"[deploy] warning: SuperNode pid {p.pid} exited with {p.returncode}", flush=True)
            time.sleep(0.5)
        if results_json.exists() and _complete(results_json):
            print(f"[deploy] results: {results_json} ({time.monotonic() - t0:.1f} s)", flush=True)
            return 0
        print(f"[deploy] no results.json after {time.monotonic() - t0:.1f} s; logs in {work}", flush=True)
        _tail_logs(work)
        return 1
    finally:
        stop_processes(procs)
        for fh in logs:
            fh.close()
        print(f"[deploy] stopped {len(procs)} process group(s)", flush=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _complete(path: Path) -> bool:
    import json

    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _tail_logs(work: Path, n_lines: int = 30) -> None:
    for f in sorted(work.glob("*.log")):
        lines = f.read_text(errors="replace").splitlines()[-n_lines:]
        print(f"----- {f.name} -----\n" + "\n".join(lines), flush=True)


def _toml_str(s: str) -> str:
    return "'" + s.replace("'", "") + "'"


if __name__ == "__main__":
    sys.exit(main())
