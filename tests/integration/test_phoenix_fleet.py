"""The Phoenix app (tests/fixtures/phoenix_app, release ``shop``) deployed through deploy.yml and rollback.yml
to three targets, its Hex dependencies fetched from the tests' local Hex mirror (``hotswap_build_env`` =
hex_mirror["build_env"]; each version pins its library set with the fixture's tracked mix.lock), under
continuous HTTP load on every target (phoenix.Load: fresh requests, a keep-alive connection, slow requests in
flight, multipart uploads).

Acceptance, per hot step: 0 failed requests of every kind; the keep-alive connection and the slow requests in
flight complete; the same OS process on every target; the GenServer's state transformed by code_change with
every acknowledged write kept; every bumped library's new version live (Application.spec AND every changed
module of it loaded from the new release's lib directory with the new md5); uploads working after; runtime.exs
values kept; Jason.Encoder consolidated and encoding the app's struct.

Tests run in file order on one release root (/opt/shop, port 4120, build store /opt/shop-store on build1,
private to the fleet): 1.0.0 installed; 2.0.0 hot; rollback.yml to 1.0.0 hot; 2.0.0 again then 3.0.0 (a
controller change) hot.  The Bandit variant has its own root, node, port and store (/opt/shopb, 4130,
/opt/shopb-store) and starts from nothing: 1.0.0 -> 2.0.0 may be refused with a reason before anything
changes, go cold with a stated reason, or go hot with 0 failed requests; never rc 0 with a broken listener.

The app is built as users write it: no appup of its own (not the fixture's hand-written phoenix_pubsub one,
``pubsub_appup``), ``:sasl`` in extra_applications and nothing else (docs/writing-upgradable-code.md, web
servers).  The new versions are published on the build host (tests/integration/playbooks/build.yml) before the
load starts, so each load window holds the rollout, not the compile; deploy.yml then finds them in the store.
Each play's output and the nodes' logs of a step with errors are kept in tests/output/phoenix_fleet/.

    HOTSWAP_FLEET_PREFIX=hsp .venv/bin/pytest tests/integration/test_phoenix_fleet.py -x -q -s

Diagnosis only: HOTSWAP_PHOENIX_OLD_CODE=kill runs the same tests and checks with ``hotswap_old_code=kill`` on
every play (the acceptance is the product's default, ``refuse``).
"""
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from hotswap_testlib import phoenix
from hotswap_testlib.ansible_run import parse_recap, run_playbook, task_results
from hotswap_testlib.layout import agent_dir

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
BUILD = os.path.join(REPO, "tests", "integration", "playbooks", "build.yml")
TARGETS = ["target1", "target2", "target3"]
# playbook outputs and node logs of each step, kept after the fleet is gone (tests/output is not tracked)
OUTPUT = os.path.join(REPO, "tests", "output", "phoenix_fleet")
GREETING = "hello-from-runtime-exs"
WARMUP_S = 3.0      # load before the play starts
COOLDOWN_S = 3.0    # load after it ended
ITEM_JSON = '{"sku":"abc","qty":2}'
OLD_CODE = os.environ.get("HOTSWAP_PHOENIX_OLD_CODE")   # diagnosis only (module docstring)


