"""``make demo``: the whole product path on a local fleet, told as a story.

A fleet of network-namespace hosts (build1 + target1..3, each with its own sshd and /opt; prefix ``hsd``,
workdir ``.hotswap-demo/`` in the repo) is brought up, then, through the real playbooks:

  1. deploy 1.0.0 (first install, cold by nature) with playbooks/deploy.yml
  2. hot deploy 2.0.0 while a load client writes to every target: no failed request, every acked write kept,
     same OS process, new code running
  3. deploy 3.0.0, whose vm.args changed (OTP cannot apply that hot): cold, health-gated; downtime per host
  4. roll back with playbooks/rollback.yml (to 2.0.0)
  5. the fleet table with playbooks/status.yml

Only the playbooks' summaries are printed; full logs go to ``.hotswap-demo/logs/``.  The fleet is torn
down at the end whatever happens.  Exit status 0 only if every step did what it should.

    .venv/bin/python tests/hotswap_testlib/demo.py      (make demo)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "tests", REPO / ".venv" / "collections"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "tests" / "ansible.cfg"))

from hotswap_testlib import sample  # noqa: E402
from hotswap_testlib.ansible_run import parse_recap, run_playbook, task_results  # noqa: E402
from hotswap_testlib.fleet import Fleet, FleetError, usable  # noqa: E402

WORK = REPO / ".hotswap-demo"
LOGS = WORK / "logs"
PREFIX = "hsd"
PORT = 4040
STORE = "/opt/hotswap-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = ["/usr/bin/python3", "/opt/.hotswap/sample/agent.py", "--root", "/opt/sample", "--app", "sample"]
VERSIONS = {"1.0.0": (), "2.0.0": (), "3.0.0": ("vmargs",)}


class DemoFailed(RuntimeError):
    pass


# ------------------------------------------------------------------------------ output

T0 = time.monotonic()


def say(msg: str = "", indent: int = 0) -> None:
    pad = " " * indent
    for line in (msg.splitlines() or [""]):
        print(pad + line, flush=True)


def heading(n, title):
    say()
    say(f"[{time.monotonic() - T0:6.1f}s] == {n}. {title}")


def debug_msgs(stdout: str, task_contains: str) -> list:
    """The ``msg`` of every debug task whose name contains ``task_contains`` (the JSON results that
    run_playbook's pinned result format prints)."""
    return [r["result"]["msg"] for r in task_results(stdout)
            if r["task"] and task_contains in r["task"] and isinstance(r["result"], dict) and "msg" in r["result"]]


def show_msgs(stdout, task_contains, indent=4, label=""):
    for m in debug_msgs(stdout, task_contains):
        text = "\n".join(m) if isinstance(m, list) else str(m).strip()
        if text.endswith(":"):      # the build's edge list is empty on a first install
            text += " no relup edges (no host runs an earlier version)"
        say(label + text, indent)


# ------------------------------------------------------------------------------ the demo

class Demo:
    def __init__(self):
        self.fleet = Fleet(WORK / "fleet", targets=len(TARGETS), build=True, prefix=PREFIX)
        self.srcs = {}
        self.n = 0

    # -- ansible
    def extra(self, version=None, **kw):
        e = {
            "hotswap_app": "sample",
            "hotswap_build_store": STORE,
            "hotswap_artifact_dir": str(WORK / "artifacts"),
            "hotswap_report_dir": str(WORK / "reports"),
            "hotswap_env": {"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-demo"},
            "hotswap_service_manager": "daemon",
        }
        if version:
            e["hotswap_source"] = self.srcs[version]
        e.update(kw)
        return e

    def playbook(self, name, extra, label):
        self.n += 1
        log = LOGS / f"{self.n:02d}-{label}.log"
        pb = REPO / "playbooks" / name
        shown = [f"-e {k}={extra[k]}" for k in ("hotswap_app", "hotswap_source", "hotswap_version", "hotswap_mode")
                 if k in extra]
        say(f"$ ansible-playbook -i {self.fleet.inventory_path} playbooks/{name} {' '.join(shown)} "
            f"(+ store, env, service manager)".replace(str(REPO) + "/", ""), 2)
        t0 = time.monotonic()
        rc, out, err = run_playbook(self.fleet, pb, extra)
        dt = time.monotonic() - t0
        log.write_text(out + ("\n--- stderr ---\n" + err if err.strip() else ""))
        recap = parse_recap(out)
        failed = {h: c for h, c in recap.items() if c.get("failed") or c.get("unreachable")}
        say(f"({dt:.1f}s, rc {rc}; full log: {log.relative_to(REPO)})", 4)
        if rc != 0:
            say(out[-3000:], 4)
            raise DemoFailed(f"{name} exited {rc}; failed hosts: {failed or '?'} (see {log})")
        return out

    def deploy(self, version, label, **kw):
        return self.playbook("deploy.yml", self.extra(version, **kw), label)

    # -- hosts
    def client(self, host):
        return sample.SampleClient(self.fleet.host(host).address, PORT)

    def agent_status(self, host):
        r = self.fleet.run(host, AGENT + ["status"], check=False)
        return json.loads(r.stdout)

    def journal_last(self, host):
        r = self.fleet.run(host, "tail -n 1 /opt/.hotswap/sample/journal.jsonl", check=False)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {}

    def expect(self, cond, what):
        if not cond:
            raise DemoFailed(what)

    # -- steps
    def up(self):
        heading(0, "Bring up the demo fleet")
        ok, why = usable()
        if not ok:
            raise DemoFailed(f"the demo fleet cannot run here: {why}")
        WORK.mkdir(exist_ok=True)
        shutil.rmtree(LOGS, ignore_errors=True)
        LOGS.mkdir(parents=True)
        self.fleet.up()
        say(self.fleet.describe().replace(str(REPO) + "/", ""), 4)
        for v, flags in VERSIONS.items():
            d = WORK / ("src-" + v)
            shutil.rmtree(d, ignore_errors=True)
            self.srcs[v] = str(sample.materialise(d, v, flags))
        say("sample app sources: " + ", ".join(f"{v}{' (FLAGS ' + ','.join(f) + ': vm.args changes)' if f else ''}"
                                               for v, f in VERSIONS.items())
            + f" in {WORK.relative_to(REPO)}/src-*", 4)

    def first_install(self):
        heading(1, "Deploy 1.0.0: first install on three empty hosts (build on build1, then canary, 50%, rest)")
        out = self.deploy("1.0.0", "deploy-1.0.0")
        show_msgs(out, "Show the edges and verdicts", label="built: ")
        show_msgs(out, "Print the rollout summary")
        for t in TARGETS:
            with self.client(t) as c:
                v, cfg = c.vsn(), c.config()
                for _ign in range(5):
                    c.add(2)
            self.expect(v == "1.0.0", f"{t} answers version {v}, not 1.0.0")
            self.expect(cfg == "hello-demo", f"{t}: runtime config {cfg!r} (runtime.exs not applied)")
        say("every target answers 1.0.0, runtime config from hotswap_env applied; wrote 5 x ADD 2 to each", 4)

    def hot_under_load(self):
        heading(2, "Hot deploy 2.0.0 while every target takes writes (ADD 1 every 2 ms)")
        before = {}
        for t in TARGETS:
            with self.client(t) as c:
                before[t] = (c.get(), self.agent_status(t)["os_pid"])
        loads = {t: sample.LoadClient(self.fleet.host(t).address, PORT, interval=0.002, max_duration=600).start()
                 for t in TARGETS}
        try:
            out = self.deploy("2.0.0", "hot-2.0.0", hotswap_mode="hot")
        finally:
            stats = {t: ld.stop() for t, ld in loads.items()}
        show_msgs(out, "Show the edges and verdicts", label="built: ")
        show_msgs(out, "Print the rollout summary")
        say("under load:", 4)
        bad = []
        for t in TARGETS:
            s = stats[t]
            with self.client(t) as c:
                total, code, vsn, state = c.get(), c.code(), c.vsn(), c.state()
            pid = self.agent_status(t)["os_pid"]
            kept = total == before[t][0] + s["acked"]
            say(f"{t}: {s['acked'] + s['failed']} requests, failed {s['failed']}, slowest "
                f"{s['max_latency'] * 1000:.0f} ms; state preserved: acked writes {s['acked']} + {before[t][0]} before "
                f"= GET {total} {'(yes)' if kept else '(NO)'}; OS pid {pid} "
                f"{'unchanged' if pid == before[t][1] else 'CHANGED from ' + str(before[t][1])}; "
                f"now {vsn}, code {code}, state {state.split()[0]}", 6)
            if s["failed"] or not kept or pid != before[t][1] or vsn != "2.0.0":
                bad.append(t)
        self.expect(not bad, f"hot deploy under load went wrong on {bad}")

    def cold(self):
        heading(3, "Deploy 3.0.0: its vm.args changed, which OTP cannot apply hot -> cold restart, health-gated")
        pollers = {t: _Poller(self.fleet.host(t).address, PORT).start() for t in TARGETS}
        try:
            out = self.deploy("3.0.0", "cold-3.0.0")
        finally:
            time.sleep(0.3)
            polls = {t: p.stop() for t, p in pollers.items()}
        show_msgs(out, "Show the edges and verdicts", label="built: ")
        show_msgs(out, "Print the rollout summary")
        say("downtime per host (port probed every 5 ms from the controller; the agent's own figure):", 4)
        for t in TARGETS:
            j = self.journal_last(t)
            p = polls[t]
            with self.client(t) as c:
                vsn, total = c.vsn(), c.get()
            say(f"{t}: {p['downtime_ms']:.0f} ms without an answer ({len(p['outages'])} outage); agent downtime_ms "
                f"{j.get('downtime_ms')}; now {vsn}; GET {total} (in-memory state does not survive a restart)", 6)
            self.expect(vsn == "3.0.0", f"{t} runs {vsn} after the cold deploy")

    def rollback(self):
        heading(4, "Roll back to 2.0.0 with playbooks/rollback.yml (cold again: vm.args differ)")
        out = self.playbook("rollback.yml", self.extra(None, hotswap_version="2.0.0"), "rollback-2.0.0")
        show_msgs(out, "Print the rollout summary")
        for t in TARGETS:
            with self.client(t) as c:
                v = c.vsn()
            self.expect(v == "2.0.0", f"{t} runs {v} after the rollback")
        say("every target answers 2.0.0", 4)

    def status(self):
        heading(5, "Fleet status with playbooks/status.yml")
        out = self.playbook("status.yml", {"hotswap_app": "sample"}, "status")
        show_msgs(out, "Print what each host runs")
        show_msgs(out, "Warn when the fleet runs mixed versions")

    def down(self):
        heading(6, "Tear the fleet down")
        self.fleet.down()
        say("fleet down (namespaces, links, sshds and nodes removed)", 4)


class _Poller:
    """Probe host:port (connect + PING) every 5 ms; outages from first failed probe to next good one."""

    def __init__(self, host, port, period=0.005):
        self.host, self.port, self.period = host, port, period
        self.outages, self._since = [], None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _ok(self):
        try:
            with socket.create_connection((self.host, self.port), timeout=0.25) as s:
                s.settimeout(0.25)
                s.sendall(b"PING\n")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def _run(self):
        while not self._stop.is_set():
            t = time.monotonic()
            if not self._ok():
                self._since = self._since or t
            elif self._since is not None:
                self.outages.append(time.monotonic() - self._since)
                self._since = None
            self._stop.wait(self.period)

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return {"outages": self.outages, "downtime_ms": sum(self.outages) * 1000, "still_down": self._since is not None}


def _on_term(*_ign):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="beam.hotswap demo on a local fleet")
    ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)  # kill PID: still tear the fleet down
    say("beam.hotswap demo: build, first install, hot upgrade under load, cold deploy, rollback, status")
    d = Demo()
    rc = 0
    try:
        d.up()
        d.first_install()
        d.hot_under_load()
        d.cold()
        d.rollback()
        d.status()
    except (DemoFailed, FleetError) as e:
        say()
        say(f"DEMO FAILED: {e}")
        rc = 1
    except Exception:  # noqa: BLE001 - an unexpected error is a failed demo, with its traceback
        say()
        say("DEMO FAILED with an unexpected error:")
        say(traceback.format_exc(), 2)
        rc = 1
    except KeyboardInterrupt:
        say("interrupted")
        rc = 130
    finally:
        try:
            d.down()
        except Exception as e:  # noqa: BLE001
            say(f"tearing the fleet down failed: {e} (python -m hotswap_testlib.fleet_cli down --dir "
                f"{WORK / 'fleet'} --prefix {PREFIX})")
            rc = rc or 1
    say()
    say(f"[{time.monotonic() - T0:6.1f}s] demo {'succeeded' if rc == 0 else 'FAILED'}; logs in {LOGS.relative_to(REPO)}/")
    return rc


if __name__ == "__main__":
    sys.exit(main())
