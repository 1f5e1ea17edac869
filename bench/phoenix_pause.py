"""Benchmark: how long a hot deploy of a Phoenix app pauses it, and what it does to latency.

One target + build host (fleet prefix ``hsb``).  The Phoenix test app (tests/fixtures/phoenix_app, release
``shop`` on Cowboy) is built against the tests' local Hex repository (hotswap_testlib/hexrepo.py, served on the
fleet's bridge; ``hotswap_build_env`` points the build user's Hex at it) and installed at 1.0.0; 2.0.0 (the
newer library set: phoenix, plug, cowboy, ranch, telemetry, jason bumped, and a GenServer whose state changes
shape) is published on the build host beforehand, so the deploy's window holds the rollout, not the compile.
Then, in one run, with the same clients running throughout:

  rest         ``--rest`` seconds with nothing happening (the baseline)
  hot deploy   ``deploy.yml`` 1.0.0 -> 2.0.0 with ``hotswap_mode=hot``
  agent op     the agent's own install operation inside it (its start and end from the host's journal line)

Clients (tests/hotswap_testlib/phoenix.py): ``Load`` (fresh ``POST /api/cart/SKU`` requests, one keep-alive
connection sending ``GET /`` back to back, slow requests always in flight, multipart uploads) and a 1 ms
``Probe`` (``GET /`` on a keep-alive connection, 1 ms after each answer).  Figures per window: the largest
gap between two successive completions (of the load's short requests, and of the probe's), p99 latency,
failed requests.  Printed side by side with the ratio to the rest window; never judged on time.

A hot deploy that fails (refused, or reverted after the install) prints the figures of its window with the
agent's message, and the benchmark counts as not run.  ``--old-code kill`` measures a deploy run with
``hotswap_old_code=kill``.

    .venv/bin/python bench/phoenix_pause.py [--rest SECONDS] [--old-code refuse|kill]
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from hotswap_testlib import hexrepo, phoenix  # noqa: E402
from hotswap_testlib.ansible_run import parse_recap, task_results  # noqa: E402
from hotswap_testlib.layout import agent_dir

PORT = 4120
ROOT = "/opt/shop"
HOST = "target1"
METRICS = [  # (label, window key, figure)
    ("largest gap, load completions (ms)", "load", "max_gap_ms"),
    ("largest gap, 1 ms probe (ms)", "probe", "max_gap_ms"),
    ("p99 latency, load fresh+keep-alive (ms)", "load", "p99_ms"),
    ("p99 latency, 1 ms probe (ms)", "probe", "p99_ms"),
    ("max latency, 1 ms probe (ms)", "probe", "max_ms"),
    ("requests, load fresh+keep-alive", "load", "requests"),
    ("failed, load fresh+keep-alive", "load", "failed"),
    ("requests, 1 ms probe", "probe", "requests"),
    ("failed, 1 ms probe", "probe", "failed"),
]


class ShopBench:
    """The bench fleet, the Hex mirror on its bridge and the Phoenix app's sources."""

    def __init__(self, bf: C.BenchFleet):
        self.bf = bf
        self.dir = bf.dir
        self.build_env: dict = {}
        self._stop = None

    def fresh(self):
        """Forget what an earlier run fetched: the controller reuses a release it already holds, and this
        fleet's build store is new (its /opt), so an old artifact would be a release built by older code."""
        for d in ("artifacts", "reports"):
            shutil.rmtree(self.dir / d, ignore_errors=True)

    def hex_mirror(self):
        t0 = time.monotonic()
        work = self.dir / "hexrepo"
        work.mkdir(parents=True, exist_ok=True)
        repo = hexrepo.build_repo(work, hexrepo.build_hex_archive(work))
        problems = phoenix.check_locks(repo)
        if problems:
            raise RuntimeError("the Phoenix app's tracked locks do not match the repository: " + "; ".join(problems))
        url, self._stop = hexrepo.serve(repo, self.bf.fleet.controller_address, 0)
        self.build_env = hexrepo.configure_build_user(work / "builduser" / ".mix", work / "builduser" / ".hex",
                                                      url, repo)
        C.log(f"  Hex repository built and served on {url} in {time.monotonic() - t0:.0f}s")

    def close(self):
        if self._stop:
            self._stop()

    def src(self, version: str) -> str:
        d = self.dir / f"src-shop-{version}"
        if not d.exists():
            phoenix.materialise(d, version, deps="hex")
        return str(d)

    def extra(self, version: str, **kw) -> dict:
        e = {"hotswap_app": "shop", "hotswap_root": ROOT, "hotswap_source": self.src(version),
             "hotswap_build_store": C.STORE, "hotswap_artifact_dir": str(self.dir / "artifacts"),
             "hotswap_report_dir": str(self.dir / "reports"), "hotswap_service_manager": "daemon",
             "hotswap_env": {"SHOP_PORT": str(PORT), "SHOP_IP": "0.0.0.0", "SHOP_GREETING": "hello-bench"},
             "hotswap_build_env": self.build_env}
        e.update(kw)
        return e

    def journal_last(self) -> dict:
        r = self.bf.fleet.run(HOST, f"tail -n 1 {agent_dir(ROOT)}/journal.jsonl", check=False)
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}


def _windows(load, probe, start, end) -> dict:
    return {"load": load.window(start, end), "probe": probe.window(start, end), "seconds": end - start}


