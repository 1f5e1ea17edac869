"""The Phoenix test app, tests/fixtures/phoenix_app: a Phoenix app written the way users write them (Endpoint,
Router, a JSON controller, a GenServer whose state changes shape, PubSub, multipart uploads, runtime.exs), and
an HTTP load client for deploys.

Versions (``base/`` is 1.0.0; ``versions/VSN/`` holds the files that change in VSN, applied in CHAIN order):

* 1.0.0: the OLDER library set (phoenix 1.7.14, plug 1.16.1, cowboy 2.12.0, ...);
* 2.0.0: the NEWER library set (phoenix 1.7.24, plug 1.19.2, cowboy 2.17.0, ...) and ``Shop.Cart`` with a new
  state shape and its ``code_change/3``;
* 3.0.0: a controller change only (same libraries as 2.0.0).

``server="bandit"`` gives the same versions on Bandit (``adapter: Bandit.PhoenixAdapter``): bandit 1.6.11 +
thousand_island 1.3.14 with plug 1.16.1 in 1.0.0, bandit 1.11.1 + thousand_island 1.5.0 with plug 1.19.2 from
2.0.0 (a flag rather than overlays: only ``deps/0`` and the endpoint's adapter line differ).

``deps/0`` in ``mix.exs`` and the adapter line in ``config/config.exs`` are written by :func:`materialise` from
LIBSETS, one table per library set:

* ``deps="hex"`` (what the tests use): what users write, Hex requirements on the direct dependencies
  (``{:phoenix, "~> 1.7.14"}``), and the set's tracked ``mix.lock`` (``locks/SERVER-SET.mix.lock``), which pins
  every library of the set, direct and transitive, with the checksums of the tests' local Hex repository
  (hexrepo.py; its packages are reproducible, so the checksums hold for every build of it).  ``pin=True``
  writes every library as ``"== VSN"`` instead (resolves to the set without a lock): :func:`make_locks` uses
  it to write the locks again, :func:`check_locks` compares them with a repository;
* ``deps="path"``: a dev aid only, used by no test: every library of the set as a path dependency into
  THIRDPARTY with ``override: true`` (shared/thirdparty/README.md); builds need the Hex archive in MIX_HOME
  only to read the libraries' own requirements (:func:`install_hex`).

Stdlib only.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .fixture_tree import overlay

PHOENIX_SRC = Path(__file__).resolve().parent.parent / "fixtures" / "phoenix_app"
LOCKS = PHOENIX_SRC / "locks"
APP = "shop"
CHAIN = ("1.0.0", "2.0.0", "3.0.0")
SERVERS = ("cowboy", "bandit")
THIRDPARTY = Path(os.environ.get("HOTSWAP_THIRDPARTY", "/work/shared/thirdparty"))

_COMMON_OLD = {
    "phoenix": "1.7.14", "phoenix_pubsub": "2.1.3", "phoenix_template": "1.0.4", "plug": "1.16.1",
    "plug_crypto": "2.1.1", "telemetry": "1.2.1", "mime": "2.0.7", "websock": "0.5.3", "websock_adapter": "0.5.9",
    "castore": "1.0.19", "jason": "1.4.1",
}
_COMMON_NEW = dict(_COMMON_OLD, phoenix="1.7.24", phoenix_pubsub="2.2.0", plug="1.19.2", telemetry="1.3.0",
                   jason="1.4.5")
# Every library of the release, direct and transitive, per (server, set).  Consistent sets only: cowboy 2.12.0
# pins cowlib 2.13.0 + ranch 1.8.0, cowboy 2.17.0 pins cowlib 2.18.0 + ranch 1.8.1; bandit >= 1.7 needs plug 1.18.
LIBSETS = {
    ("cowboy", "old"): dict(_COMMON_OLD, plug_cowboy="2.7.5", cowboy="2.12.0", cowlib="2.13.0", ranch="1.8.0",
                            cowboy_telemetry="0.4.0"),
    ("cowboy", "new"): dict(_COMMON_NEW, plug_cowboy="2.7.5", cowboy="2.17.0", cowlib="2.18.0", ranch="1.8.1",
                            cowboy_telemetry="0.4.0"),
    ("bandit", "old"): dict(_COMMON_OLD, bandit="1.6.11", thousand_island="1.3.14", hpax="1.0.3"),
    ("bandit", "new"): dict(_COMMON_NEW, bandit="1.11.1", thousand_island="1.5.0", hpax="1.0.3"),
}
# What a user's mix.exs lists (the rest is transitive, pinned by mix.lock)
DIRECT = {"cowboy": ("phoenix", "phoenix_pubsub", "jason", "plug_cowboy"),
          "bandit": ("phoenix", "phoenix_pubsub", "jason", "bandit")}
ADAPTER = {"cowboy": "Phoenix.Endpoint.Cowboy2Adapter", "bandit": "Bandit.PhoenixAdapter"}
VERSION_SET = {"1.0.0": "old", "2.0.0": "new", "3.0.0": "new"}


def libset(version: str, server: str = "cowboy") -> dict:
    """{library: version} of every library in release ``version`` on ``server``."""
    return dict(LIBSETS[(server, VERSION_SET[version])])


def deps_block(version: str, deps: str = "hex", server: str = "cowboy", pin: bool = False,
               thirdparty=THIRDPARTY) -> str:
    """The text of ``defp deps`` for ``version``: ``deps`` is "hex" or "path"."""
    libs = libset(version, server)
    if deps == "path":
        tp = str(thirdparty)
        for name, vsn in libs.items():
            if not (Path(tp) / f"{name}-{vsn}" / "mix.exs").is_file():
                raise FileNotFoundError(f"{name}-{vsn} is not in {tp}")
        lines = [f'{{:{n}, path: "#{{@thirdparty}}/{n}-{v}", override: true}}' for n, v in sorted(libs.items())]
        head = f'  @thirdparty "{tp}"\n'
    elif deps == "hex":
        names = sorted(libs) if pin else DIRECT[server]
        lines = [f'{{:{n}, "{"==" if pin else "~>"} {libs[n]}"}}' for n in names]
        head = ""
    else:
        raise ValueError(f"deps must be 'hex' or 'path', not {deps!r}")
    body = ",\n".join("      " + x for x in lines)
    return f"{head}  defp deps do\n    [\n{body}\n    ]\n  end\n"


def lock_path(version: str, server: str = "cowboy") -> Path:
    """The tracked mix.lock of ``version`` on ``server``: ``locks/SERVER-SET.mix.lock``."""
    return LOCKS / f"{server}-{VERSION_SET[version]}.mix.lock"


def materialise(dest, version: str, deps: str = "hex", server: str = "cowboy", pin: bool = False,
                thirdparty=THIRDPARTY, lock=None, pubsub_appup: bool = False) -> Path:
    """Write version ``version`` of the app to ``dest`` (replaced if it exists).

    ``deps``: "hex" (Hex requirements; ``pin`` writes every library as ``== VSN``) or "path" (a dev aid: path
    deps into ``thirdparty``, all with ``override: true``).  ``server``: "cowboy" or "bandit".  ``lock`` (hex
    only): None copies the tracked ``locks/SERVER-SET.mix.lock`` (:func:`lock_path`; FileNotFoundError when it
    is missing, unless ``pin``), a path copies that file, False writes no mix.lock.
    ``pubsub_appup``: in versions on the newer set, add the hand-written ``rel/appups/phoenix_pubsub/2.2.0.appup``
    (``extras/pubsub_appup``) that loads Phoenix.PubSub.PG2 instead of updating it as a supervisor (PG2's init/1
    changed its argument shape in 2.2.0; generated appups now keep such a supervisor's specs, so the tests do
    not use it: an experiment aid)."""
    if server not in SERVERS:
        raise ValueError(f"server must be one of {SERVERS}")
    dest = overlay(PHOENIX_SRC, CHAIN, version, dest, "shop")
    if pubsub_appup and VERSION_SET[version] == "new":
        shutil.copytree(PHOENIX_SRC / "extras" / "pubsub_appup", dest, dirs_exist_ok=True)
    mix = dest / "mix.exs"
    text = re.sub(r'@version "[^"]*"', f'@version "{version}"', mix.read_text())
    text, n = re.subn(r"(  # deps:begin\n).*?(  # deps:end\n)",
                      lambda m: m.group(1) + deps_block(version, deps, server, pin, thirdparty) + m.group(2),
                      text, flags=re.S)
    assert n == 1, "mix.exs lost its deps:begin/deps:end markers"
    mix.write_text(text)
    cfg = dest / "config" / "config.exs"
    text, n = re.subn(r"(  # adapter:begin\n).*?(  # adapter:end\n)",
                      lambda m: m.group(1) + f"  adapter: {ADAPTER[server]},\n" + m.group(2), cfg.read_text(),
                      flags=re.S)
    assert n == 1, "config.exs lost its adapter:begin/adapter:end markers"
    cfg.write_text(text)
    if deps == "hex" and lock is not False:
        src = Path(lock) if lock else lock_path(version, server)
        if src.is_file():
            shutil.copyfile(src, dest / "mix.lock")
        elif lock or not pin:
            raise FileNotFoundError(f"no mix.lock {src} for shop {version} on {server} (phoenix.make_locks writes "
                                    "the tracked ones)")
    return dest


_LOCK_ENTRY = re.compile(r'^  "(\w+)": \{:hex, :(\w+), "([^"]+)", "([0-9a-f]{64})", \[[^\]]*\], .*, "hexpm", '
                         r'"([0-9a-f]{64})"\},$', re.M)


def lock_entries(path) -> dict:
    """{package: (version, inner checksum, outer checksum)} of the Hex entries of a mix.lock."""
    return {m.group(2): (m.group(3), m.group(4), m.group(5)) for m in _LOCK_ENTRY.finditer(Path(path).read_text())}


def check_locks(repo, locks_dir=None) -> list[str]:
    """What is wrong with the tracked locks against ``repo`` (a hexrepo.Repo): a lock missing, a library of
    the set missing or at another version, an entry the set does not have, a checksum the repository does
    not give.  Empty when every lock pins exactly its set with the repository's checksums."""
    problems = []
    for (server, vset), libs in sorted(LIBSETS.items()):
        path = Path(locks_dir or LOCKS) / f"{server}-{vset}.mix.lock"
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        got = lock_entries(path)
        for name in sorted(set(libs) | set(got)):
            if name not in got:
                problems.append(f"{path.name}: {name} {libs[name]} is not pinned")
            elif name not in libs:
                problems.append(f"{path.name}: {name} {got[name][0]} is not in the {server}/{vset} set")
            elif got[name][0] != libs[name]:
                problems.append(f"{path.name}: {name} is locked at {got[name][0]}, the set has {libs[name]}")
            elif tuple(repo.checksums.get((name, libs[name]), ())) != got[name][1:]:
                problems.append(f"{path.name}: {name} {libs[name]} checksums {got[name][1][:12]}/{got[name][2][:12]} "
                                f"differ from the repository's {repo.checksums.get((name, libs[name]))}")
    return problems


