"""An Erlang project built with rebar3/relx (tests/fixtures/erlang_app, release ``kv_web``: Cowboy, Cowlib and
Ranch from shared/thirdparty) through deploy.yml, rollback.yml and status.yml on three targets: first install,
a hot upgrade under HTTP load that moves every library to its next version with the store's state and a
keep-alive connection opened before the deploy kept, a restart that boots the committed release (relx's start
script names the version it boots), a hot rollback, and bad input refused before anything changes.

The tests run in file order on one fleet root (/opt/kv_web): each starts from where the previous left it.
"""
import json
import os
import re
import tarfile
import threading
import time
import http.client

import pytest

from hotswap_testlib import erlang_app
from hotswap_testlib.ansible_run import parse_recap, run_playbook
from hotswap_testlib.layout import agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
APP = erlang_app.APP
ROOT = "/opt/kv_web"
PORT = 4160
STORE = "/opt/kv_web-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, APP)


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kv_web")
    srcs = {}

    def extra(version, **kw):
        if version not in srcs:
            srcs[version] = erlang_app.materialise(tmp / ("src-" + version), version, port=PORT)
        e = {"hotswap_app": APP, "hotswap_root": ROOT, "hotswap_source": str(srcs[version]),
             "hotswap_build_store": STORE, "hotswap_artifact_dir": str(tmp / "artifacts"),
             "hotswap_report_dir": str(tmp / "reports"), "hotswap_service_manager": "daemon"}
        e.update(kw)
        return e
    return {"extra": extra, "tmp": tmp}


def _status(fleet, host):
    return json.loads(fleet.run(host, AGENT + ["status"]).stdout)


def _http(fleet, host, method, path, body=None, conn=None):
    return erlang_app.http(fleet.host(host).address, PORT, method, path, body=body, conn=conn)


def _play(fleet, playbook, extra, **kw):
    rc, out, err = run_playbook(fleet, playbook, extra, timeout=1200, **kw)
    print("\n".join(x for x in (out + err).splitlines() if '"msg"' in x or "FAILED" in x or "WARNING" in x)[-4000:])
    return rc, out + "\n" + err


class _Load:
    """On one target: PUTs on fresh connections (every acknowledged key remembered; ``writes=False``: none) and
    one keep-alive connection, opened before the deploy, asked for /version every ``pace`` s (Cowboy closes a connection after
    1000 requests, and one idle for 5 s)."""

    def __init__(self, fleet, host, tag, writes=True, pace=0.1):
        self.addr, self.tag, self.pace = fleet.host(host).address, tag, pace
        self.acked, self.failed, self.versions, self.keepalive_errors, self.reconnects = [], [], [], [], 0
        self.stop_ev = threading.Event()
        self.conn = http.client.HTTPConnection(self.addr, PORT, timeout=10)
        self.versions.append(self.get())
        assert self.versions[0][0] == 200, self.versions[0]
        self.threads = [threading.Thread(target=self._keepalive, daemon=True)]
        if writes:
            self.threads.append(threading.Thread(target=self._writes, daemon=True))

    def get(self, path="/version"):
        """(status, body, x-kv header, local port of the connection that carried it, reconnects so far)"""
        self.conn.request("GET", path)
        port = self.conn.sock.getsockname()[1]
        r = self.conn.getresponse()
        body = r.read().decode()
        return r.status, body, r.getheader("x-kv"), port, self.reconnects

    def _keepalive(self):
        """A client's keep-alive: a GET the server closed the connection under is asked again on a new one
        (idempotent, as HTTP clients do); a second failure in a row is an error."""
        while not self.stop_ev.is_set():
            try:
                self.versions.append(self.get())
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.addr, PORT, timeout=10)
                self.reconnects += 1
                try:
                    self.versions.append(self.get())
                except (OSError, http.client.HTTPException) as e2:
                    self.keepalive_errors.append(f"{e!r}, then {e2!r}")
                    return
            time.sleep(self.pace)

    def ports(self):
        """the local ports of the connections that carried the answers, in order, each once"""
        out = []
        for v in self.versions:
            if not out or out[-1] != v[3]:
                out.append(v[3])
        return out

    def _writes(self):
        i = 0
        while not self.stop_ev.is_set():
            key = f"{self.tag}-{i}"
            try:
                status, _h, body = erlang_app.http(self.addr, PORT, "PUT", "/kv/" + key, body=key.encode())
                (self.acked if status == 200 and body == b"OK" else self.failed).append(key)
            except OSError as e:
                self.failed.append(f"{key}: {e}")
            i += 1
            time.sleep(0.01)

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for th in self.threads:
            th.join(15)
        self.conn.close()
        print(f"load {self.tag}: {len(self.acked)} acked, {len(self.failed)} failed, "
              f"{len(self.versions)} keep-alive answers, {self.reconnects} reconnects, errors {self.keepalive_errors}")


