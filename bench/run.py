"""``make bench``: run every benchmark (each on its own fleet, one after the other) and print a table.

    .venv/bin/python bench/run.py [--only hot_gap,downtime,deploy_time,phoenix_pause] [--reps N]

Each benchmark is also runnable alone (``bench/hot_gap.py``, ``bench/downtime.py``, ``bench/deploy_time.py``,
``bench/phoenix_pause.py``).
Figures and ratios are printed, never judged: a goal missed is reported, not a failure.  The exit status is
non-zero only when a benchmark could not run (a playbook failed, the fleet did not come up...).
Raw results: ``tests/output/bench/*.json``; playbook logs: ``tests/output/bench/logs/``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import deploy_time  # noqa: E402
import downtime  # noqa: E402
import hot_gap  # noqa: E402
import phoenix_pause  # noqa: E402

ALL = ["hot_gap", "downtime", "deploy_time", "phoenix_pause"]


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}{unit}" if abs(v) < 10 else f"{v:.1f}{unit}"
    return f"{v}{unit}"


def summary_rows(results: dict) -> list[dict]:
    rows = []
    r = results.get("hot_gap")
    if r:
        rest = r["rows"][0]
        hot = [x for x in r["rows"] if x["phase"] in ("hot deploy", "hot rollback", "agent hot")]
        v = r["verdict"]
        rows.append({"benchmark": "hot_gap", "figure": "largest 1 ms-ticker gap during the agent's hot install",
                     "value": _fmt(v["max_gap_ms_during_op"], " ms"), "baseline": _fmt(rest["max_gap_ms"], " ms (rest)"),
                     "ratio": _fmt(C.ratio(v["max_gap_ms_during_op"], rest["max_gap_ms"]), "x"),
                     "goal": "<= 10 ms", "met": "yes" if v["gap_goal_met"] else "NO"})
        hd = next((x for x in hot if x["phase"] == "hot deploy"), None)
        if hd:
            rows.append({"benchmark": "hot_gap", "figure": "request p99 / max during deploy.yml hot",
                         "value": f"{_fmt(hd['p99_ms'])} / {_fmt(hd['max_ms'], ' ms')}",
                         "baseline": f"{_fmt(rest['p99_ms'])} / {_fmt(rest['max_ms'], ' ms')}",
                         "ratio": _fmt(C.ratio(hd["p99_ms"], rest["p99_ms"]), "x"), "goal": "-", "met": "-"})
        rows.append({"benchmark": "hot_gap", "figure": "failed requests during hot phases (acked writes kept)",
                     "value": f"{v['failed_hot']} ({'kept' if v['state_kept'] else 'LOST'})", "baseline": "-",
                     "ratio": "-", "goal": "0", "met": "yes" if v["failed_goal_met"] and v["state_kept"] else "NO"})
    r = results.get("downtime")
    if r:
        s = downtime.summarise(r)
        ph = {p["phase"]: p for p in s["phases"]}
        for name in ("cold deploy", "cold rollback"):
            p = ph[name]
            rows.append({"benchmark": "downtime", "figure": f"{name}: port down per host (agent's figure)",
                         "value": f"{_fmt(p['median_downtime_ms'], ' ms')} ({_fmt(p['agent_downtime_ms'], ' ms')})",
                         "baseline": _fmt(ph["plain restart"]["median_downtime_ms"], " ms (plain restart)"),
                         "ratio": _fmt(p["x_plain_restart"], "x"), "goal": "-", "met": "-"})
        rows.append({"benchmark": "downtime", "figure": "hot deploy: failed port probes",
                     "value": str(ph["hot deploy"]["failed_probes"]), "baseline": "-", "ratio": "-",
                     "goal": "0", "met": "yes" if s["hot_zero"] else "NO"})
    r = results.get("deploy_time")
    if r:
        s = deploy_time.summarise(r)
        rows.append({"benchmark": "deploy_time", "figure": "deploy.yml hot, 1 host (pre-built)",
                     "value": _fmt(s["one"], " s"), "baseline": _fmt(s["baseline"], " s (scp + 3 rpc)"),
                     "ratio": _fmt(s["one_vs_base"], "x"), "goal": f"<= {deploy_time.GOAL_VS_BASELINE}x",
                     "met": "yes" if s["goal_one_met"] else "NO"})
        rows.append({"benchmark": "deploy_time", "figure": "deploy.yml hot, 6 hosts (batches 1, 50%, rest)",
                     "value": _fmt(s["six"], " s"), "baseline": _fmt(s["one"], " s (1 host)"),
                     "ratio": _fmt(s["six_vs_one"], "x"), "goal": f"<= {deploy_time.GOAL_6_VS_1}x",
                     "met": "yes" if s["goal_six_met"] else "NO"})
    r = results.get("phoenix_pause")
    if r:
        for label, src, fig, goal in (("Phoenix: largest pause, 1 ms probe, during deploy.yml hot", "probe", "max_gap_ms", "-"),
                                      ("Phoenix: p99 latency, load, during deploy.yml hot", "load", "p99_ms", "-"),
                                      ("Phoenix: failed requests (load + probe) during deploy.yml hot", None, "failed", "0")):
            if src:
                value, base = r["deploy"][src][fig], r["rest"][src][fig]
                rows.append({"benchmark": "phoenix_pause", "figure": label, "value": _fmt(value, " ms"),
                             "baseline": _fmt(base, " ms (rest)"), "ratio": _fmt(C.ratio(value, base), "x"),
                             "goal": goal, "met": "-"})
            else:
                failed = r["deploy"]["load"]["failed"] + r["deploy"]["probe"]["failed"]
                rows.append({"benchmark": "phoenix_pause", "figure": label, "value": str(failed), "baseline": "-",
                             "ratio": "-", "goal": goal, "met": "yes" if failed == 0 else "NO"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ", ".join(ALL))
    ap.add_argument("--reps", type=int, default=3, help="deploy_time: runs per measurement")
    a = ap.parse_args(argv)
    chosen = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    t0 = time.monotonic()
    results, reports, crashed = {}, {}, []
    runners = {"hot_gap": (hot_gap.run, hot_gap.report),
               "downtime": (downtime.run, downtime.report),
               "deploy_time": (lambda: deploy_time.run(a.reps), deploy_time.report),
               "phoenix_pause": (phoenix_pause.run_or_raise, phoenix_pause.report)}
    for name in chosen:
        C.log(f"=== {name}")
        run, rep = runners[name]
        try:
            results[name] = run()
            C.save_result(name, results[name])
            reports[name] = rep(results[name])
            print(reports[name], flush=True)
        except Exception:  # noqa: BLE001 - report and go on with the next benchmark
            crashed.append(name)
            C.log(f"{name} could not run:\n{traceback.format_exc()}")
    print()
    print(f"beam.hotswap benchmarks — {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
          f"({__import__('os').cpu_count()} cores), {time.monotonic() - t0:.0f}s in all")
    for name in chosen:
        if name in reports:
            print()
            print(reports[name])
    print()
    print(C.table(summary_rows(results), ["benchmark", "figure", "value", "baseline", "ratio", "goal", "met"],
                  "summary (ratios against baselines measured in this run; timings on a shared machine are noisy)"))
    if crashed:
        print(f"\ncould not run: {', '.join(crashed)}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
