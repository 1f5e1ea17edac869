"""Values passed to the node as Erlang literals, and the node-side script (hotswap_node.erl): it parses
as an erl_eval expression sequence, compiles cleanly when wrapped in a function (no unbound, unsafe or
shadowed variable), and answers on a plain VM with kernel, stdlib and sasl only (no Elixir)."""
import base64
import json
import subprocess
from pathlib import Path

import pytest

from hotswap_testlib.agent_artifact import ag
from hotswap_testlib.requirements import require

NODE_ERL = Path(__file__).resolve().parents[5] / "roles" / "agent" / "files" / "hotswap_node.erl"

# ------------------------------------------------------------------ Erlang literals


def test_erl_lit_escapes_quotes_and_non_ascii():
    lit = ag.erl_lit({"expr": 'a"b\\\n\x01\u00e9', "n": 3, "b": True, "z": None, "l": ["x"]})
    assert lit == ('#{<<"expr"/utf8>> => <<"a\\"b\\\\\\x{A}\\x{1}\\x{E9}"/utf8>>, <<"n"/utf8>> => 3, '
                   '<<"b"/utf8>> => true, <<"z"/utf8>> => nil, <<"l"/utf8>> => [<<"x"/utf8>>]}')
    assert lit.isascii()
    assert ag.erl_lit("\ud800") == '<<"\\x{FFFD}"/utf8>>'
    with pytest.raises(ag.BadInput):
        ag.erl_lit(1.5)