def make_locks(repo, workdir, out_dir=None) -> dict:
    """Write the four tracked locks again: for each (server, set), ``materialise(..., pin=True, lock=False)``
    and ``mix deps.get`` against ``repo`` (a hexrepo.Repo) served on 127.0.0.1, with Mix/Hex homes under
    ``workdir``.  Returns {(server, set): path}.  The locks name the repository's checksums, which are the
    same for every build of it (hexrepo.py)."""
    from hotswap_testlib import hexrepo  # pylint: disable=import-outside-toplevel
    workdir, out_dir = Path(workdir), Path(out_dir or LOCKS)
    out_dir.mkdir(parents=True, exist_ok=True)
    url, stop = hexrepo.serve(repo, "127.0.0.1", 0)
    written = {}
    try:
        homes = hexrepo.configure_build_user(workdir / "home" / ".mix", workdir / "home" / ".hex", url, repo)
        env = hexrepo.mix_env(homes["MIX_HOME"], homes["HEX_HOME"], {"HOME": str(workdir / "home"), "MIX_ENV": "prod"})
        for (server, vset) in sorted(LIBSETS):
            version = next(v for v in CHAIN if VERSION_SET[v] == vset)
            proj = materialise(workdir / f"lock-{server}-{vset}", version, deps="hex", server=server, pin=True,
                               lock=False)
            p = subprocess.run(["mix", "deps.get"], cwd=proj, env=env, capture_output=True, text=True, timeout=600,
                               check=False)
            if p.returncode != 0:
                raise RuntimeError(f"mix deps.get for {server}/{vset} exited {p.returncode}:\n{p.stdout}{p.stderr}")
            written[(server, vset)] = out_dir / f"{server}-{vset}.mix.lock"
            shutil.copyfile(proj / "mix.lock", written[(server, vset)])
    finally:
        stop()
    return written


