"""Benchmark: wall time of a hot deploy of a pre-built artifact.

Fleet: build1 + 7 targets (prefix ``hsb``).  target1..6 take the playbook deploys, target7 the
hand-written baseline.  All run 1.0.0 first; 2.0.0 is published once (tests/integration/playbooks/build.yml),
so every measured ``deploy.yml`` finds it in the controller's artifact dir and its build step does not
contact the build host.

  baseline    on target7, over the fleet's ssh config (ControlMaster, like Ansible's ControlPersist):
              scp the upgrade package into releases/, then one ssh per step: tar -x as root (the release
              tree is root's), bin/sample rpc set_unpacked, install_release, make_permanent.
              Reset between runs: install_release 1.0.0 + make_permanent + set_removed 2.0.0 (untimed).
  playbook    ansible-playbook playbooks/deploy.yml 1.0.0 -> 2.0.0 (hotswap_mode=hot) on 1, 3, 6 hosts with the
              default batches [1, 50%, 100%], and 6 hosts in one batch.  The 1-host runs alternate with the
              baseline runs (same load on a shared machine).  Reset between runs: the agent's hot rollback
              to 1.0.0 on each host (untimed).
  connections every timed run (baseline and playbook) starts with warm ssh control masters: the baseline's
              is opened before the first run, the playbook's by an untimed `ansible -m raw -a true` on its hosts.
              Ansible runs with the settings of docs/ansible.cfg.example (pipelining, ControlPersist, forks 20).
  profile     every measured deploy runs with a small generated callback (tests/output/bench/callback_plugins)
              that stamps each play and task start: seconds per task (start to the next start, summed over
              batches), start-up to the first play; an empty play's wall time for comparison.

Goals: 1 host <= 1.5 x the baseline; 6 hosts <= 1.3 x 1 host.

    .venv/bin/python bench/deploy_time.py [--reps N]
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_VS_BASELINE = 1.5
GOAL_6_VS_1 = 1.3
PLAY_HOSTS = [f"target{i}" for i in range(1, 7)]
BASE_HOST = "target7"
BASE_CM = Path("/run/hotswap-fleet") / f"{C.PREFIX}-base-cm"   # short: unix socket paths are limited
ENV = "set -a; . /opt/.hotswap/sample/env; set +a; cd /opt/sample; "
# Seven hosts' nodes share this machine's cores with the controller: without this, each idle node's
# schedulers spin between its 1 ms ticks (BEAM's busy-wait) and the idle fleet alone keeps about two
# thirds of 2 cores busy. On real hosts that spinning uses each host's own CPU; here it is switched off
# for every node (and every `bin/sample rpc` of the baseline), so both sides of each ratio run on the
# cores the fleet leaves free.
NODE_ENV = {"SAMPLE_PORT": str(C.PORT), "SAMPLE_GREETING": "hello-bench",
            "ERL_AFLAGS": "+sbwt none +sbwtdcpu none +sbwtdio none"}


def _ssh_opts(bf):
    """The fleet's ssh config with a control master of our own (warmed before timing: the most
    favourable case for the hand-written baseline; Ansible's masters also persist between runs)."""
    return ["-F", str(bf.fleet.ssh_config_path), "-o", f"ControlPath={BASE_CM}/%C",
            "-o", "ControlMaster=auto", "-o", "ControlPersist=600"]


def _rpc(bf, host, expr):
    """One ssh session running one ``bin/sample rpc`` (raises on failure)."""
    cmd = ENV + "bin/sample rpc " + shlex.quote(expr)
    r = subprocess.run(["ssh", *_ssh_opts(bf), host, "--", cmd], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"rpc {expr!r} on {host}: rc {r.returncode}: {r.stdout[-500:]}{r.stderr[-500:]}")
    return r.stdout


def baseline_once(bf, host, pkg: Path, vsn="2.0.0"):
    """What a careful person does by hand under the same privilege model (the release tree is root's, the node
    runs as its own user and cannot unpack into it): scp the package, unpack it as root, then the node
    registers, installs and commits it (set_unpacked, install_release, make_permanent)."""
    t0 = time.monotonic()
    subprocess.run(["scp", "-q", *_ssh_opts(bf), str(pkg),
                    f"{host}:/opt/sample/releases/sample-{vsn}.tar.gz"], check=True, timeout=120,
                   stdin=subprocess.DEVNULL)
    t_copy = time.monotonic() - t0
    subprocess.run(["ssh", *_ssh_opts(bf), host, "--", f"tar -xzf /opt/sample/releases/sample-{vsn}.tar.gz -C /opt/sample"],
                   check=True, timeout=120, stdin=subprocess.DEVNULL, capture_output=True)
    _rpc(bf, host, f'{{:ok, _}} = :release_handler.set_unpacked(~c"/opt/sample/releases/{vsn}/sample.rel", [])')
    _rpc(bf, host, f'{{:ok, _, _}} = :release_handler.install_release(~c"{vsn}")')
    _rpc(bf, host, f':ok = :release_handler.make_permanent(~c"{vsn}")')
    total = time.monotonic() - t0
    with bf.client(host) as c:
        assert c.vsn() == vsn, c.vsn()
    return total, t_copy


