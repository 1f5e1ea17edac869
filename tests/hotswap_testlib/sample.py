"""Helpers for the sample Elixir app (tests/fixtures/sample_app): materialise a
version, build its release, run it locally, talk its line protocol.

Stdlib only.  One source tree, many versions: ``VERSION`` (and optionally ``FLAGS``,
one word per line: ``raise_code_change``, ``bad_health``, ``vmargs``) are written into
a copy of the tree; compile-time code in the app picks the behaviour.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

SAMPLE_SRC = Path(__file__).resolve().parent.parent / "fixtures" / "sample_app"
APP = "sample"
KNOWN_FLAGS = ("raise_code_change", "bad_health", "vmargs")
# Files/dirs of the source tree that are not source.
_SKIP = {"_build", "deps", ".elixir_ls", "VERSION", "FLAGS", ".hotswap_build_digest", "erl_crash.dump"}
_DIGEST_FILE = ".hotswap_build_digest"


class BuildError(RuntimeError):
    """``mix release`` failed; the message holds its output."""


# --- materialise / build -------------------------------------------------------

def _norm_flags(flags: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted({str(f).strip() for f in flags if str(f).strip()}))
    for f in out:
        if not f.isidentifier():
            raise ValueError(f"bad flag {f!r}")
    return out


def _source_files(src: Path = SAMPLE_SRC) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.startswith("."))
        for n in sorted(names):
            if n in _SKIP or n.endswith((".pyc", ".swp", "~")):
                continue
            files.append(Path(root, n))
    return files


def source_digest(src: Path = SAMPLE_SRC) -> str:
    """sha256 over relative paths and contents of the source tree (no _build, deps, VERSION, FLAGS)."""
    h = hashlib.sha256()
    for p in _source_files(src):
        rel = p.relative_to(src).as_posix()
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def materialise(dest, version: str, flags: Iterable[str] = ()) -> Path:
    """Copy the source tree (without _build/deps) to ``dest`` and write VERSION (and FLAGS)."""
    dest = Path(dest)
    flags = _norm_flags(flags)
    dest.mkdir(parents=True, exist_ok=True)
    for p in _source_files():
        target = dest / p.relative_to(SAMPLE_SRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    (dest / "VERSION").write_text(version.strip() + "\n")
    fl = dest / "FLAGS"
    if flags:
        fl.write_text("".join(f + "\n" for f in flags))
    elif fl.exists():
        fl.unlink()
    return dest


def build_dir_name(version: str, flags: Iterable[str] = ()) -> str:
    flags = _norm_flags(flags)
    return f"{APP}-{version}" + ("".join("+" + f for f in flags))


def default_workdir() -> Path:
    return Path(os.environ.get("HOTSWAP_SAMPLE_WORKDIR", "/tmp/hotswap-sample-builds"))


def mix_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict:
    """Environment for mix: MIX_HOME/HEX_HOME under workdir, offline, prod."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIX_", "HEX_", "RELEASE_"))}
    env.update(
        MIX_ENV="prod",
        MIX_HOME=str(Path(workdir) / ".mix"),
        HEX_HOME=str(Path(workdir) / ".hex"),
        HEX_OFFLINE="1",
        LANG=env.get("LANG", "C.UTF-8"),
        LC_ALL=env.get("LC_ALL", "C.UTF-8"),
    )
    if extra:
        env.update(extra)
    return env


def project_dir(version: str, flags: Iterable[str] = (), workdir=None) -> Path:
    return Path(workdir or default_workdir()) / build_dir_name(version, flags)


def build_release(version: str, flags: Iterable[str] = (), workdir=None, timeout: float = 300) -> Path:
    """Build (or reuse) the release for (version, flags); return ``.../_build/prod/rel/sample``.

    The project lives at a stable path ``workdir/sample-VERSION[+flag...]``, so repeated
    builds are comparable.  A build is reused when the source digest, version and flags
    are unchanged; otherwise the directory is wiped and rebuilt from scratch.
    """
    workdir = Path(workdir or default_workdir())
    flags = _norm_flags(flags)
    proj = project_dir(version, flags, workdir)
    rel = proj / "_build" / "prod" / "rel" / APP
    want = f"{source_digest()} {version} {','.join(flags)}"
    stamp = proj / _DIGEST_FILE
    if stamp.exists() and stamp.read_text() == want and (rel / "releases" / version / f"{APP}.rel").exists():
        return rel
    if proj.exists():
        shutil.rmtree(proj)
    materialise(proj, version, flags)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["mix", "release", "--overwrite", "--quiet"]
    try:
        r = subprocess.run(cmd, cwd=proj, env=mix_env(workdir), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"mix release timed out in {proj}:\n{e.output or ''}") from None
    if r.returncode != 0 or not (rel / "releases" / version / f"{APP}.rel").exists():
        raise BuildError(f"`{' '.join(cmd)}` failed in {proj} (rc={r.returncode}):\n{r.stdout}")
    stamp.write_text(want)
    return rel