def _bin_version(fleet, host):
    text = fleet.run(host, ["cat", f"{ROOT}/bin/{APP}"]).stdout
    m = re.search(r'^REL_VSN="([^"]+)"', text, re.M)
    return m.group(1) if m else None


def test_a_rebar3_project_is_built_with_relx_and_first_installed_on_every_target(fleet, env):
    rc, out = _play(fleet, DEPLOY, env["extra"]("1.0.0"))
    assert rc == 0, out[-4000:]
    manifest = json.loads((env["tmp"] / "artifacts" / APP / "1.0.0" / "manifest.json").read_text())
    assert manifest["tool"] == "rebar3" and manifest["runtime"]["include_erts"], manifest
    assert erlang_app.COOKIE not in out        # the release's cookie (in its vm.args) never shows
    for t in TARGETS:
        st = _status(fleet, t)
        assert st["node_up"] and st["running"] == st["permanent"] == "1.0.0", (t, st)
        status, _h, body = _http(fleet, t, "GET", "/version")
        assert (status, body) == (200, b"1.0.0")
        assert _bin_version(fleet, t) == "1.0.0"
    rc, out = _play(fleet, DEPLOY, env["extra"]("1.0.0"))
    assert rc == 0 and all(r["changed"] == 0 for r in parse_recap(out).values()), out[-3000:]


def test_check_mode_shows_the_hot_edge_and_changes_nothing(fleet, env):
    rc, out = _play(fleet, DEPLOY, env["extra"]("1.1.0"), check=True, diff=True)
    assert rc == 0, out[-4000:]
    # kv_web's own src/kv_web.appup.src (a regex from-version) is used as written; the libraries' are generated
    assert re.search(r"appups: [^)]*kv_web shipped", out) and re.search(r"appups: [^)]*cowboy generated", out), out[-3000:]
    for t in TARGETS:
        assert re.search(t + r"\s+1\.0\.0\s+1\.1\.0\s+hot\s", out), out[-3000:]
        st = _status(fleet, t)
        assert st["running"] == st["permanent"] == "1.0.0", (t, st)


