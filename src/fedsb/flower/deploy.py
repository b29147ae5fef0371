"""A local Flower deployment for trying fedsb out: one SuperLink and N SuperNodes on 127.0.0.1.

Insecure by default (loopback only). With ``secure=True`` (``fedsb flower deploy --tls``) it runs the
multi-machine setup on one machine: throwaway certificates (:mod:`fedsb.flower.credentials`), TLS on every
connection, ``--enable-supernode-auth`` and each SuperNode's public key registered with
``flwr supernode register`` before it starts, so only those SuperNodes can join.

Every process is started by this module, remembered by pid, and killed by pid (SIGTERM, then SIGKILL) when
the deployment closes, also on errors and Ctrl-C. Nothing is installed at run time
(``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` plus ``--disable-runtime-dependency-installation``):
the SuperLink and SuperNodes run fedsb from the current Python environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedsb.environment import OFFLINE_ENV
from fedsb.errors import FedsbError
from fedsb.flower.credentials import Credentials, make_credentials

APP_NAME = "fedsb-flower-app"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def toml_value(v: Any) -> str:
    """One TOML value (for ``flwr run --run-config k=v``), written by tomli-w like every other TOML fedsb writes."""
    return tomli_w.dumps({"v": v if isinstance(v, (bool, int, float)) else str(v)}).partition(" = ")[2].strip()


def write_app(app_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write the Flower App (``pyproject.toml``) that ``flwr run`` builds into a FAB.

    ``config`` becomes ``[tool.flwr.app.config]``: fedsb's dotted keys plus ``flower.*`` keys. ``flwr run
    --run-config`` can only override keys listed here.
    """
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"out": "", "flower.config-file": "", "flower.wire-dtype": "float32", "flower.secagg": False,
           "flower.resume": False, "flower.overwrite": False, **(config or {})}
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{APP_NAME}"', 'version = "1.0.0"',
        'description = "fedsb: federated LoRA-SB (Fed-SB) and baselines on Flower"', 'license = "Apache-2.0"',
        "# The SuperLink/SuperNodes run fedsb from their own environment (pip install fedsb) with runtime",
        "# dependency installation disabled; listing fedsb here would make Flower install it with uv.",
        'dependencies = ["flwr[simulation]==1.41.0"]', "",
        "[tool.hatch.build.targets.wheel]", 'packages = ["."]', "",
        "[tool.flwr.app]", 'publisher = "fedsb"', "",
        "[tool.flwr.app.components]", 'serverapp = "fedsb.flower.serverapp:app"', 'clientapp = "fedsb.flower.clientapp:app"', "",
        tomli_w.dumps({"tool": {"flwr": {"app": {"config": {k: v for k, v in cfg.items() if v is not None}}}}}),
    ]
    (app_dir / "pyproject.toml").write_text("\n".join(lines), encoding="utf-8")
    return app_dir


def _bin(name: str) -> str:
    """The Flower executable next to this Python (the venv's), else on PATH."""
    cand = Path(sys.executable).with_name(name)
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise FedsbError(f"{name} not found; install Flower in this environment: pip install 'flwr[simulation]==1.41.0'")
    return found