def _erl(expr, *args):
    require("erl")
    p = subprocess.run(["erl", "-noshell", *args, "-eval", expr], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_erl_lit_roundtrip_through_erlang():
    s = 'q"#{1}~p\\ \t\n\u00e9\U0001F600'
    out = _erl('{ok, T, _} = erl_scan:string("X = %s."), {ok, [E]} = erl_parse:parse_exprs(T), '
               '{value, V, _} = erl_eval:expr(E, []), io:put_chars(base64:encode(V)), halt().'
               % ag.erl_lit(s).replace("\\", "\\\\").replace('"', '\\"'))
    assert base64.b64decode(out).decode("utf-8") == s


# ------------------------------------------------------------------ the node-side script


def test_node_script_parses_as_expression_sequence():
    _erl('{ok, B} = file:read_file("%s"), {ok, T, _} = erl_scan:string(unicode:characters_to_list(B)), '
         '{ok, _} = erl_parse:parse_exprs(T), halt().' % NODE_ERL)
    head = NODE_ERL.read_text(encoding="utf-8").split("\n", 5)[:5]
    assert any("NOT a module" in line for line in head)


def test_node_script_compiles_cleanly_as_a_function_body(tmp_path):
    """Wrapped as the body of f(Hs) in a module, the compiler checks what erl_eval never does before it
    runs: every variable bound, none bound twice by accident, none unsafe; a warning fails the test."""
    src = NODE_ERL.read_text(encoding="utf-8").rstrip()
    (tmp_path / "hsn_lint.erl").write_text("-module(hsn_lint).\n-export([f/1]).\nf(Hs) ->\n" + src + "\n", encoding="utf-8")
    require("erlc")
    p = subprocess.run(["erlc", "+warn_unused_vars", "+warnings_as_errors", "-o", str(tmp_path), str(tmp_path / "hsn_lint.erl")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def _node_eval(args):
    """Evaluate the script as the agent does (erl_scan, erl_parse, erl_eval:exprs/3) on a plain VM with sasl
    and no Elixir in its code path; returns the decoded JSON."""
    code = "Hs = " + ag.erl_lit(args) + ",\n" + NODE_ERL.read_text(encoding="utf-8")
    b64 = base64.b64encode(code.encode("utf-8")).decode("ascii")
    expr = ('{ok, T, _} = erl_scan:string(unicode:characters_to_list(base64:decode(<<"%s">>))), '
            '{ok, E} = erl_parse:parse_exprs(T), {value, R, _} = erl_eval:exprs(E, [], none), '
            'io:put_chars(base64:encode(R)), halt().' % b64)
    out = _erl(expr, "-boot", "start_sasl", "-sasl", "sasl_error_logger", "false", "-kernel", "logger_level", "critical")
    return json.loads(base64.b64decode(out).decode("utf-8"))


def test_node_script_info_on_a_vm_without_elixir():
    r = _node_eval({"op": "info", "app": "sasl"})
    assert r["ok"] is True and r["app_vsn"] and isinstance(r["os_pid"], int)
    assert r["running"] and r["permanent"] == r["running"]
    assert r["releases"] == [{"version": r["running"], "status": "permanent"}]
    assert r["rh_pid"].startswith("<") and isinstance(r["node_ms"], float)


def test_node_script_verify_commit_remove_and_unknown_op():
    info = _node_eval({"op": "info", "app": "sasl"})
    vsn = info["running"]
    r = _node_eval({"op": "verify", "app": "sasl", "vsn": vsn, "check_rpc": "1 + 1 =:= 2", "timeout_ms": 1000})
    assert r["ok"] is True and r["healthy"] is True and r["error"] is None
    r = _node_eval({"op": "verify", "app": "sasl", "vsn": vsn, "check_rpc": "false", "timeout_ms": 300})
    assert r["ok"] is False and "rpc check" in r["error"] and "returned false" in r["error"]
    r = _node_eval({"op": "verify", "app": "sasl", "vsn": "9.9.9", "timeout_ms": 100})
    assert r["ok"] is False and r["error"].startswith("release_handler runs ")
    assert _node_eval({"op": "commit", "app": "sasl", "vsn": vsn})["changed"] is False
    r = _node_eval({"op": "remove", "app": "sasl", "remove": ["9.9.9"]})
    assert r["ok"] is False and r["removed"] == [] and r["error"].startswith("9.9.9: ")
    r = _node_eval({"op": "fly\u00e9\"", "app": "sasl"})
    assert r == {"ok": False, "error": 'unknown op "fly\u00e9\\""'}


def test_node_script_dump_releases_and_an_exception_as_json():
    r = _node_eval({"op": "dump_releases", "app": "sasl"})
    assert r["ok"] is True and r["releases"][0]["status"] == "permanent" and r["releases"][0]["libs"]
    r = _node_eval({"op": "remove", "app": "sasl", "remove": 5})
    assert r["ok"] is False and "bad generator 5" in r["error"]


def test_erl_call_expression_parses_node_erl_once_per_node(tmp_path):
    """What erl_call sends: without the script, a VM that has not parsed this node.erl answers NEED_SCRIPT; with
    it, the VM parses and keeps it (persistent_term, under its checksum) and answers; after that the head alone is
    answered from the kept parse.  Evaluated as erl_call does, three times in one plain VM."""
    script = NODE_ERL.read_text(encoding="utf-8")
    head = "Hs = " + ag.erl_lit({"op": "info", "app": "sasl"}) + "."
    key = "k" * 32
    calls = [ag.erl_call_expr(head, key, None), ag.erl_call_expr(head, key, script), ag.erl_call_expr(head, key, None)]
    assert base64.b64encode(script.encode()).decode() not in calls[0] + calls[2]
    for i, c in enumerate(calls):
        (tmp_path / ("call%d" % i)).write_text(c)
    evals = " ".join(
        '{ok, B%d} = file:read_file("%s"), {ok, T%d, _} = erl_scan:string(binary_to_list(B%d)), '
        '{ok, E%d} = erl_parse:parse_exprs(T%d), {value, R%d, _} = erl_eval:exprs(E%d, []), io:format("~s~n", [R%d]),'
        % (i, tmp_path / ("call%d" % i), i, i, i, i, i, i, i) for i in range(len(calls)))
    out = _erl(evals + " halt().", "-boot", "start_sasl", "-sasl", "sasl_error_logger", "false",
               "-kernel", "logger_level", "critical").split()
    assert out[0] == ag.NEED_SCRIPT, out
    first, again = (json.loads(base64.b64decode(x).decode("utf-8")) for x in out[1:3])
    assert first["ok"] is True and again["ok"] is True and again["running"] == first["running"]