class Site:
    """One deployment of ``shop``: release root, node name, port, build store and server."""

    def __init__(self, fleet, hex_mirror, tmp, name, root, port, store, server):
        self.fleet, self.hex_mirror, self.tmp = fleet, hex_mirror, tmp
        self.name, self.root, self.port, self.store, self.server = name, root, port, store, server
        self.agent = ["/usr/bin/python3", agent_dir(root) + "/agent.py", "--root", root, "--app", phoenix.APP]
        # run_erl keeps 5 logs of 100 kB by default: seconds of this app's request log under load; keep more
        self.env = {"SHOP_PORT": str(port), "SHOP_GREETING": GREETING, "SHOP_IP": "0.0.0.0", "RELEASE_NODE": name,
                    "RUN_ERL_LOG_MAXSIZE": "20000000", "RUN_ERL_LOG_GENERATIONS": "10"}
        self.runs = 0
        self.module_diffs = {}   # (from, to) -> {lib: {"changed": [...], "added": [...], "removed": [...]}}

    # -- sources and playbooks
    def src(self, version):
        d = self.tmp / f"src-{self.name}-{version}"
        if not d.exists():
            phoenix.materialise(d, version, deps="hex", server=self.server)
        return str(d)

    def extra(self, version=None, **kw):
        self.runs += 1
        e = {"hotswap_app": phoenix.APP, "hotswap_root": self.root, "hotswap_build_store": self.store,
             "hotswap_artifact_dir": str(self.tmp / f"artifacts-{self.name}"),
             "hotswap_report_dir": str(self.tmp / f"reports-{self.name}" / f"{self.runs:02d}"),
             "hotswap_service_manager": "daemon", "hotswap_env": dict(self.env),
             "hotswap_build_env": dict(self.hex_mirror["build_env"])}
        if version:
            e["hotswap_source"] = self.src(version)
        if OLD_CODE:
            e["hotswap_old_code"] = OLD_CODE
        e.update(kw)
        return e

    def play(self, playbook, extra, label):
        t0 = time.monotonic()
        rc, out, err = run_playbook(self.fleet, playbook, extra, timeout=2400)
        dt = time.monotonic() - t0
        os.makedirs(OUTPUT, exist_ok=True)
        path = os.path.join(OUTPUT, f"{self.name}-{self.runs:02d}-{re.sub(r'[^a-z0-9.]+', '-', label.lower())}.log")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(out + "\n--- stderr ---\n" + err)
        print(f"\n=== {self.name}: {label}: rc {rc} in {dt:.0f}s (log: {path}); recap {parse_recap(out)}")
        for msg in _messages(out):
            print(f"    message: {msg[:1500]}")
        for line in self.report(extra):
            print(f"    | {line}")
        for said in sorted(set(re.findall(r"hotswap_old_code=kill: [^\"\\]{0,600}", out)))[:3]:
            print(f"    said: {said}")
        return rc, out + "\n--- stderr ---\n" + err

    def deploy(self, version, label=None, **kw):
        return self.play(DEPLOY, self.extra(version, **kw), label or f"deploy {version}")

    def rollback(self, version, label=None, **kw):
        return self.play(ROLLBACK, self.extra(None, hotswap_version=version, **kw), label or f"rollback {version}")

    def publish(self, version, bases):
        """Build ``version`` with relup edges from ``bases`` on build1 (no target touched)."""
        rc, out = self.play(BUILD, self.extra(version, hotswap_build_bases=list(bases)),
                            f"publish {version} (edges from {', '.join(bases)})")
        assert rc == 0, _tail(out)

    @staticmethod
    def report(extra):
        """The lines of the play's JSON rollout report (per host: from, to, action, result, and why)."""
        files = sorted(glob.glob(os.path.join(extra["hotswap_report_dir"], "*.json")))
        if not files:
            return []
        with open(files[-1], encoding="utf-8") as fh:
            return json.load(fh).get("lines", [])

    # -- hosts
    def addr(self, host):
        return self.fleet.host(host).address

    def status(self, host):
        return json.loads(self.fleet.run(host, self.agent + ["status"], timeout=120).stdout)

    def statuses(self):
        return {t: self.status(t) for t in TARGETS}

    def get(self, host, path, timeout=15.0):
        return phoenix.get_json(self.addr(host), self.port, path, timeout=timeout)

    def post_json(self, host, path, body):
        status, got = phoenix.request(self.addr(host), self.port, "POST", path, body=json.dumps(body).encode(),
                                      headers={"Content-Type": "application/json", "Accept": "application/json"},
                                      timeout=30)
        if status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}: {got[:300]!r}")
        return json.loads(got)

    def logs(self, host):
        """{path: (size, its first 256 bytes)} of the node's logs (``bin/shop daemon``: run_erl's
        tmp/log/erlang.log.N, which run_erl rewrites in turn: a file whose head changed was rewritten)."""
        pattern = os.path.join(str(self.fleet.opt_dir(host)), self.root[len("/opt/"):], "tmp", "log", "erlang.log.*")
        out = {}
        for f in glob.glob(pattern):
            with open(f, "rb") as fh:
                out[f] = (os.path.getsize(f), fh.read(256))
        return out

    def keep_logs(self, host, label):
        """Copy the node's logs into the test's tmp directory (the fleet's files go with it); returns where."""
        dest = os.path.join(OUTPUT, "node-logs", f"{self.name}-{self.runs:02d}-{label}-{host}")
        os.makedirs(dest, exist_ok=True)
        for f in self.logs(host):
            shutil.copy(f, dest)
        return dest

    def log_errors(self, host, since, limit=4):
        """The node's error reports after ``since`` (a :meth:`logs` snapshot), one per kind (pids and numbers
        aside), up to ``limit`` kinds, each with the lines that follow it and how often it was logged."""
        text = ""
        for f, (size, head) in sorted(self.logs(host).items()):
            old_size, old_head = since.get(f, (0, b""))
            with open(f, "rb") as fh:
                fh.seek(old_size if old_size <= size and head[:len(old_head)] == old_head else 0)
                text += fh.read().decode("utf-8", "replace")
        lines = text.splitlines()
        kinds = {}
        for i, line in enumerate(lines):
            if "[error]" in line:
                report = " / ".join(x.strip() for x in lines[i:i + 12] if x.strip())
                key = re.sub(r"#PID<[^>]+>|#Reference<[^>]+>|\d+", "N", report.split("[error]", 1)[1])[:200]
                if key in kinds:
                    kinds[key][1] += 1
                elif len(kinds) < limit:
                    kinds[key] = [report[:1500], 1]
        return [f"{n}x: {report}" for report, n in kinds.values()]

    def lib_dir(self, host, lib, vsn):
        """lib/NAME-VSN/ebin of the release root, as the controller sees the host's private /opt."""
        return os.path.join(str(self.fleet.opt_dir(host)), self.root[len("/opt/"):], "lib", f"{lib}-{vsn}", "ebin")


