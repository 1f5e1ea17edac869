"""The Hex build path on the test fleet: an app with Hex dependencies (tests/fixtures/hex_app: jason + plug, with
telemetry, mime and plug_crypto transitively) deployed through playbooks/deploy.yml, its dependencies fetched by
the build host from the local Hex repository served on the fleet bridge (fixture ``hex_mirror``).

What the user gets: the versions mix.lock pins are the ones running; a changed lock goes live (hot when the
edge says hot, same OS process) from a dependency directory of its own; a build user without Hex, a repository
that cannot be reached, and a lock that does not match mix.exs each fail at the build with a message saying what
to do, before any target changes; with ``hotswap_hex_archive`` the build installs Hex itself; ``--check`` leaves
the build store as it was.

The tests run in file order on one fleet root (/opt/hexapp): each starts from where the previous left it.
Builds are reused (the store is keyed on the source digest): 7 playbook runs in all.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from hotswap_testlib import hexrepo
from hotswap_testlib.ansible_run import parse_recap, run_playbook, task_result
from hotswap_testlib.layout import agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "playbooks" / "deploy.yml"
FIXTURE = REPO / "tests" / "fixtures" / "hex_app"
APP = "hexapp"
ROOT = "/opt/hexapp"
PORT = 4110
# build1's own /opt (a directory of this session's fleet): a fresh store every session, so the first build
# really fetches from the mirror, and no other test module's store is touched
STORE = "/opt/hexapp-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, APP)
ENV = {"HEXAPP_PORT": str(PORT), "RELEASE_NODE": APP}
BUILD_TASK = "Build the release"

# base/ is 1.0.0; versions/VSN/ holds what changes in VSN (none for 1.2.0: a version bump only)
CHAIN = ("1.0.0", "1.1.0", "1.2.0", "1.3.0")
OLD_LIBS = "jason=1.4.1 plug=1.16.1 telemetry=1.2.1 mime=2.0.7 plug_crypto=2.1.1"
NEW_LIBS = "jason=1.4.5 plug=1.16.1 telemetry=1.2.1 mime=2.0.7 plug_crypto=2.1.1"
_LOCK_ENTRY = re.compile(r'^  "(\w+)": \{:hex, :\w+, "([^"]+)", "([0-9a-f]{64})", .*"hexpm", "([0-9a-f]{64})"\},$', re.M)


def materialise(dest: Path, version: str, like: str | None = None, jason: str | None = None) -> Path:
    """Write the app to ``dest`` (a fresh directory): base/ plus the overlays of CHAIN up to ``like``
    (default ``version``), ``@version`` set to ``version``; ``jason`` replaces the jason requirement."""
    like = like or version
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(FIXTURE / "base", dest)
    for v in CHAIN[1:CHAIN.index(like) + 1]:
        if (FIXTURE / "versions" / v).is_dir():
            shutil.copytree(FIXTURE / "versions" / v, dest, dirs_exist_ok=True)
    mix = dest / "mix.exs"
    text = re.sub(r'@version "[^"]*"', f'@version "{version}"', mix.read_text())
    if jason:
        text, n = re.subn(r'\{:jason, "[^"]*"\}', '{:jason, "%s"}' % jason, text)
        assert n == 1, text
    mix.write_text(text)
    return dest


def lock_entries(project: Path) -> dict[str, tuple[str, str, str]]:
    """{package: (version, inner checksum, outer checksum)} of the project's mix.lock."""
    return {m.group(1): m.group(2, 3, 4) for m in _LOCK_ENTRY.finditer((project / "mix.lock").read_text())}


def lock_key(project: Path) -> str:
    """The name of the build's dependency directory for the project's mix.lock (docs/building.md)."""
    return hashlib.sha256((project / "mix.lock").read_bytes()).hexdigest()[:16]


class Play:
    def __init__(self, rc, stdout, stderr, seconds):
        self.rc, self.stdout, self.stderr, self.seconds = rc, stdout, stderr, seconds
        self.out = stdout + "\n" + stderr      # Ansible prints a task's warnings on stderr
        self.recap = parse_recap(stdout)

    def __str__(self):
        return f"rc={self.rc} recap={self.recap} ({self.seconds:.0f} s)\n{self.stdout[-5000:]}\n{self.stderr[-2500:]}"


