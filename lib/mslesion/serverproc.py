"""Starts the real msapp MONAI Label server in a subprocess on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                # 401 is an answer too: a server with auth enabled refuses anonymous requests
                if requests.get(f"{self.url}/info/", timeout=2).status_code in (200, 401):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not answer in {timeout} s: {self.log.read_text()[-3000:]}")

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
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=20)