def install_hex(mix_home, thirdparty=THIRDPARTY, cache="/tmp/phx-hex") -> Path:
    """Build the Hex archive from ``thirdparty/hex-*`` once (in ``cache``) and install it into ``mix_home``:
    Mix needs Hex to read the ``{:plug, "~> 1.14"}`` requirements inside the libraries, even with path deps."""
    (src,) = sorted(Path(thirdparty).glob("hex-*"))[-1:]
    ez = Path(cache) / f"{src.name}.ez"
    env = dict(os.environ, MIX_HOME=str(Path(cache) / "mix"), MIX_ENV="prod", HEX_OFFLINE="1")
    if not ez.is_file():
        work = Path(cache) / "src"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        subprocess.run(["mix", "archive.build", "-o", str(ez)], cwd=work, env=env, check=True,
                       capture_output=True)
    env["MIX_HOME"] = str(mix_home)
    subprocess.run(["mix", "archive.install", str(ez), "--force"], env=env, check=True, capture_output=True)
    return Path(mix_home) / "archives" / src.name


# --------------------------------------------------------------------------- small HTTP helpers

def request(host: str, port: int, method: str, path: str, body: bytes | None = None, headers=None,
            timeout: float = 10.0):
    """(status, body bytes) over a fresh connection."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(host: str, port: int, path: str, timeout: float = 10.0):
    status, body = request(host, port, "GET", path, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)


def wait_up(host: str, port: int, timeout: float = 30.0, path: str = "/") -> float:
    """Wait until ``path`` answers 200; returns the seconds it took."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            if request(host, port, "GET", path, timeout=2)[0] == 200:
                return time.monotonic() - t0
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"http://{host}:{port}{path} not up after {timeout}s (last error: {last})")


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request; ``files``: {field: (filename, bytes)}."""
    boundary = "----shop" + uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (fn, data) in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{fn}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- load client

class Load:
    """HTTP load for the length of a deploy, every request recorded (kind, start, latency, status, error):

    * ``fresh``: ``POST /api/cart/SKU`` on a new connection each (``Connection: close``), ``fresh_pause`` s
      apart (``fresh_threads`` of them; each leaves a TIME_WAIT socket, so mind the ephemeral port range);
      every 200 is an acknowledged add (``acked_adds``);
    * ``keepalive``: one connection sending ``GET /`` back to back; it reconnects when the server closes it
      (cowboy does after ``max_keepalive``, 1000 requests) or after an error: ``keepalive_conns`` lists each
      connection (opened, last answer, requests, how it ended);
    * ``slow``: ``GET /slow?ms=SLOW_MS``, a new one every ``slow_ms * slow_overlap`` s, so one is always in
      flight; the answer says the app version before and after the sleep;
    * ``upload``: a multipart upload of ``upload_size`` random bytes every ``upload_every`` s, its size and
      sha256 checked against the answer.

    ``mark(label)`` records a moment (e.g. when the upgrade started and ended) for the report."""

    KINDS = ("fresh", "keepalive", "slow", "upload")

    def __init__(self, host: str, port: int, slow_ms: int = 3000, slow_overlap: float = 0.5,
                 upload_every: float = 0.5, upload_size: int = 256 * 1024, fresh_threads: int = 1,
                 fresh_pause: float = 0.01, keepalive_pause: float = 0.005, timeout: float = 30.0,
                 sku_prefix: str = "load"):
        self.host, self.port = host, port
        self.slow_ms, self.slow_overlap = slow_ms, slow_overlap
        self.upload_every, self.upload_size = upload_every, upload_size
        self.fresh_threads, self.timeout = fresh_threads, timeout
        self.fresh_pause, self.keepalive_pause = fresh_pause, keepalive_pause
        self.sku_prefix = sku_prefix
        self.records: list[dict] = []
        self.marks: list[tuple[str, float]] = []
        self.keepalive_conns: list[dict] = []  # per connection: opened, last, requests, how it ended
        self.acked_adds = 0
        self.slow_straddled: list[dict] = []   # slow answers whose vsn changed during the sleep
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._slow_threads: list[threading.Thread] = []
        self.t0 = 0.0

    # -- recording
    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _record(self, kind, start, status=None, error=None, detail=None):
        rec = {"kind": kind, "start": round(start, 4), "latency": round(self._now() - start, 4),
               "status": status, "error": error, "ok": error is None and status == 200}
        if detail is not None:
            rec["detail"] = detail
        with self._lock:
            self.records.append(rec)
        return rec

    def mark(self, label: str):
        with self._lock:
            self.marks.append((label, round(self._now(), 4)))

    @staticmethod
    def _err(e: BaseException) -> str:
        return f"{type(e).__name__}: {e}"[:300]

    # -- request kinds
    def _fresh(self, idx: int):
        n = 0
        while not self._stop.is_set():
            n += 1
            sku = f"{self.sku_prefix}-{idx}-{n % 50}"
            start = self._now()
            try:
                status, body = request(self.host, self.port, "POST", f"/api/cart/{sku}", body=b"",
                                       headers={"Connection": "close", "Accept": "application/json"},
                                       timeout=self.timeout)
                if status == 200:
                    with self._lock:
                        self.acked_adds += 1
                    self._record("fresh", start, status)
                else:
                    self._record("fresh", start, status, f"HTTP {status}", body[:300].decode("utf-8", "replace"))
            except Exception as e:  # noqa: BLE001 - every failure is a result
                self._record("fresh", start, None, self._err(e))
            if self.fresh_pause:
                time.sleep(self.fresh_pause)

    def _keepalive(self):
        conn, cur = None, None
        while not self._stop.is_set():
            start = self._now()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    conn.connect()
                    cur = {"opened": round(start, 4), "last": None, "requests": 0, "end": "open"}
                    with self._lock:
                        self.keepalive_conns.append(cur)
                conn.request("GET", "/", headers={"Accept": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                cur["requests"] += 1
                cur["last"] = round(self._now(), 4)
                if resp.status == 200:
                    self._record("keepalive", start, 200)
                else:
                    self._record("keepalive", start, resp.status, f"HTTP {resp.status}",
                                 body[:300].decode("utf-8", "replace"))
                if resp.will_close:  # the server said Connection: close (cowboy: after max_keepalive requests)
                    cur["end"] = "server closed (Connection: close)"
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001
                self._record("keepalive", start, None, self._err(e))
                if cur is not None:
                    cur["end"] = "error: " + self._err(e)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.02)
            if self.keepalive_pause:
                time.sleep(self.keepalive_pause)
        if conn is not None:
            conn.close()

    def _one_slow(self):
        start = self._now()
        try:
            status, body = request(self.host, self.port, "GET", f"/slow?ms={self.slow_ms}",
                                   headers={"Accept": "application/json"},
                                   timeout=self.timeout + self.slow_ms / 1000)
            if status == 200:
                got = json.loads(body)
                if got.get("vsn_before") != got.get("vsn_after"):
                    with self._lock:
                        self.slow_straddled.append(dict(got, start=round(start, 4)))
                self._record("slow", start, 200)
            else:
                self._record("slow", start, status, f"HTTP {status}", body[:300].decode("utf-8", "replace"))
        except Exception as e:  # noqa: BLE001
            self._record("slow", start, None, self._err(e))

    def _slow_starter(self):
        every = self.slow_ms / 1000 * self.slow_overlap
        while not self._stop.is_set():
            t = threading.Thread(target=self._one_slow, daemon=True)
            t.start()
            self._slow_threads.append(t)
            self._stop.wait(every)

    def _upload(self):
        n = 0
        while not self._stop.is_set():
            n += 1
            data = os.urandom(self.upload_size)
            want = hashlib.sha256(data).hexdigest()
            body, ctype = multipart({"note": f"upload {n}"}, {"file": (f"blob-{n}.bin", data)})
            start = self._now()
            try:
                status, got = request(self.host, self.port, "POST", "/api/upload", body=body,
                                      headers={"Content-Type": ctype, "Accept": "application/json"},
                                      timeout=self.timeout)
                if status != 200:
                    self._record("upload", start, status, f"HTTP {status}", got[:300].decode("utf-8", "replace"))
                else:
                    ans = json.loads(got)
                    if ans.get("sha256") != want or ans.get("size") != len(data):
                        self._record("upload", start, status, "sha256/size mismatch", ans)
                    else:
                        self._record("upload", start, status)
            except Exception as e:  # noqa: BLE001
                self._record("upload", start, None, self._err(e))
            self._stop.wait(self.upload_every)

    # -- control
    def start(self) -> "Load":
        self.t0 = time.monotonic()
        targets = [lambda i=i: self._fresh(i) for i in range(self.fresh_threads)]
        targets += [self._keepalive, self._slow_starter, self._upload]
        self._threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict:
        """Stop starting requests, wait for those in flight (slow ones included), return :meth:`report`."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        for t in list(self._slow_threads):
            t.join(self.timeout + self.slow_ms / 1000 + 5)
        return self.report()

    def report(self, first_errors: int = 5) -> dict:
        with self._lock:
            recs = list(self.records)
            marks = list(self.marks)
        out = {"duration_s": round(self._now(), 2), "requests": len(recs), "ok": sum(r["ok"] for r in recs),
               "failed": sum(not r["ok"] for r in recs), "by_kind": {}, "marks": marks,
               "keepalive_connections": len(self.keepalive_conns), "keepalive_conns": [dict(c) for c in self.keepalive_conns],
               "acked_adds": self.acked_adds,
               "slow_straddled": self.slow_straddled}
        for kind in self.KINDS:
            rs = [r for r in recs if r["kind"] == kind]
            lat = sorted(r["latency"] for r in rs if r["ok"])
            bad = [r for r in rs if not r["ok"]]
            out["by_kind"][kind] = {
                "count": len(rs), "ok": len(rs) - len(bad), "failed": len(bad),
                "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": round(lat[-1] * 1000, 1) if lat else None,
                "first_errors": [{k: r[k] for k in ("start", "latency", "status", "error", "detail") if k in r}
                                 for r in bad[:first_errors]],
                "errors": _count(r["error"] for r in bad),
            }
        # node pause: the largest gap between successive successful completions of short requests
        ends = sorted(r["start"] + r["latency"] for r in recs if r["ok"] and r["kind"] in ("fresh", "keepalive"))
        gap, at = 0.0, None
        for a, b in zip(ends, ends[1:]):
            if b - a > gap:
                gap, at = b - a, a
        out["max_gap_ms"] = round(gap * 1000, 1)
        out["max_gap_at_s"] = round(at, 3) if at is not None else None
        return out

    def at(self, t_monotonic: float) -> float:
        """A ``time.monotonic()`` reading on this load's clock (seconds since :meth:`start`)."""
        return t_monotonic - self.t0

    def window(self, start: float, end: float, kinds=("fresh", "keepalive")) -> dict:
        """Figures of the requests of ``kinds`` that started between ``start`` and ``end`` (``time.monotonic()``
        readings): count, failed, p50/p99/max latency, and the largest gap between successive successful
        completions inside the window, its edges included (a pause at the start or the end counts)."""
        lo, hi = self.at(start), self.at(end)
        with self._lock:
            recs = [r for r in self.records if r["kind"] in kinds and lo <= r["start"] <= hi]
        lat = sorted(r["latency"] for r in recs if r["ok"])
        ends = sorted(r["start"] + r["latency"] for r in recs if r["ok"])
        return {"requests": len(recs), "failed": sum(not r["ok"] for r in recs), "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99), "max_ms": round(lat[-1] * 1000, 1) if lat else None,
                "max_gap_ms": _max_gap_ms(ends, lo, hi)}