# --- line-protocol client ------------------------------------------------------

class SampleClient:
    """One TCP connection speaking the sample's line protocol (one line in, one line out)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4040, timeout: float = 5.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        while b"\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed by {self.host}:{self.port}")
            self._buf += chunk
        out, self._buf = self._buf.split(b"\n", 1)
        return out.decode()

    def ping(self) -> str:
        return self.cmd("PING")

    def add(self, n: int = 1) -> str:
        return self.cmd(f"ADD {int(n)}")

    def get(self) -> int:
        return int(self.cmd("GET"))

    def vsn(self) -> str:
        return self.cmd("VSN")

    def code(self) -> str:
        return self.cmd("CODE")

    def state(self) -> str:
        return self.cmd("STATE")

    def config(self) -> str:
        return self.cmd("CONFIG")

    def audit(self) -> str:
        return self.cmd("AUDIT")

    def render(self) -> str:
        return self.cmd("RENDER")

    def gap(self) -> int:
        return int(self.cmd("GAP"))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_ping(host: str, port: int, timeout: float = 20.0, expect: str | None = "PONG") -> str:
    """Poll until ``PING`` answers (``expect`` or anything when None); return the answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with SampleClient(host, port, timeout=1.0) as c:
                ans = c.ping()
            if expect is None or ans == expect:
                return ans
            last = ans
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not answer PING={expect!r} within {timeout}s (last: {last!r})")


class LoadClient:
    """Background writer: keeps sending ``ADD 1`` (reconnecting on error).

    Counts ``acked`` (sum of acknowledged writes: each ``OK <total>`` reply), ``failed``
    requests, ``max_latency`` (seconds); keeps every answered request's latency and wall-clock start
    (``latencies``, ``stamps``) for percentiles.  Stops by itself after ``max_duration``.
    """

    def __init__(self, host: str, port: int, interval: float = 0.001, max_duration: float = 120.0,
                 timeout: float = 5.0):
        self.host, self.port, self.interval = host, port, interval
        self.max_duration, self.timeout = max_duration, timeout
        self.acked = 0
        self.failed = 0
        self.reconnects = 0
        self.max_latency = 0.0
        self.last_total: int | None = None
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.stamps: list[float] = []      # wall-clock start of each answered request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._ended = 0.0

    def start(self) -> "LoadClient":
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"LoadClient-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        client = None
        deadline = self._started + self.max_duration
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    if client is None:
                        client = SampleClient(self.host, self.port, timeout=self.timeout)
                    w0, t0 = time.time(), time.monotonic()
                    ans = client.add(1)
                    lat = time.monotonic() - t0
                    self.latencies.append(lat)
                    self.stamps.append(w0)
                    self.max_latency = max(self.max_latency, lat)
                    if ans.startswith("OK "):
                        self.acked += 1
                        self.last_total = int(ans[3:])
                    else:
                        self.failed += 1
                        self._note(f"reply {ans!r}")
                except (OSError, ValueError) as e:
                    self.failed += 1
                    self._note(repr(e))
                    if client is not None:
                        client.close()
                        client = None
                        self.reconnects += 1
                    self._stop.wait(0.01)
                if self.interval:
                    self._stop.wait(self.interval)
        finally:
            if client is not None:
                client.close()
            self._ended = time.monotonic()

    def _note(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(msg)

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self.result()

    def result(self) -> dict:
        end = self._ended or time.monotonic()
        return {"acked": self.acked, "failed": self.failed, "max_latency": self.max_latency,
                "reconnects": self.reconnects, "last_total": self.last_total,
                "duration": end - self._started if self._started else 0.0, "errors": list(self.errors)}


# --- running a release locally -------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LocalNode:
    rel_dir: Path
    port: int
    host: str
    env: dict
    node: str
    os_pid: int | None = None
    logs: list = field(default_factory=list)

    def bin(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.rel_dir / "bin" / APP), *args], env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"bin/{APP} {' '.join(args)} failed (rc={r.returncode}):\n{r.stdout}")
        return r

    def rpc(self, expr: str, timeout: float = 30) -> str:
        return self.bin("rpc", expr, timeout=timeout).stdout

    def client(self) -> SampleClient:
        return SampleClient(self.host, self.port)


