"""Read-only facts: relup edges a release offers, the previous release, and status reporting them."""
import pytest

from hotswap_testlib.agent_artifact import (
    RELEASES,
    RELUP,
    _cli,
    _host,
    _journal,
    _rels,
    ag,
)

# ------------------------------------------------------------------ relup edges, previous


def test_relup_edges():
    assert ag.relup_edges(RELUP) == (["1.0.0", "1.5.0"], ["1.0.0"])


def test_relup_edges_scanner_fallback():
    # something the term parser does not know (a fun as printed by ~p) still yields the edges
    text = RELUP.replace("point_of_no_return,", "#Fun<erl_eval.6.1>, $\", $}, 'a\\'b',", 1)
    with pytest.raises(ag.TermError):
        ag.parse_terms(text)
    assert ag.relup_edges(text) == (["1.0.0", "1.5.0"], ["1.0.0"])
    assert ag._relup_edges_scan(RELUP) == (["1.0.0", "1.5.0"], ["1.0.0"])


def test_relup_of_sample_builder_shape():
    """The shape systools writes for the sample app: binaries with escaped quotes, nested lists."""
    text = ('{"3.0.0",[{"2.0.0",[],[point_of_no_return]},{"1.0.0",[],[]}],'
            '[{"2.0.0",[],[{apply,{m,f,[<<"a\\"b">>]}}]}]}.\n')
    assert ag.relup_edges(text) == (["2.0.0", "1.0.0"], ["2.0.0"])


def test_previous_from_journal(tmp_path):
    h = _journal(tmp_path, [
        {"op": "first-install", "version": "1.0.0", "result": "ok"},
        {"op": "hot", "version": "2.0.0", "from": "1.0.0", "result": "ok"},
        {"op": "status", "result": "noop"},
        {"op": "cold", "version": "3.0.0", "from": "2.0.0", "result": "failed", "reverted": True},
        {"op": "hot", "version": "2.0.0", "from": "2.0.0", "result": "noop"},
    ])
    rels = _rels(("2.0.0", "permanent"), ("1.0.0", "old"), ("3.0.0", "unpacked"))
    assert ag.previous_release(h, "2.0.0", rels) == "1.0.0"
    ag.journal(h, {"op": "rollback", "version": "1.0.0", "from": "2.0.0", "result": "ok", "mode": "cold"})
    assert ag.previous_release(h, "1.0.0", _rels(("1.0.0", "permanent"), ("2.0.0", "old"))) == "2.0.0"
    # stepwise: install (knows from) then commit
    ag.journal(h, {"op": "install", "version": "3.0.0", "from": "1.0.0", "result": "ok"})
    ag.journal(h, {"op": "commit", "version": "3.0.0", "result": "ok"})
    assert ag.previous_release(h, "3.0.0", _rels(("3.0.0", "permanent"))) == "1.0.0"


def test_previous_falls_back_to_newest_old(tmp_path):
    h = _journal(tmp_path, [{"op": "first-install", "version": "1.0.0", "result": "ok"}])
    assert ag.previous_release(h, "1.0.0", _rels(("1.0.0", "permanent"))) is None
    rels = _rels(("3.0.0", "permanent"), ("1.10.0", "old"), ("1.9.0", "old"), ("4.0.0", "unpacked"))
    assert ag.previous_release(h, "3.0.0", rels) == "1.10.0"


def test_cli_status_reports_relup_and_previous(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES.replace("unpacked", "permanent_").replace("permanent}", "old}")
                                       .replace("permanent_", "permanent")))
    (tmp_path / "releases" / "2.0.0").mkdir()
    (tmp_path / "releases" / "2.0.0" / "relup").write_text(RELUP)
    rc, out, _ign = _cli(tmp_path, "status")
    assert rc == 0, out
    assert out["permanent"] == "2.0.0" and out["previous"] == "1.0.0"
    assert out["relup_down"] == ["1.0.0"] and out["relup_up"] == ["1.0.0", "1.5.0"]