def baseline_reset(bf, host, to="1.0.0", frm="2.0.0"):
    _rpc(bf, host, f'{{:ok, _, _}} = :release_handler.install_release(~c"{to}"); '
                   f':ok = :release_handler.make_permanent(~c"{to}"); '
                   f':ok = :release_handler.set_removed(~c"{frm}")')


def reset(bf, hosts):
    """Back to 1.0.0 on every host, in parallel, with the agent's hot rollback (untimed; faster than rollback.yml)."""
    errs = []

    def one(h):
        out = bf.agent(h, "--user", "sample", "rollback", "--version", "1.0.0", "--mode", "hot", timeout=180)
        if out.get("failed") or out.get("host_version") != "1.0.0":
            errs.append((h, out))
    ts = [threading.Thread(target=one, args=(h,)) for h in hosts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise RuntimeError(f"reset to 1.0.0 failed: {errs}")


def machine_cpu() -> float:
    """CPU seconds every process on this machine has used (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def background_cpu_rate(seconds: float = 3.0) -> float:
    """CPU seconds per second the idle fleet uses (its nodes' timers, sshd...), to subtract below."""
    m0 = machine_cpu()
    time.sleep(seconds)
    return (machine_cpu() - m0) / seconds


def playbook_deploy(bf, name, hosts, i, **kw):
    tfile = C.WORKDIR / "timer" / f"{len(hosts)}-{'one' if kw else 'batches'}-{i}.jsonl"
    C.warm_connections(bf, hosts + ["build1"])
    t0 = time.time()
    m0, c0 = machine_cpu(), children_cpu()
    t, out = bf.deploy("2.0.0", hosts=hosts, label=f"hot-{len(hosts)}{'-onebatch' if kw else ''}-{i}",
                       env=C.timer_env(tfile), hotswap_mode="hot", hotswap_env=NODE_ENV, **kw)
    cpu = {"machine": machine_cpu() - m0, "controller": children_cpu() - c0}
    if len(re.findall(r"^\s+\"target\d+\s+1\.0\.0\s+2\.0\.0\s+hot\s+changed\s", out, re.M)) < len(hosts):
        raise RuntimeError(f"{name}: not every host went 1.0.0 -> 2.0.0 hot (see the log)")
    prof = C.timer_profile(tfile, end=t0 + t)
    prof["wall"] = t
    prof["cpu"] = cpu
    return t, prof


def run(reps: int = 3) -> dict:
    res: dict = {"baseline": [], "deploys": {}, "profiles": {}}
    with C.BenchFleet("deploy_time", targets=7) as bf:
        all_hosts = PLAY_HOSTS + [BASE_HOST]
        t, _ign = bf.deploy("1.0.0", hosts=all_hosts, label="first-install", hotswap_serial=["100%"],
                            hotswap_env=NODE_ENV)
        C.log(f"  first install of 1.0.0 on 7 hosts: {t:.1f}s")
        t, _ign = bf.build_only("2.0.0", ["1.0.0"])
        C.log(f"  2.0.0 published: {t:.1f}s")
        pkg = bf.dir / "artifacts" / "sample" / "2.0.0" / "sample-2.0.0.tar.gz"
        if not pkg.exists():
            found = sorted((bf.dir / "artifacts").rglob("sample-2.0.0.tar.gz"))
            if not found:
                raise RuntimeError(f"no upgrade package sample-2.0.0.tar.gz under {bf.dir / 'artifacts'}")
            pkg = found[0]
        res["package_bytes"] = pkg.stat().st_size

        res["background_cpu_per_s"] = background_cpu_rate()
        # ansible-playbook start-up (empty play on localhost)
        res["startup"] = C.empty_playbook_seconds(bf, runs=3)
        C.log(f"  ansible-playbook start-up (empty play): {res['startup']:.2f}s")

        # 1 host: the hand-written baseline (target7) and the playbook (target1) interleaved, so that each
        # pair sees the same load on this shared machine
        BASE_CM.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = "1 host"
        res["deploys"][name] = []
        try:
            subprocess.run(["ssh", *_ssh_opts(bf), BASE_HOST, "true"], check=True, timeout=30,
                           stdin=subprocess.DEVNULL)
            for i in range(reps):
                total, copy = baseline_once(bf, BASE_HOST, pkg)
                res["baseline"].append({"total": total, "copy": copy})
                baseline_reset(bf, BASE_HOST)
                t, prof = playbook_deploy(bf, name, PLAY_HOSTS[:1], i + 1)
                res["deploys"][name].append(t)
                res["profiles"][name] = prof
                reset(bf, PLAY_HOSTS[:1])
                C.log(f"  #{i + 1}: baseline {total:.2f}s (scp {copy:.2f}s), deploy.yml 1 host {t:.2f}s")
        finally:
            subprocess.run(["ssh", *_ssh_opts(bf), "-O", "exit", BASE_HOST], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL, check=False)

        plans = [("3 hosts", PLAY_HOSTS[:3], {}), ("6 hosts", PLAY_HOSTS, {}),
                 ("6 hosts, one batch", PLAY_HOSTS, {"hotswap_serial": ["100%"]})]
        for name, hosts, kw in plans:
            res["deploys"][name] = []
            n = max(1, reps - 1) if name != "6 hosts, one batch" else 1
            for i in range(n):
                t, prof = playbook_deploy(bf, name, hosts, i + 1, **kw)
                res["deploys"][name].append(t)
                res["profiles"][name] = prof
                reset(bf, hosts)
                C.log(f"  {name} #{i + 1}: deploy.yml {t:.2f}s")
    return res


def summarise(res: dict) -> dict:
    base = statistics.median(b["total"] for b in res["baseline"])
    one = statistics.median(res["deploys"]["1 host"])
    rows = [{"what": "baseline (scp + tar + 3 ssh rpc), 1 host", "median_s": base, "min_s": min(b["total"] for b in res["baseline"]),
             "runs": len(res["baseline"]), "x_baseline": 1.0, "x_1host": None}]
    for name, ts in res["deploys"].items():
        m = statistics.median(ts)
        rows.append({"what": f"deploy.yml hot, {name}", "median_s": m, "min_s": min(ts), "runs": len(ts),
                     "x_baseline": C.ratio(m, base), "x_1host": C.ratio(m, one)})
    six = statistics.median(res["deploys"]["6 hosts"])
    return {"rows": rows, "baseline": base, "one": one, "six": six,
            "one_vs_base": one / base, "six_vs_one": six / one,
            "goal_one_met": one / base <= GOAL_VS_BASELINE, "goal_six_met": six / one <= GOAL_6_VS_1}


def report(res: dict) -> str:
    s = summarise(res)
    out = [C.table(s["rows"], ["what", "median_s", "min_s", "runs", "x_baseline", "x_1host"],
                   "deploy_time — hot deploy of a pre-built 2.0.0 (baseline: hand-written scp + 3 rpc over ssh)")]
    out.append(f"goal 1 host <= {GOAL_VS_BASELINE}x baseline: {s['one_vs_base']:.2f}x "
               f"({'met' if s['goal_one_met'] else 'NOT met'}); goal 6 hosts <= {GOAL_6_VS_1}x 1 host: "
               f"{s['six_vs_one']:.2f}x ({'met' if s['goal_six_met'] else 'NOT met'})")
    out.append(f"ansible-playbook start-up (empty play): {res['startup']:.2f}s; upgrade package "
               f"{res['package_bytes'] / 1024:.0f} KiB")
    bg = res.get("background_cpu_per_s", 0.0)
    cpu_rows = []
    for key, p in res["profiles"].items():
        c = p.get("cpu")
        if c:
            hosts = max(0.0, c["machine"] - c["controller"] - bg * p["wall"])
            cpu_rows.append({"run": key, "wall_s": p["wall"], "controller_cpu_s": c["controller"],
                             "hosts_cpu_s": hosts, "cpu_busy": f"{100 * c['machine'] / ((os.cpu_count() or 1) * p['wall']):.0f}%"})
    if cpu_rows:
        out.append("")
        out.append(C.table(cpu_rows, ["run", "wall_s", "controller_cpu_s", "hosts_cpu_s", "cpu_busy"],
                           f"CPU during the last run of each (this machine's {os.cpu_count()} cores run the controller "
                           f"and every host; idle fleet's own {bg:.2f} CPU-s/s left out)"))
    for key, label in (("1 host", "1 host"), ("6 hosts", "6 hosts, default batches")):
        p = res["profiles"].get(key)
        if not p:
            continue
        tasks = sorted(p["tasks"], key=lambda x: -x["seconds"])
        out.append("")
        out.append(f"where the time goes, {label} (last run): wall {p['wall']:.2f}s = start-up to the first play "
                   f"{p['startup']:.2f}s + play set-up {p['plays_setup']:.2f}s + tasks {p['task_sum']:.2f}s + "
                   f"end {p['teardown']:.2f}s   (an empty play: {res['startup']:.2f}s)")
        top = [dict(t, share=f"{100 * t['seconds'] / p['wall']:.0f}%") for t in tasks[:10]]
        out.append(C.table(top, ["task", "seconds", "share", "runs"]))
        out.append(f"({len(tasks)} tasks; the other {max(0, len(tasks) - 10)} take "
                   f"{sum(t['seconds'] for t in tasks[10:]):.2f}s; a task's time runs from its start to the next "
                   f"task's start, summed over batches)")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="runs of the baseline and of the 1-host deploy (others: reps-1)")
    a = ap.parse_args(argv)
    res = run(a.reps)
    C.save_result("deploy_time", res)
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