def node_env(port: int, env: Mapping[str, str] | None = None, host: str = "127.0.0.1") -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASE_", "MIX_", "ERL_", "ELIXIR_"))}
    e.update(SAMPLE_PORT=str(port), RELEASE_DISTRIBUTION="name", RELEASE_NODE=f"{APP}_{port}@{host}")
    if env:
        e.update(env)
    return e


def start_local(rel_dir, port: int, env: Mapping[str, str] | None = None, host: str = "127.0.0.1",
                timeout: float = 30.0) -> LocalNode:
    """``bin/sample daemon`` with SAMPLE_PORT and a unique RELEASE_NODE; wait for PING; record the OS pid."""
    rel_dir = Path(rel_dir)
    e = node_env(port, env, host)
    h = LocalNode(rel_dir=rel_dir, port=port, host=host, env=e, node=e["RELEASE_NODE"])
    h.bin("daemon")
    try:
        wait_ping(host, port, timeout=timeout, expect=None)
        h.os_pid = int(h.bin("pid").stdout.strip().splitlines()[-1])
    except Exception:
        stop(h)
        raise
    return h


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop(handle: LocalNode, timeout: float = 15.0) -> None:
    """``bin/sample stop``; then SIGKILL the recorded OS pid (only that) if it is still alive."""
    try:
        handle.bin("stop", check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    pid = handle.os_pid
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


# --- compiled code ---------------------------------------------------------------

def tree_listing(root) -> dict:
    """Paths, sizes and mtimes of a release tree (not .hotswap, tmp, log): to assert a refused
    operation left it untouched."""
    out = {}
    for dp, _dns, fns in os.walk(root):
        rel = os.path.relpath(dp, root)
        if rel.split(os.sep)[0] in (".hotswap", "tmp", "log"):
            continue
        for fn in fns:
            st = os.lstat(os.path.join(dp, fn))
            out[os.path.relpath(os.path.join(dp, fn), root)] = (st.st_size, st.st_mtime_ns)
    return out


def ebin_dir(rel_dir, version: str) -> Path:
    return Path(rel_dir) / "lib" / f"{APP}-{version}" / "ebin"


def beam_chunks(path) -> dict[str, bytes]:
    """The chunks of a .beam file (IFF: 'FOR1' size 'BEAM', then id/size/data padded to 4)."""
    data = Path(path).read_bytes()
    if data[:4] != b"FOR1" or data[8:12] != b"BEAM":
        raise ValueError(f"{path}: not a BEAM file")
    chunks, i = {}, 12
    while i + 8 <= len(data):
        cid = data[i:i + 4].decode("latin-1")
        size = int.from_bytes(data[i + 4:i + 8], "big")
        chunks[cid] = data[i + 8:i + 8 + size]
        i += 8 + ((size + 3) & ~3)
    return chunks


# The chunks :beam_lib.md5/1 covers (OTP 25).  NB: comparing only "Code" is not enough:
# e.g. Sample.Sup's child list is a literal (LitT), so its Code chunk is equal in v1 and v2.
MD5_CHUNKS = ("Atom", "AtU8", "Code", "StrT", "ImpT", "ExpT", "FunT", "LitT", "Meta")


def code_digests(ebin, chunks: Iterable[str] = MD5_CHUNKS) -> dict[str, str]:
    """module name -> sha256 over the given chunks (default: those beam_lib:md5 uses)."""
    out = {}
    for p in sorted(Path(ebin).glob("*.beam")):
        ch = beam_chunks(p)
        h = hashlib.sha256()
        for cid in chunks:
            if cid in ch:
                h.update(cid.encode() + len(ch[cid]).to_bytes(4, "big") + ch[cid])
        out[p.stem] = h.hexdigest()
    return out


def beam_md5s(ebin) -> dict[str, str]:
    """module name -> hex of ``:beam_lib.md5/1`` (computed by ``erl``) for every .beam in ebin."""
    expr = (
        'Dir = hd(init:get_plain_arguments()),'
        '[begin {ok, {M, Md5}} = beam_lib:md5(F),'
        ' io:format("~s ~s~n", [M, [io_lib:format("~2.16.0b", [B]) || <<B>> <= Md5]]) end'
        ' || F <- lists:sort(filelib:wildcard(filename:join(Dir, "*.beam")))],'
        'halt().'
    )
    r = subprocess.run(["erl", "-noshell", "-eval", expr, "-extra", str(ebin)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60, check=True)
    return dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.strip())
