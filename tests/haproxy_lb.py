"""A real HAProxy (Debian's haproxy) in front of test nodes, on 127.0.0.1.

Each client port is its own frontend/backend in ``mode tcp`` with health
checks, as in deploy/haproxy.cfg. ``rotate=True`` lists the servers of each
backend in a different order; ``pinned=True`` gives each client port one
node of its own (control -> first, transform -> second, SUB -> third), so a
client's three connections are forced onto three different nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import free_ports, wait_for


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed; .ci/run installs Debian's haproxy")
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI installs it")
    return path


class Balancer:
    """Looks like a RelayNode to test clients: the ports are the balancer's."""

    host = "127.0.0.1"

    def __init__(self, nodes: list, *, balance: str = "roundrobin", rotate: bool = False,
                 pinned: bool = False) -> None:
        self.nodes = nodes
        self.balance = balance
        self.rotate = rotate
        self.pinned = pinned
        self.control_port, self.transform_port, self.pub_port, self.rest_port = free_ports(4)
        self.dir = tempfile.mkdtemp(prefix="haproxy-test-")
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        self.proc: subprocess.Popen | None = None

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"

    def config_text(self) -> str:
        lines = [
            "global", "    maxconn 4096", "defaults", "    mode tcp", "    timeout connect 2s",
            "    timeout client 1h", "    timeout server 1h", "    timeout tunnel 1h",
            "    default-server inter 300ms fall 2 rise 1",
        ]
        ports = (("control", self.control_port, "control_port"), ("transform", self.transform_port, "transform_port"),
                 ("pub", self.pub_port, "pub_port"), ("rest", self.rest_port, "rest_port"))
        for shift, (name, port, attr) in enumerate(ports):
            k = shift % len(self.nodes)
            if self.pinned:
                order = [self.nodes[k]]
            elif self.rotate:
                order = self.nodes[k:] + self.nodes[:k]
            else:
                order = self.nodes
            lines += [f"frontend {name}", f"    bind 127.0.0.1:{port}", f"    default_backend {name}_nodes",
                      f"backend {name}_nodes", f"    balance {self.balance}"]
            for i, node in enumerate(order):
                lines.append(f"    server n{i} {node.host}:{getattr(node, attr)} check")
        return "\n".join(lines) + "\n"

    def start(self) -> Balancer:
        Path(self.cfg).write_text(self.config_text())
        binary = haproxy_binary()
        check = subprocess.run([binary, "-c", "-f", self.cfg], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(os.path.join(self.dir, "haproxy.log"), "ab")
        self.proc = subprocess.Popen([binary, "-db", "-f", self.cfg], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        import socket

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.control_port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 10, what="haproxy listening")
        time.sleep(0.5)  # first health checks
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