def test_a_hot_upgrade_of_every_library_under_load_keeps_state_and_an_open_connection(fleet, env):
    before = {}
    for t in TARGETS:
        for i in range(20):
            _http(fleet, t, "PUT", f"/kv/seed{i}", body=b"x")
        before[t] = _status(fleet, t)
    loads = {t: _Load(fleet, t, "hot-" + t) for t in TARGETS}
    # two more keep-alive clients on target1, slower, left running into the rollback tests
    # (paced well below Cowboy's max_keepalive, 1000 requests per connection, for the length of three tests)
    carry = env["carry"] = _Load(fleet, "target1", "carry", writes=False, pace=0.5).__enter__()
    env["busy"] = _Load(fleet, "target1", "busy", writes=False, pace=0.5).__enter__()
    for ld in loads.values():
        ld.__enter__()
    try:
        rc, out = _play(fleet, DEPLOY, env["extra"]("1.1.0", hotswap_mode="hot"))
        time.sleep(0.5)
    finally:
        for ld in loads.values():
            ld.__exit__(None, None, None)
    assert rc == 0, out[-4000:]
    # the relup loads Cowboy's protocol modules (their processes answer release_handler with sys) after the
    # last instruction that makes release_handler look at the tree, both ways
    from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms
    manifest = json.loads((env["tmp"] / "artifacts" / APP / "1.1.0" / "manifest.json").read_text())
    # the store's code_change transforms its state and is rehearsed on the host; cowboy_clock's returns the state
    # it is given (read from the debug info of what rebar3 compiled in _checkouts) and is not
    [edge] = manifest["edges"]
    assert edge["rehearse"] == {"modules": ["kv_store"], "passthrough": ["cowboy_clock"]}, edge.get("rehearse")
    with tarfile.open(env["tmp"] / "artifacts" / APP / "1.1.0" / manifest["artifacts"]["upgrade"]["file"]) as tar:
        [(_vsn, ups, downs)] = erlterms.parse_terms(tar.extractfile("releases/1.1.0/relup").read().decode())
    for _from, _descr, instrs in ups + downs:
        kinds = [i[0] if isinstance(i, tuple) else i for i in instrs]
        last_walk = max(n for n, k in enumerate(kinds) if k in ("suspend", "resume", "code_change"))
        cb_loads = [n for n, i in enumerate(instrs) if isinstance(i, tuple) and i[0] == "load" and i[1][0] == "cowboy_http"]
        assert cb_loads and cb_loads[0] > last_walk, (cb_loads, last_walk)
    for t in TARGETS:
        ld, st = loads[t], _status(fleet, t)
        assert st["node_up"] and st["running"] == st["permanent"] == "1.1.0", (t, st)
        assert st["os_pid"] == before[t]["os_pid"], (t, "the node was restarted")
        assert not ld.failed and len(ld.acked) > 20, (t, ld.failed[:5], len(ld.acked))
        # the keep-alive connection opened on 1.0.0 was never closed and never failed; after the deploy the same
        # connection is answered by 1.1.0's handler (its Cowboy process stays on the code it started with)
        for k in (ld, carry) if t == "target1" else (ld,):
            assert not k.keepalive_errors and k.reconnects == 0 and len(k.ports()) == 1, \
                (t, k.tag, k.keepalive_errors, k.reconnects, k.ports())
            assert all(v[0] == 200 for v in k.versions), (t, [v for v in k.versions if v[0] != 200][:3])
            assert k.versions[0][1] == "1.0.0" and k.versions[-1][1:3] == ("1.1.0", "1.1.0"), (t, k.versions[-1])
        assert _http(fleet, t, "GET", "/version")[1].get("x-kv") == "1.1.0"
        status, _h, body = _http(fleet, t, "GET", "/stats")
        keys, writes = re.fullmatch(rb"(\d+) keys, (\d+) writes", body).groups()
        assert int(keys) == 20 + len(ld.acked), (t, body)          # every acknowledged write kept
        assert int(writes) >= int(keys), (t, body)                   # code_change gave the state its counter
        for key in ld.acked[-3:]:
            assert _http(fleet, t, "GET", "/kv/" + key)[2] == key.encode()
        assert _bin_version(fleet, t) == "1.1.0"                    # bin/ follows the permanent release


def test_a_restart_after_the_hot_upgrade_boots_the_committed_release(fleet, env):
    t = "target3"
    fleet.run(t, AGENT + ["stop"], timeout=90)
    fleet.run(t, AGENT + ["start"], timeout=90)
    st = _status(fleet, t)
    assert st["node_up"] and st["running"] == st["permanent"] == "1.1.0", st
    assert _http(fleet, t, "GET", "/version")[2] == b"1.1.0"


def test_a_connection_on_superseded_code_still_serving_a_request_refuses_the_rollback(fleet, env):
    """The "busy" client's connection, opened on 1.0.0, runs the cowboy_http 1.1.0 replaced: it is asked for a
    slow answer, and a rollback meanwhile (old-code wait 1 s) is refused on target1 with nothing changed; the
    slow request is answered."""
    busy = env.pop("busy")
    busy.stop_ev.set()
    for th in busy.threads:
        th.join(15)
    assert not busy.keepalive_errors and len(busy.ports()) == 1, (busy.keepalive_errors, busy.ports())
    before = _status(fleet, "target1")
    slow = {}

    def ask():
        try:
            busy.conn.sock.settimeout(40)
            slow["answer"] = busy.get("/version?sleep=20000")
        except (OSError, http.client.HTTPException) as e:
            slow["error"] = repr(e)
    th = threading.Thread(target=ask, daemon=True)
    th.start()
    try:
        rc, out = _play(fleet, ROLLBACK, {"hotswap_app": APP, "hotswap_root": ROOT, "hotswap_service_manager": "daemon",
                                          "hotswap_old_code_wait": 1}, limit="target1")
    finally:
        th.join(40)
        busy.conn.close()
    assert rc != 0 and "connection process(es) still run code an earlier upgrade replaced" in out, out[-3000:]
    assert "Traceback" not in out
    st = _status(fleet, "target1")
    assert (st["running"], st["permanent"], st["os_pid"]) == ("1.1.0", "1.1.0", before["os_pid"]), st
    assert slow.get("answer", (None,))[:3] == (200, "1.1.0", "1.1.0") and slow["answer"][3] == busy.ports()[0], slow
    # nothing changed: not even the idle connection of the other client on superseded code was closed
    carry = env["carry"]
    assert len(carry.ports()) == 1 and not carry.keepalive_errors, (carry.ports(), carry.keepalive_errors)