@pytest.fixture(scope="module")
def hx(fleet, hex_mirror, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hexapp")
    timings: dict[str, float] = {}

    def source(name: str, version: str, **kw) -> Path:
        dest = tmp / "src" / name
        return dest if dest.exists() else materialise(dest, version, **kw)

    def deploy(name: str, src: Path, build_env: dict, check: bool = False, args=(), **kw) -> Play:
        ev = {"hotswap_app": APP, "hotswap_root": ROOT, "hotswap_source": str(src), "hotswap_build_store": STORE,
              "hotswap_artifact_dir": str(tmp / "artifacts"), "hotswap_report_dir": str(tmp / "reports"),
              "hotswap_service_manager": "daemon", "hotswap_env": dict(ENV), "hotswap_build_env": build_env}
        ev.update(kw)
        t0 = time.monotonic()
        rc, out, err = run_playbook(fleet, DEPLOY, ev, check=check, args=list(args), timeout=1200)
        p = Play(rc, out, err, time.monotonic() - t0)
        timings[name] = round(p.seconds, 1)
        (tmp / "plays").mkdir(exist_ok=True)
        (tmp / "plays" / (re.sub(r"\W+", "_", name) + ".log")).write_text(p.out)
        print(f"--- {name}: rc={rc} in {p.seconds:.1f} s")
        print("\n".join(x for x in p.out.splitlines() if '"msg"' in x or "FAILED" in x or "WARNING" in x)[-4000:])
        return p

    yield {"tmp": tmp, "source": source, "deploy": deploy, "mirror": hex_mirror, "repo": hex_mirror["repo"]}
    print("hex build fleet: playbook seconds", timings, "total", round(sum(timings.values()), 1))


def _status(fleet, host):
    return json.loads(fleet.run(host, AGENT + ["status"]).stdout)


def _statuses(fleet):
    return {t: _status(fleet, t) for t in TARGETS}


def _ask(fleet, host, line, wait=10.0):
    """One request of the app's line protocol (retried while the port is not open yet)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection((fleet.host(host).address, PORT), timeout=5) as s:
                s.sendall(line.encode() + b"\n")
                return s.makefile("rb").readline().decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _on_every_target(fleet, version, libs):
    for t in TARGETS:
        assert _ask(fleet, t, "VSN") == version, t
        assert _ask(fleet, t, "LIBS") == libs, t
        assert _ask(fleet, t, "JSON") == '{"ok":true,"query":{"a":"1","b":"x"}}', t


def _untouched(fleet, before, version):
    """Every target still runs ``version`` as permanent, in the same OS process, and answers."""
    after = _statuses(fleet)
    for t in TARGETS:
        a = after[t]
        assert a["node_up"] and (a["running"], a["permanent"]) == (version, version), (t, a)
        assert a["os_pid"] == before[t]["os_pid"], (t, "the node was restarted", before[t]["os_pid"], a["os_pid"])
        assert _ask(fleet, t, "VSN") == version
    return after


def _failed_at_the_build(p: Play):
    """The play stopped at the build host: no target reached the rollout."""
    assert p.rc != 0 and p.recap.get("build1", {}).get("failed") == 1, str(p)
    assert "PLAY [Upgrade the targets in batches]" not in p.stdout, str(p)
    assert all(p.recap.get(t, {}).get("failed", 0) == 0 for t in TARGETS), str(p)


def _store(fleet) -> Path:
    """The build store, seen from the controller."""
    return fleet.opt_dir("build1") / Path(STORE).relative_to("/opt")


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, size, mode and mtime (a directory's mtime changes with its entries)."""
    out = {".": (os.stat(root).st_mtime_ns,)}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _tarballs(log: list[str], start: int) -> list[str]:
    return sorted(os.path.basename(x) for x in log[start:] if x.startswith("/tarballs/"))


# --------------------------------------------------------------------------- tests

def test_first_install_builds_the_locked_hex_versions_fetched_from_the_mirror(fleet, hx):
    src = hx["source"]("v1", "1.0.0")
    locked = lock_entries(src)
    assert {n: v[0] for n, v in locked.items()} == dict(x.split("=") for x in OLD_LIBS.split()), locked
    for name, (vsn, inner, outer) in locked.items():    # the tracked lock fits this run's repository
        assert hx["repo"].checksums[(name, vsn)] == (inner, outer), (name, vsn, "rebuild the fixture's mix.lock")
    log = hx["mirror"]["log"]
    start = len(log)

    p = hx["deploy"]("1.0.0 first install", src, hx["mirror"]["build_env"])

    assert p.rc == 0, str(p)
    assert re.search(r'"msg": "hexapp 1\.0\.0: *"', p.out), str(p)               # built, no edge yet
    for t in TARGETS:     # the plan before the rollout, the summary after it
        assert f"{t}: nothing -> 1.0.0: install (no release on the host: first install)" in p.out, str(p)
        assert f"{t}: install because no release on the host: first install" in p.out, str(p)
    assert "has no mix.lock" not in p.out and "Hex is not installed" not in p.out
    st = _statuses(fleet)
    assert all(s["node_up"] and s["running"] == "1.0.0" for s in st.values()), st
    _on_every_target(fleet, "1.0.0", OLD_LIBS)
    assert all("/lib/jason-1.4.1/" in _ask(fleet, t, "WHICH Jason.Encode") for t in TARGETS)
    # the build host fetched exactly the locked tarballs from the mirror (the Hex cache was empty)
    assert _tarballs(log, start) == sorted(f"{n}-{v[0]}.tar" for n, v in locked.items()), log[start:]


def test_a_changed_lock_goes_live_from_a_dependency_directory_of_its_own(fleet, hx):
    v1, v2 = hx["source"]("v1", "1.0.0"), hx["source"]("v2", "1.1.0")
    assert lock_entries(v2)["jason"][0] == "1.4.5" and lock_key(v1) != lock_key(v2)
    before = _statuses(fleet)
    log = hx["mirror"]["log"]
    start = len(log)

    p = hx["deploy"]("1.1.0 new lock", v2, hx["mirror"]["build_env"])

    assert p.rc == 0, str(p)
    m = re.search(r'"msg": "hexapp 1\.1\.0: 1\.0\.0 -> (hot|cold)([^"]*)"', p.out)
    assert m, str(p)
    verdict = m.group(1)
    # the printed verdict is the manifest's, and the rollout did what it says, on every host
    manifest = json.loads((hx["tmp"] / "artifacts" / APP / "1.1.0" / "manifest.json").read_text())
    edge = next(e for e in manifest["edges"] if e["from"] == "1.0.0")
    assert edge["verdict"] == verdict, (edge, m.group(0))
    assert "jason" in edge["changed_apps"], edge
    after = _statuses(fleet)
    for t in TARGETS:
        assert after[t]["node_up"] and (after[t]["running"], after[t]["permanent"]) == ("1.1.0", "1.1.0"), after[t]
        assert f"{t}: 1.0.0 -> 1.1.0: {verdict} (" in p.out, str(p)                     # the plan
        assert re.search(rf"{t}: {verdict} because ", p.out), str(p)                      # the summary
        if verdict == "hot":
            assert after[t]["os_pid"] == before[t]["os_pid"], (t, "restarted on a hot edge")
        else:
            assert after[t]["os_pid"] != before[t]["os_pid"] and edge["reasons"], (t, edge)
    if verdict == "hot":
        assert "in-memory state lost (node restarted) on: no host" in p.out, str(p)
    else:
        assert re.search(r"in-memory state lost \(node restarted\) on: target", p.out), str(p)
    print("edge 1.0.0 -> 1.1.0:", verdict, edge["reasons"], edge.get("not_applied"))
    _on_every_target(fleet, "1.1.0", NEW_LIBS)
    for t in TARGETS:     # the new jason's code is what runs, not only its version number
        assert "/lib/jason-1.4.5/" in _ask(fleet, t, "WHICH Jason.Encode"), t
        assert _ask(fleet, t, "PID") == str(after[t]["os_pid"]), t
    assert "jason-1.4.5.tar" in _tarballs(log, start), log[start:]
    # the new lock got a dependency directory of its own, the old lock's is left as it was
    deps = _store(fleet) / APP / ".work" / "deps"
    assert (deps / lock_key(v2)).is_dir() and (deps / lock_key(v1)).is_dir(), sorted(os.listdir(deps))
    assert '{<<"version">>,<<"1.4.5">>}' in (deps / lock_key(v2) / "jason" / "hex_metadata.config").read_text()
    assert '{<<"version">>,<<"1.4.1">>}' in (deps / lock_key(v1) / "jason" / "hex_metadata.config").read_text()


def test_without_hex_the_build_fails_saying_what_to_do_then_hotswap_hex_archive_installs_it(fleet, hx):
    src = hx["source"]("v3", "1.2.0")
    empty_mix = hx["tmp"] / "empty-mix-home"
    empty_mix.mkdir()
    env = {"MIX_HOME": str(empty_mix), "HEX_HOME": hx["mirror"]["build_env"]["HEX_HOME"]}
    before = _statuses(fleet)

    p = hx["deploy"]("1.2.0 no Hex", src, env)

    _failed_at_the_build(p)
    assert ("the project has Hex dependencies (jason, mime, plug, plug_crypto, telemetry) but Hex is not "
            "installed for the build user") in p.out, str(p)
    assert "`mix local.hex` as that user" in p.out and "hotswap_hex_archive" in p.out, str(p)
    _untouched(fleet, before, "1.1.0")
    assert list(empty_mix.iterdir()) == []

    p = hx["deploy"]("1.2.0 hotswap_hex_archive", src, env, args=["-v"], hotswap_hex_archive=str(hx["repo"].archive))

    assert p.rc == 0, str(p)
    r = task_result(p.stdout, BUILD_TASK, "build1")
    assert r and r["status"] == "changed" and r["result"].get("hex_installed") == f"hex-{hexrepo.HEX_VSN}", r
    assert re.search(r'"hex_installed": "hex-2\.5\.1"', p.out), str(p)
    assert (empty_mix / "archives" / f"hex-{hexrepo.HEX_VSN}").is_dir()
    assert re.search(r'"msg": "hexapp 1\.2\.0: [^"]*\b1\.1\.0 -> hot', p.out), str(p)
    _on_every_target(fleet, "1.2.0", NEW_LIBS)
    after = _statuses(fleet)
    assert all(after[t]["os_pid"] == before[t]["os_pid"] for t in TARGETS), (before, after)


def test_an_unreachable_repository_fails_the_build_saying_what_to_do(fleet, hx):
    src = hx["source"]("v4", "1.3.0")     # a lock no build has fetched (telemetry 1.3.0)
    assert lock_entries(src)["telemetry"][0] == "1.3.0"
    s = socket.socket()
    s.bind((fleet.controller_address, 0))
    closed = s.getsockname()[1]
    s.close()                             # nothing listens there: connections are refused
    home = hx["tmp"] / "down-user"
    env = hexrepo.configure_build_user(home / ".mix", home / ".hex", f"http://{fleet.controller_address}:{closed}",
                                       hx["repo"])
    env["HEX_HTTP_TIMEOUT"] = "5"
    before = _statuses(fleet)

    p = hx["deploy"]("1.3.0 repository down", src, env)

    _failed_at_the_build(p)
    assert "could not fetch the project's Hex dependencies" in p.out, str(p)
    assert "mix hex.repo set hexpm --url URL" in p.out and "HEX_MIRROR / HEX_HOME in hotswap_build_env" in p.out
    assert "econnrefused" in p.out, str(p)             # mix's own output follows the explanation
    _untouched(fleet, before, "1.2.0")


def test_a_lock_that_does_not_match_mix_exs_fails_the_build_naming_the_dependency(fleet, hx):
    src = hx["source"]("v5", "1.4.0", like="1.0.0", jason="== 1.4.5")   # the lock says 1.4.1
    assert lock_entries(src)["jason"][0] == "1.4.1" and '{:jason, "== 1.4.5"}' in (src / "mix.exs").read_text()
    before = _statuses(fleet)

    p = hx["deploy"]("1.4.0 lock mismatch", src, hx["mirror"]["build_env"])

    _failed_at_the_build(p)
    assert ("mix.lock does not match mix.exs: fetching the dependencies changed the locked entry (jason); "
            "run `mix deps.get` in the project, commit the updated mix.lock and deploy again") in p.out, str(p)
    assert not (_store(fleet) / APP / "1.4.0").exists()
    _untouched(fleet, before, "1.2.0")


def test_check_mode_with_a_new_lock_changes_nothing_in_the_store(fleet, hx):
    src = hx["source"]("v4", "1.3.0")
    store = _store(fleet)
    snapshot = _tree(store)
    before = _statuses(fleet)

    p = hx["deploy"]("1.3.0 --check", src, hx["mirror"]["build_env"], check=True)

    assert p.rc == 0, str(p)
    m = re.search(r'"msg": "hexapp 1\.3\.0: [^"]*\b1\.2\.0 -> (hot|cold)[^"]*\(check mode: would build\)"', p.out)
    assert m, str(p)
    assert all(f"{t}: 1.2.0 -> 1.3.0: {m.group(1)} (" in p.out for t in TARGETS), str(p)
    assert _tree(store) == snapshot, sorted(set(_tree(store).items()) ^ set(snapshot.items()))
    assert not (store / APP / ".work" / "deps" / lock_key(src) / "telemetry").exists()
    _untouched(fleet, before, "1.2.0")
    _on_every_target(fleet, "1.2.0", NEW_LIBS)
