"""Starts the real msapp MONAI Label server in a subprocess on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(process: subprocess.Popen, probe: Callable[[], bool], timeout: float, log: Path, name: str,
                         error: type[Exception] = RuntimeError, on_timeout: Callable[[], None] | None = None) -> None:
    """Wait for a started service until ``probe()`` says it answers; ``error`` with the log's tail if the process
    exits first or ``timeout`` passes (then ``on_timeout``, e.g. stopping it, runs first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise error(f"{name} exited at start-up: {log.read_text()[-3000:]}")
        try:
            if probe():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    if on_timeout:
        on_timeout()
    raise error(f"{name} did not answer in {timeout} s: {log.read_text()[-3000:]}")


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to a process started with ``start_new_session`` and everything it started; SIGKILL after 20 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


class ServerProcess:
    """``monailabel start_server`` on apps/msapp, stopped with its whole process group."""

    def __init__(self, studies: Path, model_dir: Path, log: Path, port: int | None = None, conf: dict | None = None,
                 env: dict | None = None, timeout: float = 180):
        self.studies, self.model_dir, self.log = Path(studies), Path(model_dir), Path(log)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf_args = []
        for key, value in {"model_dir": str(model_dir), **(conf or {})}.items():
            conf_args += ["--conf", key, str(value)]
        environment = dict(os.environ, PYTHONPATH=str(ROOT / "lib"), **(env or {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(ROOT / "apps" / "msapp"),
             "--studies", str(studies), "--host", "127.0.0.1", "--port", str(self.port), *conf_args],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=environment, start_new_session=True,
        )
        self._wait_until_up(timeout)

    @classmethod
    def on_a_copy(cls, studies: Path, work: Path, **kwargs) -> ServerProcess:
        """The server on a copy of ``studies`` in ``work/studies`` (the server writes its index and labels into its
        studies folder), with ``work/model`` and ``work/server.log``; ``kwargs`` as for the constructor."""
        shutil.copytree(studies, Path(work) / "studies")
        return cls(Path(work) / "studies", Path(work) / "model", Path(work) / "server.log", **kwargs)

    def _answers(self) -> bool:
        # 401 is an answer too: a server with auth enabled refuses anonymous requests
        return requests.get(f"{self.url}/info/", timeout=2).status_code in (200, 401)

    def _wait_until_up(self, timeout: float) -> None:
        wait_until_answering(self.process, self._answers, timeout, self.log, "server", on_timeout=self.stop)

    def peak_memory_mb(self) -> float:
        """Peak resident memory (VmHWM) of the server process, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def wait_for_training(self, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            answer = requests.get(f"{self.url}/train/", timeout=10)
            if answer.ok and answer.json().get("status") in ("DONE", "ERROR"):
                return answer.json()
            time.sleep(2)
        raise TimeoutError(f"training did not finish in {timeout} s")

    def kill(self) -> None:
        """kill -9 the server and everything it started (a training subprocess), as a power cut would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=20)

    def stop(self) -> None:
        stop_process_group(self.process)
