"""The build action: checks the source on the controller, uses a verified controller copy of the same
source digest when it has every edge (the build host is not contacted), else runs the build module
(uploading the packed source when the module asks) and fetches the artifacts that differ."""
import hashlib
import json
import os
import stat
import tarfile

import pytest

from ansible_collections.beam.hotswap.plugins.action import build as action_mod
from ansible_collections.beam.hotswap.plugins.module_utils._build import tree_digest
from hotswap_testlib.action_harness import make_action, run_action


def _src(tmp_path):
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "mix.exs").write_text("defmodule X.MixProject do\nend\n")
    (src / "lib" / "x.ex").write_text("defmodule X do\nend\n")
    (src / "_build").mkdir()            # never digested nor uploaded
    (src / "_build" / "junk").write_text("x")
    return src


def _manifest(digest, version="2.0.0", edges=("1.0.0",), files=None):
    files = files or {"release": b"full", "upgrade": b"up"}
    return {"schema": 1, "app": "demo", "version": version, "source_digest": digest,
            "edges": [{"from": f, "verdict": "hot"} for f in edges],
            "artifacts": {k: {"file": "%s.tar.gz" % k, "sha256": hashlib.sha256(v).hexdigest()}
                          for k, v in files.items()}}


def _controller_copy(artifacts, manifest, files=None, private=True):
    """A copy as the action leaves it (``private``: directories 0700, files 0600) or as older ones did."""
    d = artifacts / "demo" / manifest["version"]
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps(manifest))
    for k, v in (files or {"release": b"full", "upgrade": b"up"}).items():
        (d / ("%s.tar.gz" % k)).write_bytes(v)
    for p in (artifacts, artifacts / "demo", d):
        os.chmod(p, 0o700 if private else 0o755)
    for p in d.iterdir():
        os.chmod(p, 0o600 if private else 0o644)
    return d


def _mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.mark.parametrize("case, source, needle", [
    ("no source", None, "source is required"),
    ("a directory without mix.exs", "EMPTY", "no mix.exs"),
    ("neither a directory nor a git URL", "/nonexistent/place", "neither a directory on the controller nor a git URL"),
])
def test_bad_sources_fail_before_the_build_host_is_contacted(tmp_path, case, source, needle):
    (tmp_path / "EMPTY").mkdir()
    args = {"app": "demo"}
    if source:
        args["source"] = str(tmp_path / source) if source == "EMPTY" else source
    a = make_action(action_mod.ActionModule, args)
    res = run_action(a)
    assert res["failed"] and needle in res["msg"], case
    assert not a.module_calls


def test_a_verified_controller_copy_with_every_edge_skips_the_build_host(tmp_path):
    src = _src(tmp_path)
    digest = "sha256:" + tree_digest(str(src))
    _controller_copy(tmp_path / "artifacts", _manifest(digest))
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src), "bases": ["1.0.0", "2.0.0"],
                                              "artifact_dir": str(tmp_path / "artifacts")})
    res = run_action(a)
    assert res["controller_copy"] is True and res["version"] == "2.0.0" and res["changed"] is False
    assert not a.module_calls


@pytest.mark.parametrize("case, edges, damage, bases", [
    ("a base without an edge", ("1.0.0",), False, ["0.9.0"]),
    ("a damaged artifact", ("1.0.0",), True, ["1.0.0"]),
])
def test_the_build_host_is_asked_when_the_controller_copy_is_not_enough(tmp_path, case, edges, damage, bases):
    src = _src(tmp_path)
    digest = "sha256:" + tree_digest(str(src))
    d = _controller_copy(tmp_path / "artifacts", _manifest(digest, edges=edges))
    if damage:
        (d / "upgrade.tar.gz").write_bytes(b"damaged")
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src), "bases": bases,
                                              "artifact_dir": str(tmp_path / "artifacts")},
                    module_results=[{"failed": True, "msg": "stop here"}])
    run_action(a)
    assert len(a.module_calls) == 1, case
    assert a.module_calls[0]["args"]["source_digest"] == digest


def test_the_source_is_packed_without_build_output_and_uploaded_only_when_the_module_asks(tmp_path):
    src = _src(tmp_path)
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src)},
                    module_results=[{"need_source": True}, {"failed": True, "msg": "stop"}])
    packed = []
    real_pack = a._pack

    def pack(source):
        path = real_pack(source)
        with tarfile.open(path) as t:
            packed.extend(t.getnames())
        return path
    a._pack = pack
    run_action(a)
    assert len(a.module_calls) == 2 and a.module_calls[1]["args"]["src_archive"].endswith("source.tar.gz")
    assert a._transfer_file.called
    assert "mix.exs" in packed and "lib/x.ex" in packed and not [n for n in packed if n.startswith("_build")]


