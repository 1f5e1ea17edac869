"""Erlang terms: RELEASES, .rel and arbitrary terms read and written back (the agent and the controller share the code)."""
import pytest

from hotswap_testlib.agent_artifact import REL, RELEASES, ag

# ------------------------------------------------------------------ Erlang terms


def test_parse_releases():
    rels = ag.parse_releases(RELEASES)
    assert [r["version"] for r in rels] == ["2.0.0", "1.0.0"]
    assert rels[0]["status"] == "unpacked" and rels[1]["status"] == "permanent"
    assert rels[0]["libs"][1] == ("demo", "2.0.0", "/opt/demo/lib/demo-2.0.0")
    assert rels[1]["libs"][1] == ("my app", "1.0.0", "lib/my app-1.0.0")
    assert rels[0]["erts"] == "13.1.5"


def test_releases_roundtrip():
    rels = ag.parse_releases(RELEASES)
    text = ag.format_releases(rels)
    assert text.startswith("%% coding: utf-8\n")
    assert ag.parse_releases(text) == rels
    assert "'my app'" in text


def test_parse_rel():
    rel = ag.parse_rel(REL)
    assert rel["name"] == "demo" and rel["version"] == "2.0.0" and rel["erts"] == "13.1.5"
    assert rel["apps"] == [("kernel", "8.5.3"), ("stdlib", "4.2"), ("demo", "2.0.0"), ("iex", "1.14.0")]


@pytest.mark.parametrize("text,expected", [
    ('"a\\"b\\\\c\\n".', ['a"b\\c\n']),
    ("'quoted atom'.", ["quoted atom"]),
    ("[1,-2,16#ff,2.5e1].", [[1, -2, 255, 25.0]]),
    ("{a,[]}.", [("a", [])]),
    ('<<"bin">>.', [b"bin"]),
    ("<<104,105>>.", [b"hi"]),
    ("#{a => 1}.", [{"a": 1}]),
    ("[$a,$\\n].", [[97, 10]]),
    ('"ab" "cd".', ["abcd"]),
    ("%% comment\nfoo. bar.", ["foo", "bar"]),
    ('"\\x{263A}\\101".', ["\u263aA"]),
    ("[a|[b]].", [["a", "b"]]),
])
def test_parse_terms(text, expected):
    assert ag.parse_terms(text) == expected


def test_parse_terms_atom_type():
    (t,) = ag.parse_terms("{release,\"x\"}.")
    assert isinstance(t[0], ag.Atom) and not isinstance(t[1], ag.Atom)


@pytest.mark.parametrize("bad", ["[a,", "{a b}.", "\"unterminated.", "foo", "[a|b]."])
def test_parse_terms_errors(bad):
    with pytest.raises(ag.TermError):
        ag.parse_terms(bad)


def test_bad_releases_shape():
    with pytest.raises(ag.TermError):
        ag.parse_releases("[{release,\"a\"}].")