class Checks:
    """Every failed check of a step, so one run shows all of them, then one assertion."""

    def __init__(self, what):
        self.what, self.failures = what, []

    def check(self, cond, msg):
        if not cond:
            self.failures.append(msg if isinstance(msg, str) else repr(msg))
        return bool(cond)

    def done(self):
        assert not self.failures, f"{self.what}: {len(self.failures)} check(s) failed:\n" + "\n".join(
            "- " + f[:2500] for f in self.failures)


@pytest.fixture(scope="module")
def shop(fleet, hex_mirror, tmp_path_factory):
    problems = phoenix.check_locks(hex_mirror["repo"])
    if problems:
        pytest.fail("the tracked locks (tests/fixtures/phoenix_app/locks) do not match this run's Hex repository: "
                    + "; ".join(problems) + " -- write them again with phoenix.make_locks", pytrace=False)
    tmp = tmp_path_factory.mktemp("phoenix")
    return {"cowboy": Site(fleet, hex_mirror, tmp, "shop", "/opt/shop", 4120, "/opt/shop-store", "cowboy"),
            "bandit": Site(fleet, hex_mirror, tmp, "shopb", "/opt/shopb", 4130, "/opt/shopb-store", "bandit"),
            "facts": {}}


# ------------------------------------------------------------------------------------------------ helpers

def _tail(out, n=5000):
    return out[-n:]


def _messages(out):
    """The ``msg`` of every failed task result in a playbook's output (the agent's refusal lands there)."""
    msgs = []
    for r in task_results(out):
        if r["status"] in ("fatal", "failed") and isinstance(r["result"], dict) and r["result"].get("msg"):
            msgs.append(f"[{r['host']}] {r['result']['msg']}")
    return msgs


