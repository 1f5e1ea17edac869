"""The Erlang term writer and reader round-trip any term, read OTP's own text, refuse malformed text."""
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms

A = erlterms.Atom


# --------------------------------------------------------------------------- Erlang terms

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_leaf = st.one_of(
    _text.map(A),
    _text,
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
)
terms = st.recursive(
    _leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.lists(kids, max_size=5).map(tuple)),
    max_leaves=30,
)


def _same(a, b):
    """Equality that also tells atoms from strings and tuples from lists."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=300, deadline=None)
@given(terms)
@example(A("ok"))
@example([A("it's"), "a \"quoted\"\n\\string", -1, ("", [], ())])
@example("% not a comment. ")
@example("\x01" + "7")
def test_erlterm_round_trip(term):
    text = erlterms.format_term(term)
    assert _same(erlterms.parse_terms(text + ".\n"), [term])


@settings(max_examples=100, deadline=None)
@given(st.lists(terms, min_size=1, max_size=4))
def test_erlterm_round_trip_many(ts):
    text = "%% header\n" + "".join(erlterms.format_term(t) + ".\n" for t in ts)
    assert _same(erlterms.parse_terms(text), ts)


def test_erlterm_parses_otp_style_text():
    text = '%% coding: utf-8\n{"3.0.0",\n [{"2.0.0",[],\n   [{load,{\'Elixir.X\',brutal_purge,brutal_purge}},\n' \
           '    {apply,{m,f,[<<"code">>]}}]}],\n [{"2.0.0",[],[]}]}.\n'
    [t] = erlterms.parse_terms(text)
    assert t[0] == "3.0.0" and t[1][0][0] == "2.0.0"
    assert t[1][0][2][0] == (A("load"), (A("Elixir.X"), A("brutal_purge"), A("brutal_purge")))
    assert t[1][0][2][1][1][2] == [b"code"]


@pytest.mark.parametrize("text", ["{a,b}", "{a,b.", "[1,2", "{a b}.", "'unterminated.", "@."])
def test_erlterm_rejects_malformed(text):
    with pytest.raises(erlterms.TermError):
        erlterms.parse_terms(text)


# --------------------------------------------------------------------------- names that become paths (issue 15)


@pytest.mark.parametrize("text,why", [
    ('{release,{"demo","1.0.0/../../x"},{erts,"13.1.5"},[{kernel,"8.5.3"}]}.', "version"),
    ('{release,{"demo","1.0.0"},{erts,"../../bin"},[{kernel,"8.5.3"}]}.', "ERTS version"),
    ('{release,{"demo","1.0.0"},{erts,"13.1.5"},[{\'../x\',"8.5.3"}]}.', "NAME-VSN"),
    ('{release,{"demo","1.0.0"},{erts,"13.1.5"},[{kernel,".."}]}.', "NAME-VSN"),
])
def test_parse_rel_refuses_names_that_would_be_unsafe_paths(text, why):
    with pytest.raises(erlterms.TermError) as e:
        erlterms.parse_rel(text)
    assert why in str(e.value)


def test_valid_lib():
    assert erlterms.valid_lib("kernel", "8.5.3") and erlterms.valid_lib("my app", "1.0.0-rc.1")
    for app, vsn in (("..", "1"), ("a/b", "1"), (".x", "1"), ("a", "1/2"), ("a", ".."), ("a\n", "1"), (None, "1")):
        assert not erlterms.valid_lib(app, vsn)
