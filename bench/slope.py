"""Benchmark: how a hot deploy's cost grows with the number of hosts (wall time and CPU against N).

Fleet: build1 + 21 targets (prefix ``hsb``).  target1..20 take the playbook deploys, target21 the hand-written
baseline of ``deploy_time.py`` (scp, tar as root, 3 ``bin/sample rpc`` over ssh with a warm control master).  Every host
runs 1.0.0 first; 2.0.0 is published once, so no measured deploy builds anything.

  N hosts     ``deploy.yml`` 1.0.0 -> 2.0.0 (``hotswap_mode=hot``, one batch: ``hotswap_serial: [100%]``) on
              N = 1, 5, 10, 20 hosts, ``--reps`` times each (reset between runs: the agent's hot rollback,
              untimed).  The settle window (``hotswap_settle_seconds``) is 0 here: it is waiting, not work.
  settle      1 host with the default settle window (the role's ``hotswap_settle_seconds``) beside 1 host with 0.
  one task    ``status.yml`` (one ``beam.hotswap.facts`` task per host: one Ansible task, one ssh exec) on 1 and on
              every play host: the controller's CPU per host for one task, the unit the deploy's slope is made of.
  CPU         controller: CPU-s of this process's children (ansible-playbook, its forks and ssh clients);
              hosts: CPU-s of the whole machine minus the controller's minus the idle fleet's background
              (measured before), i.e. what the hosts' sshd, agents and nodes used.
  fit         least squares over the runs: wall s, controller CPU-s and hosts CPU-s against N.  The slopes
              are what transfers to a real fleet (cost per extra host), not this machine's seconds: its two
              cores run the controller and every host.

Goals: controller <= 0.08 CPU-s per extra host; host side <= 0.15 CPU-s per hot deploy (the hosts' slope);
1 host <= 1.25 x the baseline (settle 0).

    .venv/bin/python bench/slope.py [--reps N] [--max-hosts 20]
"""
from __future__ import annotations

import argparse
import re
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import deploy_time as D  # noqa: E402

GOAL_CONTROLLER_PER_HOST = 0.08
GOAL_HOST_PER_DEPLOY = 0.15
GOAL_VS_BASELINE = 1.25


def default_settle() -> float:
    """The upgrade role's default settle window (roles/upgrade/defaults/main.yml)."""
    text = (Path(__file__).resolve().parents[1] / "roles" / "upgrade" / "defaults" / "main.yml").read_text()
    return float(re.search(r"^hotswap_settle_seconds:\s*([0-9.]+)", text, re.M).group(1))


SIZES = (1, 5, 10, 20)