def _beam_md5(paths):
    """{path: md5 (lower-case hex)} of .beam files, as :erlang.module_info(:md5) gives it (beam_lib:md5/1)."""
    if not paths:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(paths) + "\n")
        listing = fh.name
    try:
        code = ('{ok, B} = file:read_file(os:getenv("BEAMS")), '
                'lists:foreach(fun(P) -> {ok, {_, M}} = beam_lib:md5(binary_to_list(P)), '
                'io:format("~s ~s~n", [P, binary:encode_hex(M)]) end, '
                'binary:split(B, <<"\\n">>, [global, trim_all])), halt().')
        p = subprocess.run(["erl", "-noshell", "-eval", code], env=dict(os.environ, BEAMS=listing),
                           capture_output=True, text=True, timeout=300, check=True)
    finally:
        os.unlink(listing)
    return {ln.rsplit(" ", 1)[0]: ln.rsplit(" ", 1)[1].lower() for ln in p.stdout.splitlines() if " " in ln}


def _module_diff(site, host, frm, to):
    """Per library whose version differs between releases ``frm`` and ``to`` (the app itself included): the
    modules whose code differs (md5), those only in ``to`` and those only in ``frm``, read from both lib
    directories on ``host``.  Cached per edge (a later step may have pruned a release)."""
    key = (frm, to)
    if key in site.module_diffs:
        return site.module_diffs[key]
    old = dict(phoenix.libset(frm, site.server), shop=frm)
    new = dict(phoenix.libset(to, site.server), shop=to)
    out = {}
    for lib in sorted(set(old) | set(new)):
        if old.get(lib) == new.get(lib) or lib not in old or lib not in new:
            continue
        od, nd = site.lib_dir(host, lib, old[lib]), site.lib_dir(host, lib, new[lib])
        ob = {f[:-5]: os.path.join(od, f) for f in os.listdir(od) if f.endswith(".beam")}
        nb = {f[:-5]: os.path.join(nd, f) for f in os.listdir(nd) if f.endswith(".beam")}
        md5 = _beam_md5(sorted(set(ob.values()) | set(nb.values())))
        out[lib] = {"from": old[lib], "to": new[lib],
                    "changed": sorted(m for m in set(ob) & set(nb) if md5[ob[m]] != md5[nb[m]]),
                    "added": sorted(set(nb) - set(ob)), "removed": sorted(set(ob) - set(nb)),
                    "md5": {(v, m): md5[p] for v, d in ((old[lib], ob), (new[lib], nb)) for m, p in d.items()}}
    site.module_diffs[key] = out
    return out


def _check_modules_live(c, site, host, diff, live):
    """``live`` is the edge's side now running ("from" or "to"): each changed module's current code is loaded from
    that side's lib directory with that side's md5; modules only on the other side are not loaded.  Old code of
    a module may stay resident (connections finishing on the previous code, soft post-purge: by design, see
    docs/writing-upgradable-code.md): counted in the summary, not a failure."""
    names = sorted({m for d in diff.values() for m in d["changed"] + d["added"] + d["removed"]})
    got = site.post_json(host, "/api/modules", {"modules": names})["modules"]
    summary = {}
    for lib, d in sorted(diff.items()):
        vsn = d[live]
        present = d["changed"] + (d["added"] if live == "to" else d["removed"])
        absent = d["removed"] if live == "to" else d["added"]
        c.check(d["changed"] or d["added"] or lib == "shop",
                f"{host}: {lib} {d['from']} -> {d['to']}: no module differs, nothing to check it by")
        bad = []
        for m in present:
            want_path = f"{site.root}/lib/{lib}-{vsn}/ebin/{m}.beam"
            g = got.get(m, {})
            if not (g.get("loaded") and g.get("which") == want_path and g.get("md5") == d["md5"][(vsn, m)]):
                bad.append(f"{m}: {g} (want {want_path}, md5 {d['md5'][(vsn, m)]})")
        stale = [m for m in absent if got.get(m, {}).get("loaded")]
        c.check(not bad, f"{host}: {lib} {vsn}: {len(bad)} of {len(present)} changed module(s) not live from "
                         f"lib/{lib}-{vsn}: " + "; ".join(bad[:4]))
        c.check(not stale, f"{host}: {lib}: module(s) of the other version still loaded: {stale[:6]}")
        held = [m for m in present if got.get(m, {}).get("old_code")]
        summary[f"{lib}-{vsn}"] = f"{len(present) - len(bad)}/{len(present)} live" + (
            f" ({len(held)} with old code still resident: {', '.join(held[:3])})" if held else "")
    return summary


