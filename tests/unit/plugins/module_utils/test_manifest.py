"""The manifest check every reader applies before trusting a published release."""
import pytest

from ansible_collections.beam.hotswap.plugins.module_utils import _manifest
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms

A = erlterms.Atom


# --------------------------------------------------------------------------- manifest_errors

GOOD = {
    "schema": 1, "app": "sample", "version": "2.0.0", "source_digest": "sha256:00",
    "artifacts": {"release": {"file": "sample-2.0.0-full.tar.gz", "sha256": "a" * 64, "size": 1},
                  "upgrade": {"file": "sample-2.0.0.tar.gz", "sha256": "b" * 64, "size": 1}},
    "edges": [{"from": "1.0.0", "verdict": "hot", "reasons": []},
              {"from": "0.9.0", "verdict": "cold", "reasons": ["vm.args changed"]}],
}


def _broken(**kw):
    m = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    m["artifacts"] = {k: dict(v) for k, v in GOOD["artifacts"].items()}
    for k, v in kw.items():
        if v is KeyError:
            m.pop(k)
        else:
            m[k] = v
    return m


def test_manifest_errors_good():
    assert _manifest.manifest_errors(GOOD) == []
    assert _manifest.manifest_errors(_broken(edges=[])) == []


@pytest.mark.parametrize("manifest, needle", [
    ([], "not a JSON object"),
    (_broken(schema=KeyError), "'schema'"),
    (_broken(schema=2), "schema 2"),
    (_broken(app="Bad App"), "app"),
    (_broken(app=KeyError), "'app'"),
    (_broken(version="1.0/../../x"), "version"),
    (_broken(version="1..0"), "version"),
    (_broken(version=7), "'version'"),
    (_broken(artifacts={"upgrade": {"file": "x.tar.gz", "sha256": "b" * 64}}), "no full release"),
    (_broken(artifacts={"release": {"file": "../etc/passwd", "sha256": "a" * 64}}), "plain file name"),
    (_broken(artifacts={"release": {"file": "x.tar.gz", "sha256": "nothex"}}), "sha256"),
    (_broken(artifacts={"release": {"file": "x.tar.gz", "sha256": "a" * 64 + "\n"}}), "sha256"),
    (_broken(version="1.0.0\n"), "version"),
    (_broken(artifacts={"release": "x.tar.gz"}), "'release'"),
    (_broken(edges=[{"from": "1.0.0", "verdict": "warm"}]), "verdict"),
    (_broken(edges=[{"verdict": "hot"}]), "'from'"),
    (_broken(edges={"1.0.0": "hot"}), "'edges'"),
])
def test_manifest_errors_broken(manifest, needle):
    errs = _manifest.manifest_errors(manifest)
    assert errs, manifest
    assert any(needle in e for e in errs), errs