def fit(points):
    """(slope, intercept) of the least-squares line through [(x, y)]."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return slope, my - slope * mx


def _status(bf, hosts, i):
    """Controller CPU-s of ``status.yml`` (one read task per host) on ``hosts``."""
    c0 = D.children_cpu()
    bf.playbook(C.STATUS, {"hotswap_app": "sample", "hotswap_target_hosts": ",".join(hosts)},
                f"status-{len(hosts)}-{i}")
    return {"n": len(hosts), "controller": D.children_cpu() - c0}


def _deploy(bf, hosts, label, i, settle, bg):
    t, prof = D.playbook_deploy(bf, label, hosts, f"{i}-settle{settle}", hotswap_serial=["100%"],
                                hotswap_settle_seconds=settle)
    c = prof["cpu"]
    return {"n": len(hosts), "settle": settle, "wall": t, "controller": c["controller"],
            "hosts": max(0.0, c["machine"] - c["controller"] - bg * t)}


def run(reps: int = 2, max_hosts: int = 20) -> dict:
    sizes = [n for n in SIZES if n <= max_hosts]
    targets = max(sizes) + 1
    play_hosts = [f"target{i}" for i in range(1, targets)]
    base_host = f"target{targets}"
    res: dict = {"baseline": [], "runs": [], "sizes": sizes}
    with C.BenchFleet("slope", targets=targets) as bf:
        t, _ign = bf.deploy("1.0.0", hosts=play_hosts + [base_host], label="first-install", hotswap_serial=["100%"],
                            hotswap_env=D.NODE_ENV)
        C.log(f"  first install of 1.0.0 on {targets} hosts: {t:.1f}s")
        t, _ign = bf.build_only("2.0.0", ["1.0.0"])
        C.log(f"  2.0.0 published: {t:.1f}s")
        found = sorted((bf.dir / "artifacts").rglob("sample-2.0.0.tar.gz"))
        if not found:
            raise RuntimeError(f"no upgrade package sample-2.0.0.tar.gz under {bf.dir / 'artifacts'}")
        pkg = found[0]
        bg = res["background_cpu_per_s"] = D.background_cpu_rate()
        C.log(f"  idle fleet: {bg:.2f} CPU-s/s")

        # 1 host: baseline, settle 0 and the default settle interleaved (the same load on this shared machine)
        dflt = res["default_settle"] = default_settle()
        D.BASE_CM.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            subprocess.run(["ssh", *D._ssh_opts(bf), base_host, "true"], check=True, timeout=30,  # pylint: disable=protected-access
                           stdin=subprocess.DEVNULL)
            for i in range(reps):
                m0, c0 = D.machine_cpu(), D.children_cpu()
                total, _copy = D.baseline_once(bf, base_host, pkg)
                ctl = D.children_cpu() - c0
                res["baseline"].append(total)
                res.setdefault("baseline_cpu", []).append(
                    {"controller": ctl, "hosts": max(0.0, D.machine_cpu() - m0 - ctl - bg * total)})
                D.baseline_reset(bf, base_host)
                for settle in (0, dflt):
                    r = _deploy(bf, play_hosts[:1], f"1 host settle {settle}", i + 1, settle, bg)
                    res["runs"].append(r)
                    D.reset(bf, play_hosts[:1])
                C.log(f"  #{i + 1}: baseline {total:.2f}s, 1 host {res['runs'][-2]['wall']:.2f}s (settle 0), "
                      f"{res['runs'][-1]['wall']:.2f}s (settle {dflt:g})")
        finally:
            subprocess.run(["ssh", *D._ssh_opts(bf), "-O", "exit", base_host], capture_output=True,  # pylint: disable=protected-access
                           timeout=30, stdin=subprocess.DEVNULL, check=False)

        for i in range(reps):
            for hs in (play_hosts[:1], play_hosts):
                res.setdefault("status", []).append(_status(bf, hs, i + 1))

        for n in sizes[1:]:
            for i in range(reps):
                r = _deploy(bf, play_hosts[:n], f"{n} hosts", i + 1, 0, bg)
                res["runs"].append(r)
                D.reset(bf, play_hosts[:n])
                C.log(f"  {n} hosts #{i + 1}: {r['wall']:.2f}s, controller {r['controller']:.2f} CPU-s, "
                      f"hosts {r['hosts']:.2f} CPU-s")
    return res


def summarise(res: dict) -> dict:
    zero = [r for r in res["runs"] if r["settle"] == 0]
    fits = {k: fit([(r["n"], r[k]) for r in zero]) for k in ("wall", "controller", "hosts")}
    base = statistics.median(res["baseline"])
    one0 = statistics.median(r["wall"] for r in zero if r["n"] == 1)
    dflt = res.get("default_settle", 3)
    one3 = statistics.median(r["wall"] for r in res["runs"] if r["n"] == 1 and r["settle"] == dflt)
    rows = []
    for n in res["sizes"]:
        rs = [r for r in zero if r["n"] == n]
        rows.append({"hosts": n, "runs": len(rs), "wall_s": statistics.median(r["wall"] for r in rs),
                     "controller_cpu_s": statistics.median(r["controller"] for r in rs),
                     "hosts_cpu_s": statistics.median(r["hosts"] for r in rs),
                     "x_baseline": C.ratio(statistics.median(r["wall"] for r in rs), base)})
    bcpu = res.get("baseline_cpu") or [{"controller": 0.0, "hosts": 0.0}]
    rows.insert(0, {"hosts": "baseline, 1", "runs": len(res["baseline"]), "wall_s": base,
                    "controller_cpu_s": statistics.median(b["controller"] for b in bcpu),
                    "hosts_cpu_s": statistics.median(b["hosts"] for b in bcpu), "x_baseline": 1.0})
    st = res.get("status") or []
    one_task = fit([(r["n"], r["controller"]) for r in st])[0] if len({r["n"] for r in st}) > 1 else None
    return {"rows": rows, "fits": fits, "baseline": base, "one_settle0": one0, "one_settle3": one3, "one_task": one_task,
            "goals": {"controller": fits["controller"][0] <= GOAL_CONTROLLER_PER_HOST,
                      "hosts": fits["hosts"][0] <= GOAL_HOST_PER_DEPLOY,
                      "one_vs_base": one0 / base <= GOAL_VS_BASELINE}}


def report(res: dict) -> str:
    s = summarise(res)
    out = [C.table(s["rows"], ["hosts", "runs", "wall_s", "controller_cpu_s", "hosts_cpu_s", "x_baseline"],
                   f"slope — deploy.yml hot of a pre-built 2.0.0, one batch, settle 0 (medians; this machine's "
                   f"{os.cpu_count()} cores run the controller and every host)")]
    (ws, wi), (cs, ci), (hs, hi) = s["fits"]["wall"], s["fits"]["controller"], s["fits"]["hosts"]
    g = s["goals"]
    out.append(f"fit: wall {wi:.2f} s + {ws:.3f} s per host; controller {ci:.2f} CPU-s + {cs:.3f} CPU-s per extra "
               f"host (goal <= {GOAL_CONTROLLER_PER_HOST}: {'met' if g['controller'] else 'NOT met'}); hosts "
               f"{hi:.2f} CPU-s + {hs:.3f} CPU-s per hot deploy (goal <= {GOAL_HOST_PER_DEPLOY}: "
               f"{'met' if g['hosts'] else 'NOT met'})")
    if s["one_task"] is not None:
        out.append(f"one read task per host (status.yml: one Ansible task, one ssh exec): controller {s['one_task']:.3f} "
                   f"CPU-s per extra host, i.e. the deploy costs {cs / s['one_task']:.1f} such tasks per host" if s["one_task"] > 0
                   else "one read task per host: no measurable slope")
    out.append(f"1 host: baseline (scp + tar + 3 ssh rpc) {s['baseline']:.2f}s; deploy.yml {s['one_settle0']:.2f}s with settle 0 "
               f"= {s['one_settle0'] / s['baseline']:.2f}x (goal <= {GOAL_VS_BASELINE}: "
               f"{'met' if g['one_vs_base'] else 'NOT met'}), {s['one_settle3']:.2f}s with the default settle {res.get('default_settle', 3):g} s "
               f"= {s['one_settle3'] / s['baseline']:.2f}x")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="runs per fleet size and of the baseline")
    ap.add_argument("--max-hosts", type=int, default=20, help="largest N (of 1, 5, 10, 20)")
    a = ap.parse_args(argv)
    res = run(a.reps, a.max_hosts)
    C.save_result("slope", res)
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