def test_artifacts_are_fetched_only_when_the_controller_lacks_an_identical_copy(tmp_path):
    src = _src(tmp_path)
    digest = "sha256:" + tree_digest(str(src))
    man = _manifest(digest)
    # the controller already holds the full tarball (identical), not the upgrade package
    d = tmp_path / "artifacts" / "demo" / "2.0.0"
    d.mkdir(parents=True)
    (d / "release.tar.gz").write_bytes(b"full")
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src), "bases": ["1.0.0", "0.5.0"],
                                              "artifact_dir": str(tmp_path / "artifacts")},
                    module_results=[{"changed": True, "manifest": man, "store_dir": "/store/demo/2.0.0"}])
    fetched = []

    def fetch_file(remote, local):
        fetched.append(os.path.basename(remote))
        with open(local, "wb") as f:
            f.write(b"up" if remote.endswith("upgrade.tar.gz") else b"full")
    a._connection.fetch_file = fetch_file
    res = run_action(a)
    assert not res.get("failed"), res
    assert fetched == ["upgrade.tar.gz"] and res["fetched"] == ["upgrade.tar.gz", "manifest.json"]
    assert json.loads((d / "manifest.json").read_text()) == man


def test_a_fetched_artifact_that_does_not_match_its_sha256_is_refused(tmp_path):
    src = _src(tmp_path)
    man = _manifest("sha256:" + tree_digest(str(src)))
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src),
                                              "artifact_dir": str(tmp_path / "artifacts")},
                    module_results=[{"changed": True, "manifest": man, "store_dir": "/store"}])
    a._connection.fetch_file = lambda remote, local: open(local, "wb").write(b"tampered")
    res = run_action(a)
    assert res["failed"] and "does not match its sha256" in res["msg"]
    assert not list((tmp_path / "artifacts" / "demo" / "2.0.0").glob("*.tar.gz"))


# --------------------------------------------------------------------------- discard

@pytest.mark.parametrize("check_mode", [False, True])
def test_a_discard_without_source_runs_the_module_only_and_drops_the_controller_copy(tmp_path, check_mode):
    src = _src(tmp_path)
    d = _controller_copy(tmp_path / "artifacts", _manifest("sha256:" + tree_digest(str(src))))
    a = make_action(action_mod.ActionModule, {"app": "demo", "discard": ["2.0.0"], "bases": ["1.0.0"],
                                              "artifact_dir": str(tmp_path / "artifacts")},
                    check_mode=check_mode, module_results=[{"changed": True, "discarded": ["2.0.0"]}])
    res = run_action(a)
    assert not res.get("failed") and res["changed"] and res["discarded"] == ["2.0.0"]
    assert [c["args"] for c in a.module_calls] == [{"app": "demo", "discard": ["2.0.0"], "bases": ["1.0.0"]}]
    assert d.exists() == check_mode        # the controller copy of a discarded version goes with it


def test_a_discard_with_source_never_uses_the_controller_copy_and_is_done_once(tmp_path):
    """The controller copy of the very version being discarded would otherwise be deployed again unasked."""
    src = _src(tmp_path)
    digest = "sha256:" + tree_digest(str(src))
    d = _controller_copy(tmp_path / "artifacts", _manifest(digest))
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src), "discard": ["2.0.0"],
                                              "artifact_dir": str(tmp_path / "artifacts")},
                    module_results=[{"changed": True, "discarded": ["2.0.0"], "need_source": True},
                                    {"failed": True, "msg": "stop after the build"}])
    res = run_action(a)
    assert len(a.module_calls) == 2
    assert a.module_calls[0]["args"]["discard"] == ["2.0.0"] and "discard" not in a.module_calls[1]["args"]
    assert res["failed"] and res["discarded"] == ["2.0.0"] and res["changed"]
    assert not d.exists()