def run(rest_seconds: float = 10.0, old_code: str = "refuse") -> dict:
    res: dict = {"rest_seconds": rest_seconds, "old_code": old_code}
    with C.BenchFleet("phoenix_pause", targets=1) as bf:
        sb = ShopBench(bf)
        try:
            sb.fresh()
            sb.hex_mirror()
            dt, _ign = bf.playbook(C.DEPLOY, sb.extra("1.0.0"), "shop-first-install-1.0.0")
            C.log(f"  first install of shop 1.0.0: {dt:.1f}s")
            dt, _ign = bf.playbook(C.BUILD_ONLY, sb.extra("2.0.0", hotswap_build_bases=["1.0.0"]), "shop-build-2.0.0")
            C.log(f"  shop 2.0.0 published (edge from 1.0.0): {dt:.1f}s")
            addr = bf.addr(HOST)
            phoenix.wait_up(addr, PORT, timeout=30)
            time.sleep(1.0)
            wall_minus_mono = time.time() - time.monotonic()
            load = phoenix.Load(addr, PORT, sku_prefix="bench").start()
            probe = phoenix.Probe(addr, PORT, interval=0.001).start()
            try:
                time.sleep(1.0)                   # connections open, threads running
                r0 = time.monotonic()
                time.sleep(rest_seconds)
                r1 = d0 = time.monotonic()
                dt, out = bf.playbook(C.DEPLOY, sb.extra("2.0.0", hotswap_mode="hot", hotswap_old_code=old_code),
                                      "shop-hot-2.0.0", check=False)
                d1 = time.monotonic()
                time.sleep(1.0)
            finally:
                probe.stop()
                report = load.stop()
            res["rest"] = _windows(load, probe, r0, r1)
            res["deploy"] = _windows(load, probe, d0, d1)
            res["load_report"] = {k: report[k] for k in ("requests", "failed", "max_gap_ms", "by_kind",
                                                         "keepalive_connections", "acked_adds")}
            res["probe_errors"] = dict(probe.errors)
            op = sb.journal_last()
            res["journal"] = {k: op.get(k) for k in ("ts", "op", "ok", "from", "to", "total_ms", "install_ms",
                                                     "error", "msg") if k in op}
            recap = parse_recap(out)
            res["deploy_ok"] = bool(recap) and all(h["failed"] == 0 and h["unreachable"] == 0 for h in recap.values())
            if not res["deploy_ok"]:
                res["deploy_error"] = [f"[{r['host']}] {r['result'].get('msg')}"[:1500] for r in task_results(out)
                                       if r["status"] in ("fatal", "failed") and isinstance(r["result"], dict)][:3]
            if op.get("ts") and op.get("total_ms") is not None:
                end = datetime.datetime.fromisoformat(op["ts"]).timestamp() - wall_minus_mono
                start = end - op["total_ms"] / 1000.0
                res["agent_op"] = _windows(load, probe, start, end)
            res["version_after"] = phoenix.get_json(addr, PORT, "/api/version").get("vsn")
        finally:
            sb.close()
    return res


def rows(res: dict) -> list[dict]:
    out = []
    for label, src, fig in METRICS:
        rest = res["rest"][src][fig]
        dep = res["deploy"][src][fig]
        timed = fig.endswith("_ms")     # counts depend on the window's length: no ratio
        row = {"figure": label, "rest": rest, "hot deploy": dep, "x_rest": C.ratio(dep, rest) if timed else None}
        if "agent_op" in res:
            op = res["agent_op"][src][fig]
            row.update({"agent op": op, "op_x_rest": C.ratio(op, rest) if timed else None})
        out.append(row)
    return out


def report(res: dict) -> str:
    cols = ["figure", "rest", "hot deploy", "x_rest"] + (["agent op", "op_x_rest"] if "agent_op" in res else [])
    title = (f"phoenix_pause — Phoenix app (shop, Cowboy) 1.0.0 -> 2.0.0 hot: rest {res['rest']['seconds']:.1f}s vs "
             f"deploy.yml {res['deploy']['seconds']:.1f}s"
             + (f" vs the agent's operation {res['agent_op']['seconds'] * 1000:.0f} ms" if "agent_op" in res else "")
             + f" (hotswap_old_code={res['old_code']})")
    out = [C.table(rows(res), cols, title)]
    lr = res["load_report"]
    kinds = ", ".join(f"{k} {v['count']}/{v['failed']} failed" for k, v in lr["by_kind"].items())
    out.append(f"whole run, every request kind: {kinds}; probe errors {res['probe_errors'] or 'none'}")
    out.append(f"deploy: {'ok' if res['deploy_ok'] else 'FAILED'}; node runs {res['version_after']} after it; "
               f"journal {res['journal']}")
    if not res["deploy_ok"]:
        out.append("the hot deploy did not go through (figures above are of the attempt): "
                   + " | ".join(res.get("deploy_error") or []))
    return "\n".join(out)


def run_or_raise(rest_seconds: float = 10.0, old_code: str = "refuse") -> dict:
    """For run.py: the result when the hot deploy went through; else its report is printed and it raises
    (the benchmark could not run)."""
    res = run(rest_seconds, old_code)
    if not res["deploy_ok"]:
        C.save_result("phoenix_pause", res)
        print(report(res), flush=True)
        raise C.PlaybookFailed("phoenix_pause: the hot deploy of shop 2.0.0 failed: " + " | ".join(res.get("deploy_error") or []))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rest", type=float, default=10.0, help="seconds of the at-rest window")
    ap.add_argument("--old-code", choices=("refuse", "kill"), default="refuse", help="hotswap_old_code of the deploy")
    a = ap.parse_args(argv)
    res = run(a.rest, a.old_code)
    C.save_result("phoenix_pause", res)
    print(report(res))
    return 0 if res["deploy_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