def test_rollback_goes_back_hot_with_state_and_status_reports_it(fleet, env):
    before = {t: _status(fleet, t) for t in TARGETS}
    keys = {t: _http(fleet, t, "GET", "/stats")[2].split()[0] for t in TARGETS}
    carry = env.pop("carry")
    assert carry.ports()[-1] == carry.ports()[0] and carry.versions[-1][1] == "1.1.0", (carry.ports(), carry.versions[-1])
    try:
        rc, out = _play(fleet, ROLLBACK, {"hotswap_app": APP, "hotswap_root": ROOT, "hotswap_service_manager": "daemon"})
        time.sleep(0.5)
    finally:
        carry.__exit__(None, None, None)
    assert rc == 0, out[-4000:]
    # the keep-alive connection opened on 1.0.0 and kept through the hot upgrade still runs the cowboy_http
    # that 1.1.0 replaced: release_handler's look at the tree would move it onto other code with its old
    # state, so the rollback closed it between requests (and said so); the client asked again, never failed
    assert not carry.keepalive_errors and all(v[0] == 200 for v in carry.versions), carry.keepalive_errors
    assert carry.reconnects == 1 and len(carry.ports()) == 2, (carry.reconnects, carry.ports())
    assert carry.versions[-1][1:3] == ("1.0.0", None), carry.versions[-1]
    assert "idle connection(s) still on code an earlier upgrade replaced were closed" in out, out[-3000:]
    for t in TARGETS:
        st = _status(fleet, t)
        assert st["running"] == st["permanent"] == "1.0.0", (t, st)
        assert st["os_pid"] == before[t]["os_pid"], (t, "rolled back cold")
        status, _h, body = _http(fleet, t, "GET", "/stats")
        assert body == keys[t], (t, body)                             # code_change({down, _}) dropped the counter
        assert _bin_version(fleet, t) == "1.0.0"
    rc, out = _play(fleet, STATUS, {"hotswap_app": APP, "hotswap_root": ROOT})
    assert rc == 0, out[-3000:]
    assert "target1" in out and "1.0.0" in out and "1.1.0" in out, out[-3000:]


@pytest.mark.bad_input
def test_a_rebar3_project_without_a_relx_release_is_refused_before_anything_changes(fleet, env, tmp_path):
    src = erlang_app.materialise(tmp_path / "norelx", "1.1.0", port=PORT)
    cfg = src / "rebar.config"
    cfg.write_text(re.sub(r"\{relx, \[.*?\]\}\.\n", "", cfg.read_text(), flags=re.S).replace("{profiles, [{prod, [{relx, [{mode, prod}]}]}]}.", ""))
    before = {t: _status(fleet, t) for t in TARGETS}
    rc, out = _play(fleet, DEPLOY, dict(env["extra"]("1.1.0"), hotswap_source=str(src)))
    assert rc != 0 and "rebar.config in the source has no relx section" in out, out[-3000:]
    assert "Traceback" not in out
    rc, out = _play(fleet, DEPLOY, env["extra"]("1.1.0", hotswap_app="kv_other"))
    assert rc != 0 and "no relx release named kv_other" in out, out[-3000:]
    assert "Traceback" not in out
    for t in TARGETS:
        st = _status(fleet, t)
        assert (st["running"], st["os_pid"]) == (before[t]["running"], before[t]["os_pid"]), (t, st)
