"""Shared machinery for the benchmarks: a bench fleet, playbook runs, load/gap/port samplers, tables.

Stdlib + tests/hotswap_testlib only.  Every benchmark brings up its own fleet (prefix ``hsb``, workdir
``tests/output/bench/``), so each is runnable alone and one cannot disturb the next; full playbook
logs land in ``tests/output/bench/logs/``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "tests", REPO / ".venv" / "collections"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "tests" / "ansible.cfg"))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".venv" / "collections"))

from hotswap_testlib import sample  # noqa: E402
from hotswap_testlib.ansible_run import ANSIBLE_PLAYBOOK, ansible_env, run_playbook  # noqa: E402
from hotswap_testlib.fleet import Fleet  # noqa: E402

DEPLOY = REPO / "playbooks" / "deploy.yml"
ROLLBACK = REPO / "playbooks" / "rollback.yml"
STATUS = REPO / "playbooks" / "status.yml"
BUILD_ONLY = REPO / "tests" / "integration" / "playbooks" / "build.yml"
PORT = 4040
STORE = "/opt/hotswap-store"      # /opt is private to each fleet host: a fresh store per fleet
PREFIX = os.environ.get("HOTSWAP_BENCH_PREFIX", "hsb")
WORKDIR = Path(os.environ.get("HOTSWAP_BENCH_DIR", REPO / "tests" / "output" / "bench"))
FLEET_DIR = Path(os.environ.get("HOTSWAP_BENCH_FLEET_DIR", f"/tmp/{PREFIX}-fleet"))
AGENT = ["/usr/bin/python3", "/opt/.hotswap/sample/agent.py", "--root", "/opt/sample", "--app", "sample"]


# a SIGTERM (kill PID) unwinds like an exception, so every fleet is torn down by its ``with`` block
signal.signal(signal.SIGTERM, lambda *_ign: sys.exit(143))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class PlaybookFailed(RuntimeError):
    pass


class BenchFleet:
    """A fleet (build1 + N targets) with the sample app's sources materialised per version."""

    def __init__(self, name: str, targets: int):
        self.name = name
        self.dir = WORKDIR / name
        self.logs = WORKDIR / "logs"
        # the fleet's own files in a short path: ssh control sockets (+ %C + a temp suffix) must stay < 108 bytes
        self.fleet = Fleet(FLEET_DIR / name, targets=targets, build=True, prefix=PREFIX)
        self._srcs: dict = {}
        self._n = 0

    # -- lifecycle
    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.fleet.up()
        log(f"{self.name}: fleet {PREFIX} up ({len(self.fleet.targets)} targets + build1) "
            f"in {time.monotonic() - t0:.1f}s")
        return self

    def __exit__(self, *exc):
        self.fleet.down()
        log(f"{self.name}: fleet down")

    # -- sources / vars
    def src(self, version: str, flags=()) -> str:
        key = (version, tuple(sorted(flags)))
        if key not in self._srcs:
            d = self.dir / ("src-" + version + "".join("+" + f for f in key[1]))
            self._srcs[key] = str(sample.materialise(d, version, flags))
        return self._srcs[key]

    def extra(self, version: str | None = None, flags=(), hosts=None, **kw) -> dict:
        e = {
            "hotswap_app": "sample",
            "hotswap_build_store": STORE,
            "hotswap_artifact_dir": str(self.dir / "artifacts"),
            "hotswap_report_dir": str(self.dir / "reports"),
            "hotswap_env": {"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-bench"},
            "hotswap_service_manager": "daemon",
        }
        if version:
            e["hotswap_source"] = self.src(version, flags)
        if hosts:
            e["hotswap_target_hosts"] = ",".join(hosts) if isinstance(hosts, (list, tuple)) else hosts
        e.update(kw)
        return e

    # -- playbooks
    def playbook(self, playbook, extra: dict, label: str, env: dict | None = None, check=True):
        """Run a playbook; full log to logs/; returns (seconds, stdout)."""
        self._n += 1
        t0 = time.monotonic()
        rc, out, err = run_playbook(self.fleet, playbook, extra, env=env)
        dt = time.monotonic() - t0
        path = self.logs / f"{self.name}-{self._n:02d}-{label}.log"
        path.write_text(out + ("\n--- stderr ---\n" + err if err.strip() else ""))
        if check and rc != 0:
            raise PlaybookFailed(f"{label}: ansible-playbook exited {rc} (log: {path})\n{out[-2500:]}{err[-1000:]}")
        return dt, out

    def deploy(self, version, flags=(), hosts=None, label=None, env=None, **kw):
        return self.playbook(DEPLOY, self.extra(version, flags, hosts, **kw), label or f"deploy-{version}", env)

    def rollback(self, version=None, hosts=None, label=None, env=None, **kw):
        if version:
            kw["hotswap_version"] = version
        return self.playbook(ROLLBACK, self.extra(None, (), hosts, **kw), label or f"rollback-{version}", env)

    def build_only(self, version, bases, flags=()):
        """Publish ``version`` in the build store (relup edges from ``bases``) without touching a target."""
        return self.playbook(BUILD_ONLY, self.extra(version, flags, hotswap_build_bases=list(bases)),
                             f"build-{version}")

    # -- hosts
    def addr(self, host) -> str:
        return self.fleet.host(host).address

    def client(self, host) -> sample.SampleClient:
        return sample.SampleClient(self.addr(host), PORT)

    def agent(self, host, *args, timeout=120) -> dict:
        r = self.fleet.run(host, AGENT + list(args), check=False, timeout=timeout)
        try:
            return json.loads(r.stdout)
        except ValueError:
            raise RuntimeError(f"agent {' '.join(args)} on {host}: rc {r.returncode}: {r.stdout[-800:]}{r.stderr[-800:]}")

    def status(self, host) -> dict:
        return self.agent(host, "status")

    def journal(self, host, n=5) -> list:
        r = self.fleet.run(host, f"tail -n {n} /opt/.hotswap/sample/journal.jsonl", check=False)
        return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