class Loads:
    """phoenix.Load on every target for the length of a step; figures printed on exit."""

    def __init__(self, site, tag, **kw):
        self.site = site
        self.loads = {t: phoenix.Load(site.addr(t), site.port, sku_prefix=f"{tag}-{t}", **kw) for t in TARGETS}
        self.figures = {}

    def __enter__(self):
        for ld in self.loads.values():
            ld.start()
        time.sleep(WARMUP_S)
        for ld in self.loads.values():
            ld.mark("play start")
        return self

    def __exit__(self, *exc):
        for ld in self.loads.values():
            ld.mark("play end")
        time.sleep(COOLDOWN_S)
        self.figures = {t: ld.stop() for t, ld in self.loads.items()}
        for t, ld in self.loads.items():
            for kind, k in self.figures[t]["by_kind"].items():
                starts = [r["start"] for r in ld.records if r["kind"] == kind and not r["ok"]]
                k["failed_between_s"] = (min(starts), max(starts)) if starts else None
        _print_load(self.figures)

    def check(self, c, straddle=True):
        """0 failed requests of every kind; keep-alive connections never broken by an error; slow requests all
        answered, and (``straddle``) at least one of them in flight across the version switch."""
        for t, fig in self.figures.items():
            for kind, k in fig["by_kind"].items():
                c.check(k["count"] > 0, f"{t}: no {kind} request was made")
                c.check(k["failed"] == 0, f"{t}: {k['failed']} of {k['count']} {kind} request(s) failed: "
                                          f"{k['errors']}, started between {k.get('failed_between_s')} s "
                                          f"(marks {fig['marks']}); first: {k['first_errors'][:3]}")
            broken = [x for x in fig["keepalive_conns"] if x["end"].startswith("error")]
            c.check(not broken, f"{t}: {len(broken)} keep-alive connection(s) ended by an error: {broken[:3]}")
            if straddle:
                c.check(fig["slow_straddled"], f"{t}: no slow request was in flight across the version switch")


def _print_load(figures):
    print("    load (per target; ms):")
    for t, f in figures.items():
        kinds = "  ".join(f"{k}: {v['count']} sent/{v['failed']} failed p50 {v['p50_ms']} p99 {v['p99_ms']} "
                          f"max {v['max_ms']}" for k, v in f["by_kind"].items())
        print(f"    {t}: {f['requests']} requests, {f['failed']} failed, largest gap {f['max_gap_ms']} ms at "
              f"{f['max_gap_at_s']} s, marks {f['marks']}, keep-alive conns {f['keepalive_connections']}, "
              f"slow across the switch {len(f['slow_straddled'])}, acked adds {f['acked_adds']}")
        print(f"      {kinds}")
        for k, v in f["by_kind"].items():
            if v["failed"]:
                print(f"      {k} errors: {v['errors']}, started between {v.get('failed_between_s')} s; "
                      f"first: {v['first_errors'][:3]}")
        broken = [x for x in f["keepalive_conns"] if not x["end"].startswith(("open", "server closed"))]
        if broken:
            print(f"      keep-alive connections ended by errors: {broken[:3]}")


def _snapshot(site):
    """Per target: agent status, cart view, config, before a step."""
    out = {}
    for t in TARGETS:
        out[t] = {"status": site.status(t), "state": site.get(t, "/api/state"), "config": site.get(t, "/api/config")}
    return out


