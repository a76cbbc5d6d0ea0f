"""Run folders of the bundled app, and a check of a run's outcome that a script can use.

``flwr run`` exits 0 even when the ServerApp fails (its log says ``Exit Code: 700``). The bundled ServerApp
therefore records every run in its own folder of ``results-dir``::

    <results-dir>/<UTC start time>-<dataset>-<config hash>/   run_config.json, status.json, results.json, ...
    <results-dir>/latest -> the folder of the most recent run

``status.json`` says ``"running"`` from the start, then ``"ok"`` or ``"failed"`` with the reason (also when the
run config itself was invalid, if its ``results-dir`` is usable). The check::

    python -m flwr_gcfcp.app.status RESULTS_DIR [--since EPOCH_SECONDS] [--wait SECONDS]

prints one line and exits 0 when the latest run (or the run folder given) succeeded, 1 when it failed, 2 when it
is still running, when there is no run (or none started at or after ``--since``) or its status is unreadable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LATEST",
    "RUN_CONFIG_FILE",
    "STATUS_FILE",
    "check",
    "config_hash",
    "create_run_dir",
    "latest_run",
    "read_status",
    "write_status",
]

STATUS_FILE = "status.json"
RUN_CONFIG_FILE = "run_config.json"
LATEST = "latest"
_EXIT = {"ok": 0, "failed": 1}


def config_hash(run_config: Mapping[str, Any]) -> str:
    """8 hex digits identifying a run config (``results-dir`` left out: it does not change the results)."""
    items = {str(k): v for k, v in run_config.items() if k != "results-dir"}
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(text)).strip("-")[:40] or "run"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=1, default=str))
    tmp.replace(path)  # atomic: a watcher never reads a half-written file


def create_run_dir(
    results_dir: str | os.PathLike[str], dataset: str, run_config: Mapping[str, Any], now: float | None = None
) -> Path:
    """Create this run's folder under ``results_dir``, write ``run_config.json`` and ``status.json`` ("running"),
    and point ``latest`` at it.

    Raises
    ------
    ValueError
        ``results_dir`` is not absolute, cannot be created or is not writable (naming it and the OS error).
    """
    base = Path(results_dir)
    if not base.is_absolute():
        raise ValueError(f"run config: results-dir must be an absolute path, got {str(results_dir)!r}")
    started = time.time() if now is None else float(now)
    stem = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-{_slug(dataset)}-{config_hash(run_config)}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            run_dir = base / (stem if i == 1 else f"{stem}-{i}")
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise OSError(f"1000 run folders named {stem}* exist already")
        _write_json(run_dir / RUN_CONFIG_FILE, dict(run_config))
        write_status(run_dir, "running", started_at=started)
        link = base / LATEST
        if link.exists() and not link.is_symlink():
            raise OSError(f"{str(link)!r} exists and is not the symlink this app maintains")
        tmp = base / f".{LATEST}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(run_dir.name, tmp)
        tmp.replace(link)
    except OSError as exc:
        raise ValueError(f"run config: results-dir={str(results_dir)!r} is not usable: {exc}") from exc
    return run_dir


def write_status(run_dir: str | os.PathLike[str], status: str, reason: str = "", **extra: Any) -> None:
    """Write ``status.json`` (``running``/``ok``/``failed``, the reason, times) atomically, keeping earlier keys."""
    if status not in ("running", "ok", "failed"):
        raise ValueError(f"status must be 'running', 'ok' or 'failed', got {status!r}")
    path = Path(run_dir) / STATUS_FILE
    data: dict[str, Any] = {}
    if path.is_file():
        data = json.loads(path.read_text())
    data.update(extra)
    data.update(status=status, reason=reason, updated_at=time.time(), run_dir=str(Path(run_dir)))
    _write_json(path, data)


def latest_run(path: str | os.PathLike[str]) -> Path | None:
    """The run folder ``path`` designates: itself when it holds ``status.json``, else its ``latest`` run."""
    p = Path(path)
    if (p / STATUS_FILE).is_file():
        return p
    link = p / LATEST
    return link.resolve() if link.exists() else None


def read_status(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``status.json`` of the run ``path`` designates (see :func:`latest_run`)."""
    run_dir = latest_run(path)
    if run_dir is None:
        raise FileNotFoundError(f"no run recorded in {str(path)!r} (no {STATUS_FILE} and no {LATEST!r} link)")
    return json.loads((run_dir / STATUS_FILE).read_text())


def check(path: str | os.PathLike[str], since: float | None = None, wait: float = 0.0) -> tuple[int, str]:
    """(exit code, one line) for the run ``path`` designates: 0 ok, 1 failed, 2 running / none / unreadable.

    ``since``: only a run started at or after this time (seconds since the epoch) counts. ``wait``: seconds to
    wait while the run is still running or not there yet.
    """
    deadline = time.monotonic() + max(0.0, float(wait))
    while True:
        try:
            st = read_status(path)
            started = float(st.get("started_at", 0.0))
            if since is not None and started < since:
                code, line = 2, f"no run started since {since:.0f}: the latest ({st.get('run_dir')}) is older"
            else:
                state = str(st.get("status"))
                code = _EXIT.get(state, 2)
                line = f"{state}: {st.get('run_dir')}" + (f": {st['reason']}" if st.get("reason") else "")
        except (OSError, ValueError) as exc:
            code, line = 2, f"unknown: {exc}"
        if code != 2 or time.monotonic() >= deadline:
            return code, line
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m flwr_gcfcp.app.status",
        description="Exit 0 if the latest run of the bundled app in RESULTS_DIR succeeded, 1 if it failed, 2 if "
        "it is still running or there is none.",
    )
    ap.add_argument("results_dir", help="the run's results-dir (its 'latest' run is checked) or one run folder")
    ap.add_argument("--since", type=float, default=None, help="ignore runs started before this epoch time")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a running run to finish")
    args = ap.parse_args(argv)
    code, line = check(args.results_dir, since=args.since, wait=args.wait)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