# ------------------------------------------------------------------------------- samplers

def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


class LatencyLoad(sample.LoadClient):
    """LoadClient with latency percentiles in its result."""

    def result(self) -> dict:
        r = super().result()
        lat = self.latencies
        r.update(requests=len(lat) + self.failed,
                 p50_ms=(pct(lat, 50) or 0) * 1000, p99_ms=(pct(lat, 99) or 0) * 1000,
                 max_ms=self.max_latency * 1000)
        return r

    def window(self, start: float, end: float) -> dict:
        """Latency figures of the requests started between wall-clock ``start`` and ``end``."""
        lat = [x for w, x in zip(self.stamps, self.latencies) if start <= w <= end]
        return {"requests": len(lat), "p99_ms": (pct(lat, 99) or 0) * 1000,
                "max_ms": max(lat) * 1000 if lat else None}


class GapSampler:
    """Reads the node's ticker gap (``GAP``: largest tick gap in µs since the last read) every ``period``."""

    def __init__(self, host: str, port: int = PORT, period: float = 0.1):
        self.host, self.port, self.period = host, port, period
        self.samples: list[tuple[float, int]] = []     # (wall-clock time of the read, gap µs)
        self.errors = 0
        self._stop = threading.Event()
        self._t = None

    def start(self):
        self._c = sample.SampleClient(self.host, self.port)
        self._c.gap()          # reset
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.period):
            try:
                self.samples.append((time.time(), self._c.gap()))
            except (OSError, ValueError):
                self.errors += 1
                try:
                    self._c.close()
                    self._c = sample.SampleClient(self.host, self.port)
                except OSError:
                    pass

    def stop(self) -> dict:
        self._stop.set()
        self._t.join(5)
        try:
            self.samples.append((time.time(), self._c.gap()))
        except (OSError, ValueError):
            self.errors += 1
        self._c.close()
        gaps = [g for _ign, g in self.samples]
        return {"max_gap_ms": max(gaps) / 1000 if gaps else None,
                "median_window_gap_ms": statistics.median(gaps) / 1000 if gaps else None,
                "samples": len(gaps), "errors": self.errors}

    def window(self, start: float, end: float) -> float | None:
        """Largest gap (ms) read by a sample that covers part of [start, end] (wall clock)."""
        gaps = [g for i, (t, g) in enumerate(self.samples)
                if t >= start and (i == 0 or self.samples[i - 1][0] <= end)]
        return max(gaps) / 1000 if gaps else None