def descendants(pid: int) -> list[int]:
    """Child pids of ``pid``, recursively (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


@dataclass
class LocalDeployment:
    """SuperLink + N SuperNodes on loopback (insecure, or TLS + SuperNode auth with ``secure``). Use as a
    context manager: processes die on exit."""

    supernodes: int
    home: Path
    data_paths: list[str] | None = None
    secure: bool = False
    credentials: Credentials | None = None
    pins: dict[str, str] = field(default_factory=dict)  # node-config pins (model-name, task): see clientapp.check_pins
    state_root: Path | None = None  # where SuperNode i keeps its own tensors: <state_root>/supernode<i> (default: under home)
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def env(self, home: Path) -> dict[str, str]:
        # The SuperLink and SuperNodes start flower-superexec / flwr-clientapp by name: put this venv's bin
        # first on PATH so they are found when fedsb runs from a venv that is not activated (make test).
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "FLWR_HOME": str(home), "PATH": path}

    def _spawn(self, args: list[str], name: str, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        log = self.home / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as fh:
            # New session: a Ctrl-C in the terminal does not reach the children before we kill them in order.
            p = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env(home), start_new_session=True)
        self.procs.append(p)
        self.logs.append(log)

    def start(self, ready_timeout: float = 60.0) -> LocalDeployment:
        self.ports = free_ports(1 + self.supernodes)
        link = self.ports[0]
        if self.secure:
            self.credentials = c = make_credentials(self.home / "credentials", self.supernodes)
            security = ["--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert),
                        "--ssl-keyfile", str(c.server_key), "--enable-supernode-auth"]
        else:
            security = ["--insecure"]
        self._spawn([_bin("flower-superlink"), *security, "--host", "127.0.0.1", "--port", str(link),
                     "--disable-runtime-dependency-installation"], "superlink", self.home / "superlink")
        self.wait_ready(ready_timeout)
        self.write_cli_config()
        for i in range(self.supernodes):
            node_cfg = self.node_config(i)
            security = ["--insecure"]
            if self.credentials:
                key = self.credentials.node_keys[i]
                self.register(Path(f"{key}.pub"))
                security = ["--root-certificates", str(self.credentials.ca_cert), "--auth-supernode-private-key", str(key)]
            self._spawn([_bin("flower-supernode"), *security, "--superlink", self.address, "--host", "127.0.0.1",
                         "--port", str(self.ports[1 + i]), "--node-config", node_cfg], f"supernode{i}", self.home / f"supernode{i}")
        return self

    def node_config(self, i: int) -> str:
        """SuperNode ``i``'s ``--node-config``: its partition, its own disk for the tensors it never sends, its own
        data file if any, and the pins with which it refuses a server config naming another model or task."""
        state = self.state_root / f"supernode{i}" if self.state_root else self.home / f"supernode{i}" / "state"
        parts = [f"partition-id={i}", f"num-partitions={self.supernodes}", f"state-dir={toml_value(str(state))}"]
        if self.data_paths:
            parts.append(f"data-path={toml_value(self.data_paths[i])}")
        parts += [f"{k}={toml_value(v)}" for k, v in self.pins.items()]
        return " ".join(parts)

    def register(self, public_key: Path) -> None:
        """``flwr supernode register KEY.pub``: allow the SuperNode holding the matching private key to join."""
        args = [_bin("flwr"), "supernode", "register", str(public_key), "local-deployment"]
        res = subprocess.run(args, capture_output=True, text=True, env=self.env(self.home / "cli"), timeout=60)
        if res.returncode != 0 or "registered successfully" not in res.stdout:
            raise FedsbError(f"flwr supernode register {public_key.name} failed: {(res.stdout + res.stderr).strip()[-300:]}")

    def wait_ready(self, timeout: float) -> None:
        scheme = "https" if self.credentials else "http"
        context = ssl.create_default_context(cafile=str(self.credentials.ca_cert)) if self.credentials else None
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.procs[0].poll() is not None:
                raise FedsbError(f"flower-superlink exited with code {self.procs[0].returncode}; see {self.logs[0]}")
            try:
                with urllib.request.urlopen(f"{scheme}://{self.address}/health", timeout=2, context=context):
                    return
            except OSError:
                time.sleep(0.3)
        raise FedsbError(f"the SuperLink did not answer on {self.address} within {timeout:.0f} s; see {self.logs[0]}")

    def write_cli_config(self) -> Path:
        """``$FLWR_HOME/config.toml`` for the ``flwr`` CLI, naming this SuperLink as connection ``local-deployment``."""
        cli = self.home / "cli"
        cli.mkdir(parents=True, exist_ok=True)
        path = cli / "config.toml"
        security = f'root-certificates = "{self.credentials.ca_cert}"' if self.credentials else "insecure = true"
        path.write_text(f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
                        f'address = "{self.address}"\n{security}\n', encoding="utf-8")
        return path

    def flwr_run(self, app_dir: str | Path, run_config: dict[str, Any], timeout: float = 1800.0) -> subprocess.CompletedProcess:
        """``flwr run APP local-deployment --stream --run-config ...``; streams the ServerApp log to our stdout."""
        over = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
        args = [_bin("flwr"), "run", str(app_dir), "local-deployment", "--stream"] + (["--run-config", over] if over else [])
        log = self.home / "logs" / "flwr-run.log"
        with open(log, "wb") as fh:
            p = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env(self.home / "cli"), start_new_session=True)
            self.procs.append(p)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise FedsbError(f"flwr run did not finish within {timeout:.0f} s; see {log}") from None
        return subprocess.CompletedProcess(args, rc, log.read_text(errors="replace"), "")

    def stop(self) -> list[int]:
        """SIGTERM every process we started (newest first) and their children (ServerApp, ClientApp runners),
        SIGKILL what is left after 5 s. Returns the pids signalled."""
        ours = [p.pid for p in reversed(self.procs)]
        kids = [c for pid in ours for c in descendants(pid)]
        signalled = []
        for pid in ours + kids:
            if _signal(pid, signal.SIGTERM):
                signalled.append(pid)
        deadline = time.time() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        for pid in kids:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        return signalled

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def deploy_run(cfg: Any, options: Any, supernodes: int, home: str | Path | None = None, keep_home: bool = False,
               timeout: float = 1800.0, resume: bool = False, secure: bool = False) -> dict[str, Any]:
    """Start a local deployment, ``flwr run`` the fedsb app on it, stop every process; returns the run's summary.

    ``cfg.federation.clients`` must equal ``supernodes`` (one partition per SuperNode). The resolved config
    travels to the ServerApp as a TOML file (``flower.config-file``), which works because everything runs on
    this machine; on several machines put the keys in the app's ``[tool.flwr.app.config]`` instead.
    """
    import json
    import tempfile

    from fedsb.io.rundir import atomic_write_text, to_toml

    if cfg.federation.clients != supernodes:
        raise FedsbError(f"federation.clients = {cfg.federation.clients} but --supernodes {supernodes}; they must be equal")
    if not cfg.out:
        raise FedsbError("deploy_run needs cfg.out (the run directory)")
    out = Path(cfg.out).resolve()
    cfg = cfg.model_copy(update={"out": str(out)})
    base = Path(home) if home else Path(tempfile.mkdtemp(prefix="fedsb-flower-"))
    base.mkdir(parents=True, exist_ok=True)
    cfg_path = base / "fedsb-config.toml"
    atomic_write_text(cfg_path, to_toml(cfg.to_dict()))
    app_dir = write_app(base / "app")
    # overwrite: the caller (``fedsb flower deploy``) has already refused a non-empty --out without --overwrite
    run_config: dict[str, Any] = {"flower.config-file": str(cfg_path), "out": str(out), "flower.resume": resume,
                                  "flower.overwrite": True,
                                  "flower.wire-dtype": options.wire_dtype, "flower.secagg": options.secagg}
    t0 = time.time()
    # Every SuperNode pins the model and task it agreed to train: a server config naming others is refused.
    pins = {"model-name": cfg.model.name, "task": str(Path(cfg.task.path).resolve()) if cfg.task.path else cfg.task.name}
    # Every SuperNode keeps the tensors it never sends (FedSA-LoRA's B) under the run directory, which outlives
    # this deployment's home, so that --resume finds them.
    dep = LocalDeployment(supernodes, base, secure=secure, pins=pins, state_root=out / "node-state")
    try:
        dep.start()
        t_up = time.time() - t0
        res = dep.flwr_run(app_dir, run_config, timeout=timeout)
    finally:
        dep.stop()
    wall = time.time() - t0
    summary_path = out / "summary.json"
    if res.returncode != 0 or not summary_path.is_file():
        tail = "\n".join(res.stdout.splitlines()[-15:])
        raise FedsbError(f"the Flower run failed (flwr run exit code {res.returncode}); logs in {base / 'logs'}:\n{tail}")
    summary = json.loads(summary_path.read_text())
    summary.setdefault("flower", {})["deployment"] = {"supernodes": supernodes, "tls_and_supernode_auth": secure,
                                                      "startup_seconds": round(t_up, 2),
                                                      "wall_seconds": round(wall, 2), "logs": str(base / "logs")}
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    if not keep_home and home is None:
        shutil.rmtree(base / "superlink", ignore_errors=True)
    return summary
