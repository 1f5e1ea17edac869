"""Names and versions the agent accepts, and the order of versions (examples and properties)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotswap_testlib.agent_artifact import ag

# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("v", ["1.0.0", "2.0.0-rc.1", "1.0.0+build.5", "v3", "0"])
def test_versions_ok(v):
    assert ag.check_vsn(v) == v


@pytest.mark.parametrize("v", ["", "../1", "1..0", "1.0 ", "1;rm", "-1", ".1", 'a"b', "a#{x}", "x" * 65, "1/2", "1.0.0\n", "1.0.0\r\n"])
def test_versions_bad(v):
    with pytest.raises(ag.BadInput):
        ag.check_vsn(v)


@pytest.mark.parametrize("a,ok", [("demo", True), ("my_app", True), ("Demo", False), ("a-b", False),
                                  ("1app", False), ("a" * 65, False), ("demo\n", False)])
def test_app_names(a, ok):
    if ok:
        assert ag.check_app(a) == a
    else:
        with pytest.raises(ag.BadInput):
            ag.check_app(a)


def test_sha():
    assert ag.check_sha("A" * 64) == "a" * 64
    for bad in ("abc", "a" * 64 + "\n"):
        with pytest.raises(ag.BadInput):
            ag.check_sha(bad)


def test_vsn_order():
    vs = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.0", "2.0.0"]
    assert sorted(vs, key=ag.vsn_key) == ["0.9.0", "1.2.0-rc.1", "1.2.0", "1.10.0", "2.0.0"]


# ------------------------------------------------------------------ properties (hypothesis)


_VSN_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._+-"
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _vsn_ok(v):
    """The intended language: ASCII alnum first, then [alnum . _ + -], at most 64 chars, no '..'."""
    return (1 <= len(v) <= 64 and v[0] in _ALNUM and all(c in _VSN_CHARS for c in v) and ".." not in v)


_vsn_like = st.one_of(
    st.text(alphabet=_VSN_CHARS, max_size=70),
    st.text(alphabet=_VSN_CHARS + "/\\ \n\t;$`|&<>()'\"*?~!#%\0\u00e9\u0663", max_size=70),
    st.builds(lambda a, b: a + b, st.text(alphabet=_VSN_CHARS, min_size=1, max_size=10),
              st.sampled_from(["\n", "/..", "/", "..", " ", ";", "\r\n", "\u0660"])),
    st.text(max_size=70),
)


@settings(max_examples=600, deadline=None)
@given(_vsn_like)
def test_property_version_validation_accepts_exactly_the_language(v):
    ok = True
    try:
        ag.check_vsn(v)
    except ag.BadInput:
        ok = False
    assert ok == _vsn_ok(v), repr(v)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", max_size=70),
                 st.text(max_size=70)))
def test_property_app_name_validation(a):
    want = (1 <= len(a) <= 64 and a[0] in "abcdefghijklmnopqrstuvwxyz"
            and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in a))
    try:
        ag.check_app(a)
        got = True
    except ag.BadInput:
        got = False
    assert got == want, repr(a)
