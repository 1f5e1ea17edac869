"""The second test app, tests/fixtures/ledger_app: written the way users write apps (an Application with its
own children list, a GenServer holding every write plus an ETS table, a hand-written gen_tcp acceptor, a
plain receive loop, a DynamicSupervisor of sessions, a vendored path dependency, runtime.exs reading env).

``base/`` is version 1.0.0; ``versions/VSN/`` holds the files that change in VSN, applied in order along
CHAIN (1.3.1 is 1.3.0 plus an equal-size dependency edit without a version bump).  A load client writes
over the line protocol and remembers every acknowledged write.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

from .fixture_tree import overlay

LEDGER_SRC = Path(__file__).resolve().parent.parent / "fixtures" / "ledger_app"
CHAIN = ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.3.1")
OLD_TIME = 978307200  # 2001-01-01: sources exported with their upstream dates (git archive, cp -a)


def materialise(dest, version: str, old_mtimes: bool = False) -> Path:
    """Write version ``version`` of the app to ``dest`` (a fresh directory)."""
    dest = overlay(LEDGER_SRC, CHAIN, version, dest, "ledger")
    mix = dest / "mix.exs"
    mix.write_text(re.sub(r'@version "[^"]*"', f'@version "{version}"', mix.read_text()))
    if old_mtimes:
        for root, dirs, files in os.walk(dest):
            for n in dirs + files:
                os.utime(os.path.join(root, n), (OLD_TIME, OLD_TIME))
        os.utime(dest, (OLD_TIME, OLD_TIME))
    return dest


class Client:
    """One connection, one line per request."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        got = self.file.readline()
        if not got:
            raise ConnectionError("connection closed")
        return got.decode().strip()

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


def ask(host: str, port: int, line: str, timeout: float = 5.0) -> str:
    c = Client(host, port, timeout)
    try:
        return c.cmd(line)
    finally:
        c.close()


class Load:
    """Continuous writes: one long-lived connection (keep-alive) writing ``PUT`` as fast as it is answered,
    and a new connection per write every ``new_conn_every`` s.  A request that fails is retried on a new
    connection for up to ``retry_s`` (a client's own retry); it counts as failed when it never got "OK".
    Every acknowledged key is remembered."""

    def __init__(self, host: str, port: int, tag: str, new_conn_every: float = 0.05, retry_s: float = 2.0,
                 pause: float = 0.005):
        self.host, self.port, self.tag = host, port, tag
        self.new_conn_every, self.retry_s, self.pause = new_conn_every, retry_s, pause
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.retries = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._keepalive, daemon=True),
                         threading.Thread(target=self._fresh, daemon=True)]
        self._n = 0
        self._lock = threading.Lock()

    def _key(self, kind):
        with self._lock:
            self._n += 1
            return f"{self.tag}-{kind}-{self._n}"

    def _put_retrying(self, key, conn=None):
        """(ok, conn to keep or None)."""
        end = time.monotonic() + self.retry_s
        first = True
        while True:
            try:
                if conn is None:
                    conn = Client(self.host, self.port, timeout=3)
                if conn.cmd(f"PUT {key} v") == "OK":
                    return True, conn
                raise ConnectionError("not OK")
            except OSError:
                if conn is not None:
                    conn.close()
                    conn = None
                if not first:
                    self.retries += 1
                first = False
                if time.monotonic() >= end:
                    return False, None
                time.sleep(0.05)

    def _keepalive(self):
        conn = None
        while not self._stop.is_set():
            key = self._key("k")
            ok, conn = self._put_retrying(key, conn)
            (self.acked if ok else self.failed).append(key)
            time.sleep(self.pause)
        if conn:
            conn.close()

    def _fresh(self):
        while not self._stop.is_set():
            key = self._key("n")
            ok, conn = self._put_retrying(key)
            if conn:
                conn.close()
            (self.acked if ok else self.failed).append(key)
            time.sleep(self.new_conn_every)

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return {"acked": len(self.acked), "failed": len(self.failed), "retries": self.retries}

    def missing(self) -> list[str]:
        """Acknowledged keys the ledger no longer has (read back over one connection)."""
        c = Client(self.host, self.port, timeout=10)
        try:
            return [k for k in self.acked if c.cmd(f"GET {k}") != "v"]
        finally:
            c.close()