def _uploads(site, host, n=3, size=1024 * 1024):
    """``n`` multipart uploads of ``size`` random bytes; returns the failures."""
    bad = []
    for i in range(n):
        data = os.urandom(size)
        body, ctype = phoenix.multipart({"note": f"after {i}"}, {"file": (f"after-{i}.bin", data)})
        try:
            status, got = phoenix.request(site.addr(host), site.port, "POST", "/api/upload", body=body,
                                          headers={"Content-Type": ctype, "Accept": "application/json"}, timeout=30)
            ans = json.loads(got) if status == 200 else {"status": status, "body": got[:300].decode("utf-8", "replace")}
            if ans.get("size") != size or ans.get("sha256") != hashlib.sha256(data).hexdigest():
                bad.append(ans)
        except (OSError, ValueError) as e:
            bad.append(f"{type(e).__name__}: {e}")
    return bad


def _check_node(c, site, host, version, before=None, acked=0, edge=None, live=None):
    """What a target must show after a step that ended on ``version``: the node up on it (same OS process as
    ``before``), the app answering, runtime.exs values, every acknowledged write kept, PubSub, protocols,
    uploads; and, when it runs ``version``, that version's controller, library versions, cart shape and
    (``edge``/``live``: the relup edge and which side of it runs) every changed module live.  A node that is
    not on ``version`` is one failure, not one per version-dependent figure."""
    st = site.status(host)
    on_version = st["node_up"] and st["running"] == version and st["permanent"] == version
    c.check(on_version, f"{host}: node_up {st['node_up']}, running {st['running']}, permanent {st['permanent']} "
                        f"(want {version}): the version-dependent checks were not run")
    if before is not None:
        pid0 = before["status"]["os_pid"]
        c.check(str(st["os_pid"]) == str(pid0), f"{host}: OS pid {pid0} -> {st['os_pid']}: the node was restarted")
        alive = site.fleet.run(host, ["test", "-d", f"/proc/{pid0}"], check=False).returncode == 0
        c.check(alive, f"{host}: /proc/{pid0} is gone")
    try:
        ver = site.get(host, "/api/version")
    except (OSError, RuntimeError, ValueError) as e:
        c.check(False, f"{host}: /api/version does not answer: {e}")
        return
    c.check(str(ver["os_pid"]) == str(st["os_pid"]), f"{host}: /api/version pid {ver['os_pid']}, agent {st['os_pid']}")
    # runtime.exs values (hotswap_env) visible, and kept across a hot step
    cfg = site.get(host, "/api/config")
    c.check(cfg.get("greeting") == GREETING and cfg.get("port") == site.port and cfg.get("endpoint_port") == site.port
            and cfg.get("endpoint_ip") == "0.0.0.0", f"{host}: runtime.exs values not as set: {cfg}")
    state = site.get(host, "/api/state")
    cart, feed = state["cart"], state["feed"]
    if before is not None:
        # every acknowledged write kept; PubSub delivered every add to Shop.Feed
        want_adds = before["state"]["cart"]["adds"] + acked
        c.check(cart["adds"] >= want_adds and cart["total_qty"] == cart["adds"],
                f"{host}: cart adds {cart['adds']} total_qty {cart['total_qty']}, want >= {want_adds} "
                f"({before['state']['cart']['adds']} before + {acked} acknowledged): acknowledged writes lost")
        c.check(feed["events"] == cart["adds"], f"{host}: Shop.Feed heard {feed['events']} PubSub events for "
                                                f"{cart['adds']} adds")
    prot = site.get(host, "/api/protocols")
    c.check(prot.get("jason_encoder_consolidated") is True and prot.get("item") == ITEM_JSON
            and prot.get("item_impl") == "Jason.Encoder.Shop.Item", f"{host}: /api/protocols {prot}")
    bad = _uploads(site, host)
    c.check(not bad, f"{host}: uploads after the step failed: {bad[:3]}")
    if not on_version:
        return
    c.check(ver["vsn"] == version, f"{host}: /api/version says {ver['vsn']}, the agent {version}")
    c.check(ver["controller"] == ("c3" if version == "3.0.0" else "c1"), f"{host}: controller {ver['controller']}")
    if version == "3.0.0":
        hello = site.get(host, "/api/hello")
        c.check(hello.get("hello") == f"{GREETING} from shop (v3 controller)", f"{host}: /api/hello {hello}")
    # the cart's state has the version's shape (code_change ran, up or down)
    schema = 2 if phoenix.VERSION_SET[version] == "new" else 1
    keys = ["adds", "lines", "schema"] if schema == 2 else ["adds", "items"]
    c.check(cart["schema"] == schema and cart["keys"] == keys,
            f"{host}: cart state schema {cart['schema']} keys {cart['keys']} (want {schema}, {keys}): code_change")
    # every library of the release at its version (Application.spec vsn) ...
    libs = site.get(host, "/api/libs")
    loaded = {k: v for k, v in libs["versions"].items() if v is not None}
    want = phoenix.libset(version, site.server)
    c.check(loaded == want, f"{host}: library versions loaded differ from the {version} set: "
                            + ", ".join(f"{k} {loaded.get(k)} (want {want.get(k)})"
                                        for k in sorted(set(loaded) | set(want)) if loaded.get(k) != want.get(k)))
    # ... and every module that differs between the edge's two sides loaded from this side's lib directory
    if edge is not None:
        try:
            diff = _module_diff(site, host, *edge)
        except FileNotFoundError as e:
            c.check(False, f"{host}: cannot compare the modules of {edge[0]} and {edge[1]}: {e}")
        else:
            print(f"    {host}: modules live: {_check_modules_live(c, site, host, diff, live)}")


