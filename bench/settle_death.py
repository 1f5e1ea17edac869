"""Benchmark: how soon after bad code goes live does a node die by itself? (what the settle window must cover)

A node dies on its own after a hot upgrade when new code crashes a supervised process often enough to exhaust
its supervisor's restart intensity: the supervisor gives up, the application stops, and a release (whose
applications are permanent) halts the VM.  How soon depends on how often the broken code runs and on the
supervisor's intensity, so this measures exactly that, on a real VM with real supervisors:

  an application (started permanent, like a release's) with a one_for_one supervisor and one gen_server doing
  periodic work every P ms; at T0 the work starts raising (what a hot upgrade to broken code does at its commit);
  the figures are the time from T0 to the supervisor giving up (the application is gone, the node serves
  nothing) and to the VM's exit (what the agent's settle watch sees: the OS process is gone), per (intensity, P) and for a process whose init/1 also
  raises once it has crashed (its restarts fail at once).

Intensities: OTP's default (1 restart in 5 s: ``supervisor`` without flags) and Elixir's (3 in 5 s:
``Supervisor.init/2`` defaults).  The settle window (``hotswap_settle_seconds``, default 3 s) catches a node that
dies within it; docs/operations.md turns these figures into the advice.

    python3 bench/settle_death.py [--reps N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PERIODS_MS = (10, 100, 500, 1000, 2000)
INTENSITIES = ((1, 5, "OTP default: 1 in 5 s"), (3, 5, "Elixir default: 3 in 5 s"))
GIVE_UP_S = 20.0  # a node still up this long after T0 survives the fault (its restarts are spread too far apart)

_APP = """{application, hsd, [{vsn, "1"}, {modules, [hsd_app, hsd_sup, hsd_w]}, {registered, []},
  {applications, [kernel, stdlib]}, {mod, {hsd_app, []}}]}.
"""
_SRC = {
    "hsd_app.erl": """-module(hsd_app).
-behaviour(application).
-export([start/2, stop/1]).
start(_, _) -> hsd_sup:start_link().
stop(_) -> ok.
""",
    "hsd_sup.erl": """-module(hsd_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).
init([]) ->
    {ok, I} = application:get_env(hsd, intensity),
    {ok, P} = application:get_env(hsd, period),
    {ok, {#{strategy => one_for_one, intensity => I, period => P},
          [#{id => w, start => {hsd_w, start_link, []}}]}}.
""",
    "hsd_w.erl": """-module(hsd_w).
-behaviour(gen_server).
-export([start_link/0, init/1, handle_call/3, handle_cast/2, handle_info/2]).
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
init([]) ->
    case persistent_term:get(hsd_broken_init, false) of
        true -> error(broken_init);
        false -> {ok, _} = application:get_env(hsd, every), tick(), {ok, 0}
    end.
tick() -> {ok, Ms} = application:get_env(hsd, every), erlang:send_after(Ms, self(), tick).
handle_info(tick, N) ->
    case persistent_term:get(hsd_live, false) of
        true ->
            case persistent_term:get(hsd_init_too, false) of
                true -> persistent_term:put(hsd_broken_init, true);
                false -> ok
            end,
            error(broken_work);
        false -> tick(), {noreply, N + 1}
    end.
handle_call(_, _, S) -> {reply, ok, S}.
handle_cast(_, S) -> {noreply, S}.
""",
}


def _build(d: Path) -> Path:
    ebin = d / "ebin"
    ebin.mkdir(parents=True, exist_ok=True)
    for name, body in _SRC.items():
        (d / name).write_text(body)
    subprocess.run(["erlc", "-o", str(ebin)] + [str(d / n) for n in _SRC], check=True, capture_output=True)
    (ebin / "hsd.app").write_text(_APP)
    return ebin


def death_s(ebin: Path, intensity: int, period: int, every_ms: int, init_too: bool) -> tuple:
    """(seconds from T0, the work starts raising, to the supervisor giving up; to the VM's exit), or (None, None)
    when it survived GIVE_UP_S."""
    ev = ("application:load(hsd), "
          f"application:set_env(hsd, intensity, {intensity}), application:set_env(hsd, period, {period}), "
          f"application:set_env(hsd, every, {every_ms}), "
          "{ok, _} = application:ensure_all_started(hsd, permanent), "
          f"persistent_term:put(hsd_init_too, {'true' if init_too else 'false'}), "
          "spawn(fun() -> erlang:monitor(process, whereis(hsd_sup)), receive _ -> io:format(\"DOWN~n\") end end), "
          "timer:sleep(300), io:format(\"LIVE~n\"), persistent_term:put(hsd_live, true).")
    # no crash dump: the figure is when the VM gives up, not how long writing a dump of it takes (a release's
    # node writes one, so its OS process outlives the figure by that long: see docs/operations.md)
    env = dict(os.environ, ERL_CRASH_DUMP_SECONDS="0")
    p = subprocess.Popen(["erl", "-noshell", "-pa", str(ebin), "-kernel", "logger_level", "none", "-eval", ev],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ebin), env=env)
    try:
        line = p.stdout.readline()
        t0 = time.monotonic()
        if "LIVE" not in line:
            raise RuntimeError(f"the test node did not start: {line!r}")
        down = {}

        def watch():
            if "DOWN" in p.stdout.readline():
                down["s"] = time.monotonic() - t0
        th = threading.Thread(target=watch, daemon=True)
        th.start()
        try:
            p.wait(timeout=GIVE_UP_S)
            exit_s = time.monotonic() - t0
            th.join(5)
            return down.get("s"), exit_s
        except subprocess.TimeoutExpired:
            return None, None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def run(reps: int = 3) -> dict:
    if not shutil.which("erlc"):
        raise RuntimeError("erlc is not on PATH: run make setup (Debian's erlang-nox erlang-dev)")
    res: dict = {"rows": []}
    with tempfile.TemporaryDirectory(prefix="hsd-") as d:
        ebin = _build(Path(d))
        for intensity, period, label in INTENSITIES:
            for init_too in (False, True):
                for every in PERIODS_MS:
                    got = [death_s(ebin, intensity, period, every, init_too) for _ign in range(reps)]
                    dead = [g for g in got if g[1] is not None]
                    gave_up = [g[0] for g in dead if g[0] is not None]
                    row = {"supervisor": label, "init also raises": "yes" if init_too else "no",
                           "work every ms": every, "runs": reps,
                           "app down after s (max)": round(max(gave_up), 2) if gave_up else None,
                           "VM exit after s (median)": round(statistics.median(g[1] for g in dead), 2) if dead else None,
                           "VM exit after s (max)": round(max(g[1] for g in dead), 2) if dead else None,
                           "survived": reps - len(dead)}
                    res["rows"].append(row)
                    C.log(f"  {label}, init raises {init_too}, every {every} ms: {got}")
    return res


def report(res: dict) -> str:
    cols = ["supervisor", "init also raises", "work every ms", "runs", "app down after s (max)",
            "VM exit after s (median)", "VM exit after s (max)", "survived"]
    return C.table(res["rows"], cols, f"settle_death — time from broken code going live to the VM's exit "
                                      f"(survived: still up {GIVE_UP_S:g} s later)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="runs per case")
    a = ap.parse_args(argv)
    res = run(a.reps)
    C.save_result("settle_death", res)
    print(report(res))
    print(json.dumps({"cores": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