def test_a_refused_discard_keeps_the_controller_copy(tmp_path):
    src = _src(tmp_path)
    d = _controller_copy(tmp_path / "artifacts", _manifest("sha256:" + tree_digest(str(src))))
    a = make_action(action_mod.ActionModule, {"app": "demo", "discard": ["2.0.0"], "bases": ["2.0.0"],
                                              "artifact_dir": str(tmp_path / "artifacts")},
                    module_results=[{"failed": True, "msg": "refusing to discard 2.0.0"}])
    res = run_action(a)
    assert res["failed"] and d.exists()


# --------------------------------------------------------------------------- a private artifact dir (issue 15 item 8)
# The full tarball holds the release's default cookie: the artifact directory is the controller user's only.

def test_fetched_artifacts_and_the_manifest_are_private_to_the_controller_user(tmp_path):
    src = _src(tmp_path)
    man = _manifest("sha256:" + tree_digest(str(src)))
    artifacts = tmp_path / "cache" / "artifacts"        # made by the action, its missing parents too
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src), "artifact_dir": str(artifacts)},
                    module_results=[{"changed": True, "manifest": man, "store_dir": "/store/demo/2.0.0"}])

    def fetch_file(remote, local):      # as scp/sftp may: the file lands with the umask's mode
        with open(local, "wb") as f:
            f.write(b"up" if remote.endswith("upgrade.tar.gz") else b"full")
        os.chmod(local, 0o644)
    a._connection.fetch_file = fetch_file
    res = run_action(a)
    assert not res.get("failed"), res
    d = artifacts / "demo" / "2.0.0"
    assert _mode(tmp_path / "cache") == _mode(artifacts) == _mode(artifacts / "demo") == _mode(d) == 0o700
    assert sorted((p.name, _mode(p)) for p in d.iterdir()) == [
        ("manifest.json", 0o600), ("release.tar.gz", 0o600), ("upgrade.tar.gz", 0o600)]
    assert "made_private_controller" not in res


@pytest.mark.parametrize("check_mode", [False, True])
def test_an_open_artifact_dir_from_before_is_made_private_once(tmp_path, check_mode):
    src = _src(tmp_path)
    artifacts = tmp_path / "artifacts"
    d = _controller_copy(artifacts, _manifest("sha256:" + tree_digest(str(src))), private=False)
    old = _controller_copy(artifacts, _manifest("sha256:other", version="1.0.0"), private=False)
    args = {"app": "demo", "source": str(src), "bases": ["1.0.0"], "artifact_dir": str(artifacts)}
    res = run_action(make_action(action_mod.ActionModule, args, check_mode=check_mode))
    assert res["controller_copy"] and res["changed"], res
    made = set(res["made_private_controller"])
    assert made == set(str(p) for p in [artifacts, artifacts / "demo", d, old] + list(d.iterdir()) + list(old.iterdir()))
    if check_mode:
        assert _mode(d) == 0o755 and _mode(d / "release.tar.gz") == 0o644     # nothing changed
        return
    assert _mode(artifacts) == _mode(d) == _mode(old) == 0o700 and _mode(d / "release.tar.gz") == 0o600
    res = run_action(make_action(action_mod.ActionModule, args))
    assert res["changed"] is False and "made_private_controller" not in res


def test_a_store_made_private_by_the_probe_is_reported_with_the_build(tmp_path):
    """The first module call (the digest probe) may fix the store's modes; the build call after the upload
    does not repeat that: the task still says changed and lists them."""
    src = _src(tmp_path)
    a = make_action(action_mod.ActionModule, {"app": "demo", "source": str(src)},
                    module_results=[{"need_source": True, "changed": True, "made_private": ["/store/demo"]},
                                    {"failed": True, "msg": "stop"}])
    res = run_action(a)
    assert res["changed"] and res["made_private"] == ["/store/demo"]


def test_an_artifact_dir_that_holds_other_things_keeps_its_mode(tmp_path):
    """hotswap_artifact_dir set to a directory of other things (~, /tmp): only ARTIFACTS/APP and below change."""
    src = _src(tmp_path)
    artifacts = tmp_path / "artifacts"
    d = _controller_copy(artifacts, _manifest("sha256:" + tree_digest(str(src))), private=False)
    (artifacts / "notes.txt").write_text("mine")
    res = run_action(make_action(action_mod.ActionModule, {"app": "demo", "source": str(src), "bases": ["1.0.0"],
                                                           "artifact_dir": str(artifacts)}))
    assert str(artifacts) not in res["made_private_controller"] and _mode(artifacts) == 0o755
    assert _mode(artifacts / "demo") == _mode(d) == 0o700 and _mode(d / "release.tar.gz") == 0o600