def _hot_step(site, what, action, version, diff_edge=None, live=None, tag="hot"):
    """Run ``action`` (a play) under load on every target; every acceptance check of a hot step, then one
    assertion listing every failure."""
    c = Checks(what)
    before = _snapshot(site)
    logs = {t: site.logs(t) for t in TARGETS}
    with Loads(site, tag) as loads:
        rc, out = action()
    c.check(rc == 0, f"the play exited {rc}; messages: {_messages(out)[:4] or _tail(out, 2500)}")
    # a slow request across the switch is only expected when the play switched the version
    loads.check(c, straddle=rc == 0)
    for t in TARGETS:
        _check_node(c, site, t, version, before[t], loads.figures[t]["acked_adds"], diff_edge, live)
    for t in TARGETS:
        errors = site.log_errors(t, logs[t])
        if errors:
            print(f"    {t}: node log errors during the step (logs kept in {site.keep_logs(t, tag)}): {errors}")
        if any(f"{t}:" in f and ("failed" in f or "error" in f) for f in c.failures):
            c.check(not errors, f"{t}: the node logged errors during the step; first: {errors}")
    c.done()


# ------------------------------------------------------------------------------------------------ cowboy

def test_1_first_install_of_1_0_0_on_every_target(shop):
    site = shop["cowboy"]
    rc, out = site.deploy("1.0.0", label="first install 1.0.0")
    assert rc == 0, _tail(out)
    c = Checks("first install")
    for t in TARGETS:
        phoenix.wait_up(site.addr(t), site.port, timeout=30)
        c.check(site.get(t, "/") == {"ok": True}, f"{t}: GET / did not answer ok")
        _check_node(c, site, t, "1.0.0")
    c.done()


def test_2_hot_upgrade_1_0_0_to_2_0_0_under_load(shop):
    site = shop["cowboy"]
    site.publish("2.0.0", ["1.0.0"])
    _hot_step(site, "1.0.0 -> 2.0.0 hot", lambda: site.deploy("2.0.0", label="deploy 2.0.0 hot", hotswap_mode="hot"),
              "2.0.0", diff_edge=("1.0.0", "2.0.0"), live="to", tag="up")


def test_3_rollback_to_1_0_0_hot_under_load(shop):
    site = shop["cowboy"]
    _hot_step(site, "rollback 2.0.0 -> 1.0.0 hot",
              lambda: site.rollback("1.0.0", label="rollback 1.0.0 hot", hotswap_mode="hot"),
              "1.0.0", diff_edge=("1.0.0", "2.0.0"), live="from", tag="down")