def _max_gap_ms(ends, lo, hi):
    """The largest gap in ms between successive times of sorted ``ends`` within [lo, hi], edges included."""
    points = [lo] + [e for e in ends if lo <= e <= hi] + [hi]
    return round(max(b - a for a, b in zip(points, points[1:])) * 1000, 1)


class Probe:
    """A 1 ms probe loop: ``GET /`` on one keep-alive connection, ``interval`` s after each answer (reconnecting
    when the server closes the connection or a request fails).  Every request is kept (start and end on the
    ``time.monotonic()`` clock, ok), so :meth:`window` gives the largest pause seen between two answers."""

    def __init__(self, host: str, port: int, interval: float = 0.001, timeout: float = 10.0):
        self.host, self.port, self.interval, self.timeout = host, port, interval, timeout
        self.records: list[tuple[float, float, bool]] = []   # (start, end, ok)
        self.errors: dict = {}
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> "Probe":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        conn = None
        while not self._stop.is_set():
            start = time.monotonic()
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                conn.request("GET", "/", headers={"Accept": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
                if not ok:
                    key = f"HTTP {resp.status}"
                    self.errors[key] = self.errors.get(key, 0) + 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                key = type(e).__name__
                self.errors[key] = self.errors.get(key, 0) + 1
                if conn is not None:
                    conn.close()
                conn = None
            self.records.append((start, time.monotonic(), ok))
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def stop(self) -> "Probe":
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self

    def window(self, start: float, end: float) -> dict:
        """Probes started between ``start`` and ``end`` (``time.monotonic()``): count, failed, p50/p99/max
        latency, largest gap between successive successful answers (window edges included)."""
        recs = [r for r in list(self.records) if start <= r[0] <= end]
        lat = sorted(e - s for s, e, ok in recs if ok)
        ends = sorted(e for s, e, ok in recs if ok)
        return {"requests": len(recs), "failed": sum(not ok for _s, _e, ok in recs), "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99), "max_ms": round(lat[-1] * 1000, 1) if lat else None,
                "max_gap_ms": _max_gap_ms(ends, start, end)}


def _pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return round(sorted_vals[i] * 1000, 1)


def _count(items):
    out: dict = {}
    for x in items:
        key = re.sub(r"\d+", "N", str(x)) if x and not str(x).startswith("HTTP") else str(x)
        out[key] = out.get(key, 0) + 1
    return out


def free_port(lo: int = 4100, hi: int = 4199) -> int:
    """A port in [lo, hi] nobody listens on (this machine's test range for the Phoenix app)."""
    for port in range(lo, hi + 1):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi}")