class PortPoller:
    """Polls host:port from the controller every ``period`` s (connect + PING); records outages.

    An outage runs from the first failed probe to the first good one after it.
    """

    def __init__(self, host: str, port: int = PORT, period: float = 0.005, timeout: float = 0.25):
        self.host, self.port, self.period, self.timeout = host, port, period, timeout
        self.probes = 0
        self.failed = 0
        self.outages: list[float] = []     # seconds
        self._down_since = None
        self._stop = threading.Event()
        self._t = None

    def _probe(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                s.settimeout(self.timeout)
                s.sendall(b"PING\n")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def _run(self):
        while not self._stop.is_set():
            t = time.monotonic()
            ok = self._probe()
            self.probes += 1
            if not ok:
                self.failed += 1
                if self._down_since is None:
                    self._down_since = t
            elif self._down_since is not None:
                self.outages.append(time.monotonic() - self._down_since)
                self._down_since = None
            self._stop.wait(self.period)

    def start(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._t.join(5)
        still_down = self._down_since is not None
        return {"probes": self.probes, "failed": self.failed, "outages_ms": [o * 1000 for o in self.outages],
                "downtime_ms": sum(self.outages) * 1000, "still_down": still_down}


# ------------------------------------------------------------------------------- ansible timing

def warm_connections(bf: BenchFleet, hosts) -> None:
    """Untimed: open (or keep alive) Ansible's ssh control masters to ``hosts`` with one ``raw true``,
    so every timed run starts in the same connection state as the hand-written baseline (whose master
    is warmed too), however long ago a host was last contacted."""
    subprocess.run([str(ANSIBLE_PLAYBOOK.parent / "ansible"), "-i", str(bf.fleet.inventory_path),
                    ",".join(hosts), "-m", "raw", "-a", "true"],
                   env=ansible_env(bf.fleet), capture_output=True, cwd=str(REPO), check=True, timeout=120)


def empty_playbook_seconds(bf: BenchFleet, runs: int = 2) -> float:
    """ansible-playbook start-up: the median wall time of a play with no tasks on localhost."""
    pb = bf.dir / "empty.yml"
    pb.write_text("- hosts: localhost\n  gather_facts: false\n  tasks: []\n")
    times = []
    for _ign in range(runs):
        t0 = time.monotonic()
        subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(bf.fleet.inventory_path), str(pb)],
                       env=ansible_env(bf.fleet), capture_output=True, cwd=str(REPO), check=True)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


_TIMER_PLUGIN = """
# generated by bench/_common.py: wall-clock time of every play and task start and every host result
import json, os, time
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hsb_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._f = open(os.environ["HSB_TIMER_OUT"], "a")

    def _w(self, kind, **kw):
        kw.update(kind=kind, t=time.time())
        self._f.write(json.dumps(kw) + "\\n")
        self._f.flush()

    def v2_playbook_on_start(self, playbook):
        self._w("playbook")

    def v2_playbook_on_play_start(self, play):
        self._w("play", name=play.get_name())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._w("task", name=task.get_name())

    def v2_playbook_on_handler_task_start(self, task):
        self._w("task", name=task.get_name())

    def _res(self, result, status):
        self._w("result", host=result._host.get_name(), status=status)

    def v2_runner_on_ok(self, result):
        self._res(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._res(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._res(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._res(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._w("stats")
"""


def timer_env(outfile: Path) -> dict:
    """Environment that loads a small callback recording when each play/task starts (wall clock)."""
    plug = WORKDIR / "callback_plugins"
    plug.mkdir(parents=True, exist_ok=True)
    (plug / "hsb_timer.py").write_text(_TIMER_PLUGIN)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    outfile.write_text(json.dumps({"kind": "launch", "t": time.time()}) + "\n")
    return {"ANSIBLE_CALLBACK_PLUGINS": str(plug), "ANSIBLE_CALLBACKS_ENABLED": "hsb_timer",
            "HSB_TIMER_OUT": str(outfile)}


def timer_profile(outfile: Path, end: float | None = None) -> dict:
    """Where a playbook run's wall time went: ``startup`` (launch to the first play), per task name the
    wall time from its start to the next play/task start (summed over batches), ``teardown`` (last
    task to the stats, plus to process exit when ``end`` is given)."""
    ev = [json.loads(x) for x in outfile.read_text().splitlines() if x.strip()]
    launch = ev[0]["t"]
    marks = [e for e in ev if e["kind"] in ("play", "task", "stats")]
    first = next((e["t"] for e in marks), launch)
    tasks: dict = {}
    order = []
    plays = 0.0
    for a, b in zip(marks, marks[1:]):
        if a["kind"] == "task":
            if a["name"] not in tasks:
                tasks[a["name"]] = {"seconds": 0.0, "runs": 0}
                order.append(a["name"])
            tasks[a["name"]]["seconds"] += b["t"] - a["t"]
            tasks[a["name"]]["runs"] += 1
        elif a["kind"] == "play":
            plays += b["t"] - a["t"]
    stats = next((e["t"] for e in ev if e["kind"] == "stats"), marks[-1]["t"] if marks else launch)
    return {"startup": first - launch, "plays_setup": plays,
            "tasks": [dict(task=n, **tasks[n]) for n in order],
            "task_sum": sum(t["seconds"] for t in tasks.values()),
            "teardown": (end if end else stats) - stats}


# ------------------------------------------------------------------------------- output

def table(rows: list[dict], cols: list[str], title: str | None = None) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return str(v)
    widths = [max([len(c)] + [len(cell(r.get(c))) for r in rows]) for c in cols]
    out = [title] if title else []
    out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(cell(r.get(c)).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(out)


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def save_result(name: str, result: dict) -> Path:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    p = WORKDIR / f"{name}.json"
    p.write_text(json.dumps(result, indent=1, default=str))
    return p


def tmpfile(suffix=""):
    fd, p = tempfile.mkstemp(prefix="hsb-", suffix=suffix)
    os.close(fd)
    return p