def test_4_successive_hot_upgrades_2_0_0_again_then_3_0_0(shop):
    site = shop["cowboy"]
    _hot_step(site, "1.0.0 -> 2.0.0 hot, again", lambda: site.deploy("2.0.0", label="deploy 2.0.0 again", hotswap_mode="hot"),
              "2.0.0", diff_edge=("1.0.0", "2.0.0"), live="to", tag="again")
    site.publish("3.0.0", ["2.0.0"])
    _hot_step(site, "2.0.0 -> 3.0.0 hot", lambda: site.deploy("3.0.0", label="deploy 3.0.0 hot", hotswap_mode="hot"),
              "3.0.0", diff_edge=("2.0.0", "3.0.0"), live="to", tag="c3")


# ------------------------------------------------------------------------------------------------ bandit

def test_5_bandit_1_0_0_to_2_0_0_never_ends_ok_with_a_broken_listener(shop):
    """Refused before anything changes (same version, same OS process, listener serving, a reason given), or
    cold with a stated reason, or hot with 0 failed requests; what happened is printed and asserted."""
    site = shop["bandit"]
    rc, out = site.deploy("1.0.0", label="bandit: first install 1.0.0")
    assert rc == 0, _tail(out)
    c0 = Checks("bandit first install")
    for t in TARGETS:
        phoenix.wait_up(site.addr(t), site.port, timeout=30)
        _check_node(c0, site, t, "1.0.0")
    c0.done()
    site.publish("2.0.0", ["1.0.0"])
    before = _snapshot(site)
    with Loads(site, "bandit") as loads:
        rc, out = site.deploy("2.0.0", label="bandit: deploy 2.0.0 (hotswap_mode auto)")
    after = site.statuses()
    moved = [t for t in TARGETS if after[t]["running"] == "2.0.0"]
    restarted = [t for t in TARGETS if str(after[t]["os_pid"]) != str(before[t]["status"]["os_pid"])]
    msgs = _messages(out)
    c = Checks("bandit 1.0.0 -> 2.0.0")
    if rc != 0:
        outcome = "refused"
        c.check(not moved and not restarted, f"the play failed but hosts changed: on 2.0.0 {moved}, restarted "
                                             f"{restarted}: {msgs[:3]}")
        c.check(any(re.search(r"refused: \S", m) for m in msgs) and "nothing was installed" in out,
                f"the play failed without saying why it refused before installing: {msgs[:3] or _tail(out, 2500)}")
        loads.check(c, straddle=False)
        for t in TARGETS:
            _check_node(c, site, t, "1.0.0", before[t], loads.figures[t]["acked_adds"])
            c.check(not [r for r in after[t]["releases"] if r["version"] == "2.0.0"],
                    f"{t}: 2.0.0 left in the releases after the refusal: {after[t]['releases']}")
    elif restarted:
        outcome = "cold"
        c.check(set(restarted) == set(TARGETS), f"only {restarted} restarted")
        c.check(re.search(r"cold", out) and re.search(r"in-memory state", out),
                "went cold without the plan saying so and why: " + _tail(out, 3000))
        for t in TARGETS:
            _check_node(c, site, t, "2.0.0")
    else:
        outcome = "hot"
        loads.check(c)
        for t in TARGETS:
            _check_node(c, site, t, "2.0.0", before[t], loads.figures[t]["acked_adds"], ("1.0.0", "2.0.0"), "to")
    # whatever happened: every listener serves fresh requests now
    with Loads(site, "bandit-after") as probe:
        time.sleep(2)
    for t, fig in probe.figures.items():
        c.check(fig["failed"] == 0 and fig["ok"] > 0, f"{t}: the listener does not serve after the play ({outcome}): "
                                                      f"{fig['by_kind']}")
    print(f"    bandit 1.0.0 -> 2.0.0: {outcome}; rc {rc}; on 2.0.0 {moved}; restarted {restarted}; "
          f"messages {msgs[:3]}")
    c.done()
