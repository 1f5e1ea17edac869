"""Benchmark: downtime per host, cold path vs hot path.

Fleet: build1 + 2 targets (prefix ``hsb``).  From the controller, every target's port is probed every
5 ms (connect + ``PING``, 250 ms timeout); an outage runs from the first failed probe to the first good
one after it.  Phases (all through the playbooks, default batches):

  hot deploy       deploy.yml 1.0.0 -> 2.0.0 (hot): expect no failed probe at all
  cold deploy      deploy.yml 2.0.0 -> 2.5.0 built with FLAGS vmargs (vm.args changed: OTP cannot apply it hot)
  cold rollback    rollback.yml 2.5.0 -> 2.0.0 (cold for the same reason)
  plain restart    the floor: the agent's ``stop`` then ``start`` in one ssh session, no release switch

Beside the controller's figure, the agent's own ``downtime_ms`` (from stopping the node to the new one
answering its health check) is read from each host's journal.

    .venv/bin/python bench/downtime.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

HOSTS = ["target1", "target2"]


def _phase(bf, name, action, rows):
    pollers = {h: C.PortPoller(bf.addr(h), C.PORT, period=0.005).start() for h in HOSTS}
    t0 = time.monotonic()
    try:
        action()
    finally:
        time.sleep(0.3)  # a last outage must end with a good probe
        res = {h: p.stop() for h, p in pollers.items()}
    dt = time.monotonic() - t0
    for h in HOSTS:
        j = bf.journal(h, 1)
        e = j[-1] if j else {}
        r = res[h]
        rows.append({"phase": name, "host": h, "seconds": dt, "probes": r["probes"], "failed_probes": r["failed"],
                     "outages": len(r["outages_ms"]), "downtime_ms": r["downtime_ms"],
                     "still_down": r["still_down"], "agent_op": e.get("op"), "agent_mode": e.get("mode"),
                     "agent_downtime_ms": e.get("downtime_ms"), "agent_total_ms": e.get("total_ms"),
                     "version": e.get("version") or e.get("to")})
        C.log(f"  {name} {h}: {len(r['outages_ms'])} outage(s), {r['downtime_ms']:.0f} ms down "
              f"({r['probes']} probes); agent {e.get('op')} {e.get('mode') or ''} downtime_ms={e.get('downtime_ms')}")


def run() -> dict:
    rows: list[dict] = []
    with C.BenchFleet("downtime", targets=len(HOSTS)) as bf:
        t, _ign = bf.deploy("1.0.0", label="first-install")
        C.log(f"  first install of 1.0.0: {t:.1f}s")
        # publish both versions first so the measured phases are the rollout only
        bf.build_only("2.0.0", ["1.0.0"])
        bf.build_only("2.5.0", ["2.0.0"], flags=("vmargs",))

        _phase(bf, "hot deploy", lambda: bf.deploy("2.0.0", label="hot-2.0.0", hotswap_mode="hot"), rows)
        _phase(bf, "cold deploy", lambda: bf.deploy("2.5.0", flags=("vmargs",), label="cold-2.5.0"), rows)
        _phase(bf, "cold rollback", lambda: bf.rollback("2.0.0", label="rollback-2.0.0"), rows)

        def restart():
            for h in HOSTS:
                bf.fleet.run(h, " && ".join([" ".join(C.AGENT + ["--user", "sample", "stop"]),
                                             " ".join(C.AGENT + ["--user", "sample", "start"])]),
                             timeout=120)
        _phase(bf, "plain restart", restart, rows)
        with bf.client("target1") as c:
            final = c.vsn()
    return {"rows": rows, "final_version": final}


def summarise(res: dict) -> dict:
    rows = res["rows"]

    def med(phase, key):
        v = [r[key] for r in rows if r["phase"] == phase and r.get(key) is not None]
        return statistics.median(v) if v else None
    floor = med("plain restart", "downtime_ms")
    out = []
    for ph in ("hot deploy", "cold deploy", "cold rollback", "plain restart"):
        d = med(ph, "downtime_ms")
        out.append({"phase": ph, "median_downtime_ms": d, "agent_downtime_ms": med(ph, "agent_downtime_ms"),
                    "x_plain_restart": C.ratio(d, floor) if ph != "hot deploy" else None,
                    "failed_probes": sum(r["failed_probes"] for r in rows if r["phase"] == ph)})
    return {"phases": out, "hot_zero": all(r["failed_probes"] == 0 for r in rows if r["phase"] == "hot deploy")}


def report(res: dict) -> str:
    s = summarise(res)
    cols = ["phase", "host", "seconds", "probes", "failed_probes", "outages", "downtime_ms", "agent_op",
            "agent_mode", "agent_downtime_ms", "agent_total_ms"]
    out = [C.table(res["rows"], cols, "downtime — port probed every 5 ms from the controller, per host")]
    out.append("")
    out.append(C.table(s["phases"], ["phase", "median_downtime_ms", "agent_downtime_ms", "x_plain_restart",
                                     "failed_probes"], "per phase (median over hosts; ratio vs a plain restart)"))
    out.append(f"hot path without a single failed probe: {s['hot_zero']}")
    return "\n".join(out)


def main(argv=None) -> int:
    res = run()
    C.save_result("downtime", res)
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
