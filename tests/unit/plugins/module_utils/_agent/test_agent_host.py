"""Values passed to the node as Elixir literals."""
import subprocess

from hotswap_testlib.agent_artifact import ag
from hotswap_testlib.requirements import require

# ------------------------------------------------------------------ Elixir literals


def test_ex_lit_escapes_interpolation_and_quotes():
    lit = ag.ex_lit({"expr": 'a"b#{System.halt()}\\\n\x01', "n": 3, "b": True, "z": None, "l": ["x"]})
    assert '#{' not in lit.replace('\\#{', '')
    assert lit == '%{"expr" => "a\\"b\\#{System.halt()}\\\\\\n\\u{1}", "n" => 3, "b" => true, "z" => nil, "l" => ["x"]}'


def test_ex_lit_roundtrip_through_elixir():
    require("elixir")
    s = 'q"#{1}\\ \t\n\u00e9\U0001F600'
    p = subprocess.run(["elixir", "-e", "IO.write(" + ag.ex_lit(s) + ")"], capture_output=True, text=True, check=False)
    assert p.stdout == s
