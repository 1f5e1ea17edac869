"""Appup generation from two sets of real compiled modules (compiled here with elixirc)."""
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from ansible_collections.beam.hotswap.plugins.module_utils import _appup, _beam
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms
from hotswap_testlib.requirements import require

A = _beam.Atom

V1 = {
    "worker.ex": """
        defmodule W.Worker do
          use GenServer
          @vsn 1
          def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
          def init(n), do: {:ok, n}
          def handle_call(:get, _f, n), do: {:reply, W.Util.fmt(n), n}
        end
    """,
    "util.ex": """
        defmodule W.Util do
          def fmt(n), do: "n=#{n}"
        end
    """,
    "stable.ex": """
        defmodule W.Stable do
          def hello, do: :world
        end
    """,
    "old.ex": """
        defmodule W.Old do
          def bye, do: :bye
        end
    """,
    "sup.ex": """
        defmodule W.Sup do
          use Supervisor
          def start_link(a), do: Supervisor.start_link(__MODULE__, a, name: __MODULE__)
          def init(_), do: Supervisor.init([W.Worker], strategy: :one_for_one)
        end
    """,
    "proto.ex": """
        defprotocol W.Show do
          def show(x)
        end
        defimpl W.Show, for: Map do
          def show(m), do: map_size(m)
        end
    """,
}

V2 = dict(V1)
V2.update({
    "worker.ex": """
        defmodule W.Worker do
          use GenServer
          @vsn 2
          def start_link(_), do: GenServer.start_link(__MODULE__, %{n: 0}, name: __MODULE__)
          def init(s), do: {:ok, s}
          def handle_call(:get, _f, s), do: {:reply, W.Util.fmt(s.n), s}
          def code_change(1, n, _), do: {:ok, %{n: n}}
        end
    """,
    "util.ex": """
        defmodule W.Util do
          def fmt(n), do: "value=#{n}"
        end
    """,
    "audit.ex": """
        defmodule W.Audit do
          use GenServer
          def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
          def init(n), do: {:ok, n}
        end
    """,
    "sup.ex": """
        defmodule W.Sup do
          use Supervisor
          def start_link(a), do: Supervisor.start_link(__MODULE__, a, name: __MODULE__)
          def init(_), do: Supervisor.init([W.Worker, W.Audit], strategy: :one_for_one)
        end
    """,
    "proto.ex": V1["proto.ex"] + """
        defimpl W.Show, for: Tuple do
          def show(t), do: tuple_size(t)
        end
    """,
})
del V2["old.ex"]


def _compile(tmp, name, sources):
    src = tmp / (name + "_src")
    out = tmp / (name + "_ebin")
    src.mkdir()
    out.mkdir()
    for fn, text in sources.items():
        (src / fn).write_text(textwrap.dedent(text))
    subprocess.run(["elixirc", "--ignore-module-conflict", "-o", str(out)] + sorted(str(p) for p in src.iterdir()),
                   check=True, capture_output=True, cwd=str(tmp))
    return _beam.read_ebin(str(out))


@pytest.fixture(scope="module")
def ebins(tmp_path_factory):
    require("elixirc")
    tmp = tmp_path_factory.mktemp("appup")
    return _compile(tmp, "v1", V1), _compile(tmp, "v2", V2)


def _names(instrs, kind):
    return [str(i[1]) for i in instrs if i[0] == kind]


def test_unchanged_modules_get_no_instruction(ebins):
    old, new = ebins
    e = _appup.app_edge("w", "1", "2", old, new)
    named = _appup.instruction_modules(e.up)
    assert "Elixir.W.Stable" not in named
    assert "Elixir.W.Stable" not in _appup.changed_modules(old, new)


def test_added_and_deleted_modules(ebins):
    old, new = ebins
    e = _appup.app_edge("w", "1", "2", old, new)
    assert "Elixir.W.Audit" in _names(e.up, "add_module")
    assert "Elixir.W.Old" in _names(e.up, "delete_module")
    assert "Elixir.W.Old" in _names(e.down, "add_module")
    assert "Elixir.W.Audit" in _names(e.down, "delete_module")


def test_genserver_with_code_change_is_updated_advanced_and_plain_module_loaded(ebins):
    old, new = ebins
    e = _appup.app_edge("w", "1", "2", old, new)
    # post-purge soft: release_handler never kills at make_permanent; the node decides (hotswap_old_code)
    assert (A("update"), A("Elixir.W.Worker"), (A("advanced"), []), A("brutal_purge"), A("soft_purge"), []) in e.up
    assert (A("load_module"), A("Elixir.W.Util"), A("brutal_purge"), A("soft_purge"), []) in e.up
    assert e.updated == ["Elixir.W.Worker"] and e.loaded == ["Elixir.W.Util"]


def test_callees_come_before_callers(ebins):
    old, new = ebins
    e = _appup.app_edge("w", "1", "2", old, new)
    mods = [str(i[1]) for i in e.up if i[0] in ("update", "load_module")]
    assert mods.index("Elixir.W.Util") < mods.index("Elixir.W.Worker")


def test_supervisor_gaining_a_child_up_and_down(ebins):
    old, new = ebins
    e = _appup.app_edge("w", "1", "2", old, new)
    # loaded, then its running supervisors get the new init/1's specs (kept, and said, if it refuses them)
    up_idx = e.up.index((A("load_module"), A("Elixir.W.Sup"), A("brutal_purge"), A("soft_purge"), []))
    change = e.up[up_idx + 1]
    assert change[0] == "apply" and b":change" in change[1][2][0] and b"kept_supervisors" in change[1][2][0]
    after = e.up[up_idx + 2]
    assert after[0] == "apply" and b":after_up" in after[1][2][0]          # starts the new child
    assert e.up.index((A("add_module"), A("Elixir.W.Audit"))) < up_idx
    d = e.down.index((A("load_module"), A("Elixir.W.Sup"), A("brutal_purge"), A("soft_purge"), []))
    before = e.down[d - 1]
    assert before[0] == "apply" and b":before_down" in before[1][2][0]    # drops Audit before
    assert b"Elixir.W.Audit" in before[1][2][0]
    assert e.down.index((A("delete_module"), A("Elixir.W.Audit"))) > d


def test_new_defimpl_is_added_and_protocol_left_to_consolidation(ebins):
    old, new = ebins
    skip = frozenset(["Elixir.W.Show"])       # the consolidated protocol is reloaded separately
    e = _appup.app_edge("w", "1", "2", old, new, skip=skip)
    assert "Elixir.W.Show.Tuple" in _names(e.up, "add_module")
    assert "Elixir.W.Show" not in _appup.instruction_modules(e.up)
    step = _appup.consolidated_step("2", ["Elixir.W.Show"])
    assert step[0] == "apply" and b'"releases", "2", "consolidated"' in step[1][2][0]


def test_dependency_bumped_without_appup_gets_one(ebins):
    """A dependency app is just another set of modules: its appup is generated the same way."""
    old, new = ebins
    dep_old = dict((k, v) for k, v in old.items() if k == "Elixir.W.Util")
    dep_new = dict((k, v) for k, v in new.items() if k == "Elixir.W.Util")
    e = _appup.app_edge("dep", "0.1.0", "0.2.0", dep_old, dep_new)
    assert e.up == [(A("load_module"), A("Elixir.W.Util"), A("brutal_purge"), A("soft_purge"), [])]
    assert _appup.coverage_gaps(dep_old, dep_new, e.up) == []


def test_coverage_check_finds_a_changed_module_missing_from_a_user_appup(ebins):
    old, new = ebins
    gaps = _appup.coverage_gaps(old, new, [(A("load_module"), A("Elixir.W.Util"))])
    assert "Elixir.W.Worker" in gaps and "Elixir.W.Audit" in gaps and "Elixir.W.Util" not in gaps


def test_appup_text_round_trips_through_the_term_parser(ebins):
    old, new = ebins
    e = _appup.app_edge("w", "1.0.0", "2.0.0", old, new)
    text = erlterms.format_term(("2.0.0", [("1.0.0", e.up)], [("1.0.0", e.down)])) + "."
    back = erlterms.parse_terms(text)[0]
    assert back[0] == "2.0.0" and back[1][0][1] == e.up


def test_appup_text_is_accepted_by_erlang(ebins, tmp_path):
    old, new = ebins
    e = _appup.app_edge("w", "1.0.0", "2.0.0", old, new)
    p = tmp_path / "w.appup"
    p.write_text(erlterms.format_term(("2.0.0", [("1.0.0", e.up)], [("1.0.0", e.down)])) + ".\n")
    out = subprocess.run(["erl", "-noshell", "-eval",
                          '{ok, [{"2.0.0", [{"1.0.0", Up}], _}]} = file:consult("%s"), '
                          'io:format("~p", [length(Up)]), halt().' % p], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == str(len(e.up))


@pytest.mark.parametrize("old,new,expect", [
    ({"erts": "13.1.5"}, {"erts": "13.2"}, "ERTS changed"),
    ({"apps": {"elixir": "1.14.0"}}, {"apps": {"elixir": "1.15.0"}}, "Elixir application elixir changed"),
    ({"files": {"releases/VSN/vm.args": "a"}}, {"files": {"releases/VSN/vm.args": "b"}}, "vm.args changed"),
    ({"nifs": {"lib/x/priv/x.so": "a"}}, {"nifs": {"lib/x/priv/x.so": "b"}}, "NIF library"),
])
def test_verdict_reasons_for_what_otp_cannot_do_hot(old, new, expect):
    base = {"erts": "13.1.5", "apps": {"sample": "1"}, "files": {}, "nifs": {}}
    o, n = dict(base), dict(base)
    o.update(old)
    n.update(new)
    reasons = _appup.verdict(o, n)
    assert any(expect in r for r in reasons), reasons


def test_verdict_hot_when_only_own_code_changed():
    o = {"erts": "13.1.5", "apps": {"sample": "1", "kernel": "8.5.3"}, "files": {"bin/x": "a"}, "nifs": {}}
    n = {"erts": "13.1.5", "apps": {"sample": "2", "kernel": "8.5.3"}, "files": {"bin/x": "a"}, "nifs": {}}
    assert _appup.verdict(o, n) == []


# --------------------------------------------------------------------------- the Application module

def _info(name, digest):
    return _beam.BeamInfo(name, "/x/%s.beam" % name, digest, frozenset(), frozenset(), frozenset(), None)


APP = "Elixir.Shop.Application"


@pytest.mark.parametrize("old_mod, new_mod, old, new, needle", [
    (APP, APP, {APP: "a"}, {APP: "b"}, "the Application module Elixir.Shop.Application changed"),
    (None, APP, {}, {APP: "a"}, "the application now has an Application module (Elixir.Shop.Application)"),
    (APP, None, {APP: "a"}, {}, "the application no longer has an Application module (was Elixir.Shop.Application)"),
    (APP, "Elixir.Shop.App2", {APP: "a"}, {"Elixir.Shop.App2": "a"},
     "the Application module changed (Elixir.Shop.Application -> Elixir.Shop.App2)"),
])
def test_a_changed_application_module_is_named_with_what_to_do(old_mod, new_mod, old, new, needle):
    old = dict((m, _info(m, d)) for m, d in old.items())
    new = dict((m, _info(m, d)) for m, d in new.items())
    (note,) = _appup.application_module_notes("shop", old_mod, new_mod, old, new)
    assert note.startswith("shop: " + needle + "; ")
    assert "children its start/2 adds or removes are not started or stopped by a hot upgrade" in note
    assert "restart the node (hotswap_mode=cold)" in note and "supervisor module" in note


@pytest.mark.parametrize("old_mod, new_mod, old, new", [
    (None, None, {}, {}),
    (APP, APP, {APP: "a"}, {APP: "a"}),                          # unchanged code
    (APP, APP, {}, {}),                                          # module not in this ebin (unreadable)
])
def test_an_unchanged_application_module_leaves_nothing_undone(old_mod, new_mod, old, new):
    old = dict((m, _info(m, d)) for m, d in old.items())
    new = dict((m, _info(m, d)) for m, d in new.items())
    assert _appup.application_module_notes("shop", old_mod, new_mod, old, new) == []


def test_children_step_carries_the_specs_as_an_erlang_term_and_never_raises():
    specs = "[#{id => 'Elixir.Plug.Upload.Supervisor',start => {'Elixir.Plug.Upload.Supervisor',start_link,[[]]}}]"
    ins = _appup.children_step("plug", specs)
    assert ins[0] == "apply" and ins[1][:2] == ("Elixir.Code", "eval_string")
    code = ins[1][2][0].decode()
    assert ':"plug"' in code and "Elixir.Plug.Upload.Supervisor" in code
    assert "rescue" in code and "catch" in code and ':beam_hotswap, :children_changed' in code
    assert '\\#{id' in code          # the term's #{ is not Elixir interpolation


def test_children_diff_names_what_goes_and_what_comes():
    old = "[#{id => 'Elixir.Plug.Upload',start => {a,b,[]}},#{id => keep,start => {c,d,[]}}]"
    new = "[#{id => keep,start => {c,d,[]}},#{id => 'Elixir.Plug.Upload.Supervisor',start => {e,f,[]}}]"
    assert _appup.children_diff(old, new) == "-Plug.Upload, +Plug.Upload.Supervisor"
    assert _appup.children_diff(old, old) == "same ids, started differently"


def test_load_and_update_post_purge_is_soft_so_release_handler_never_kills_at_make_permanent(ebins):
    old, new = ebins
    e = _appup.app_edge("w", "1", "2", old, new)
    for ins in e.up + e.down:
        if ins[0] in ("load_module", "update"):
            assert ins[-3:] == (A("brutal_purge"), A("soft_purge"), []), ins


# --------------------------------------------------------------------------- appups that applications ship

# (from-version key, version): binaries are regular expressions; systools_relup decides with
# re:run(Vsn, Re, [unicode, {capture, first, list}]) =:= {match, [Vsn]}
VSN_CASES = [
    ("1.0.0", "1.0.0"), ("1.0.0", "1.0.1"), (b"1\\.0\\.[0-9]+.*", "1.0.3"), (b"1\\.0\\.[0-9]+.*", "1.0.3-rc.1"),
    (b"1\\.0\\.[0-9]+.*", "1.1.0"), (b"1\\.0\\.[0-9]+.*", "11.0.3"), (b"1\\.0", "1.0.1"), (b"0\\.1", "10.1"),
    (b".*", "2.3.4"), (b"1\\.0|1\\.0\\.1", "1.0.1"), (b"1\\.0\\.1|1\\.0", "1.0.1"), (b"2\\.[0-9]+\\.[0-9]+", "2.12.0"),
    (b"1.0.0", "1x0y0"), (b"^1\\.0\\.0$", "1.0.0"), (b"0\\.1\\.0", "0.1.0\n"),
]


def test_from_version_matching_is_the_one_systools_uses(tmp_path):
    """Every case is decided the same by OTP's own systools_relup:appup_search_for_version/2 (run here)."""
    require("erl")
    ours = [_appup.vsn_matches(k, v) for k, v in VSN_CASES]
    terms = "[" + ",".join("{%s,%s}" % (erlterms.format_term(k), erlterms.format_term(v)) for k, v in VSN_CASES) + "]"
    (tmp_path / "cases").write_text(terms + ".\n")
    code = ('{ok, [Cases]} = file:consult("%s"), '
            'R = [case systools_relup:appup_search_for_version(V, [{K, x}]) of {ok, x} -> 1; error -> 0 end '
            '|| {K, V} <- Cases], io:format("~w", [R]), halt().' % (tmp_path / "cases"))
    out = subprocess.run(["erl", "-noshell", "-eval", code], capture_output=True, text=True, check=True)
    theirs = [bool(int(x)) for x in out.stdout.strip().strip("[]").split(",")]
    assert ours == theirs, list(zip(VSN_CASES, ours, theirs))
    assert _appup.vsn_matches(b"1\\.0\\.[0-9]+.*", "1.0.3") and not _appup.vsn_matches(b"1\\.0", "1.0.1")


def test_a_regular_expression_python_cannot_read_is_a_value_error():
    with pytest.raises(ValueError, match="cannot be read"):
        _appup.vsn_matches(b"1\\.0(", "1.0")


UP1 = [(A("load_module"), A("mylib"))]
UP2 = [(A("apply"), (A("mylib"), A("stop_all"), [])), (A("load_module"), A("mylib"))]


def test_find_edge_takes_the_first_entry_that_selects_the_version():
    appup = [("1.1.0", [("1.0.0", UP1), (b"1\\.0\\..*", UP2)], [(b"1\\.0\\..*", [])])]
    assert _appup.find_edge(appup, "1.0.0") == (UP1, [])
    assert _appup.find_edge(appup, "1.0.7") == (UP2, [])
    assert _appup.find_edge(appup, "0.9.0") == (None, None)
    assert _appup.find_edge([("1.1.0", [("1.0.0", UP1)], [])], "1.0.0") == (UP1, None)


def test_an_appup_with_several_terms_is_read_like_file_consult_first_term_wins():
    text = ('{"1.1.0", [{<<"1\\\\.0\\\\.[0-9]+.*">>, [{load_module, mylib}]}], [{<<"1\\\\.0\\\\.[0-9]+.*">>, []}]}.\n'
            '{"1.0.5", [{"0.9.0", []}], [{"0.9.0", []}]}.\n')
    terms = erlterms.parse_terms(text)
    assert len(terms) == 2
    up, down = _appup.find_edge(terms, "1.0.2")
    assert up == [(A("load_module"), A("mylib"))] and down == []
    assert _appup.find_edge(terms, "0.9.0") == (None, None)      # only the first term counts


@pytest.mark.parametrize("terms", [[], [("1.0", [])], ["x"], [("1.0", "up", [])]])
def test_an_appup_whose_first_term_is_not_vsn_up_down_is_refused(terms):
    with pytest.raises(ValueError):
        _appup.find_edge(terms, "1.0")


def test_describe_summarises_what_an_appup_written_by_others_does():
    e = _appup.AppEdge("mylib", "1.0.0", "1.1.0")
    e.up = [(A("add_module"), A("n")), (A("update"), A("s"), A("supervisor")), (A("update"), A("g"), (A("advanced"), [])),
            (A("load_module"), A("l")), (A("delete_module"), A("d")), (A("apply"), (A("m"), A("f"), []))]
    _appup.describe(e)
    assert (e.added, e.supervisors, e.updated, e.loaded, e.deleted) == (["n"], ["s"], ["g"], ["l"], ["d"])


# --------------------------------------------------------------------------- library processes whose state changes
# Real libraries (shared/thirdparty), compiled here with debug info as Mix and rebar3 compile them.

THIRDPARTY = Path("/work/shared/thirdparty")


def _erlc(tmp, name, src_dir, files):
    out = tmp / name
    out.mkdir()
    subprocess.run(["erlc", "+debug_info", "-I", str(src_dir), "-o", str(out)] + [str(src_dir / f) for f in files],
                   check=True, capture_output=True)
    return out


def _elixirc(tmp, name, src_dir, files):
    out = tmp / name
    out.mkdir()
    subprocess.run(["elixirc", "--ignore-module-conflict", "-o", str(out)] + [str(src_dir / f) for f in files],
                   check=True, capture_output=True, cwd=str(tmp))
    return out


def _check(app, vsn, old_dir, new_dir):
    old, new = _beam.read_ebin(str(old_dir)), _beam.read_ebin(str(new_dir))
    return _appup.state_checks(app, vsn, old, new, _appup.changed_modules(old, new),
                               _beam.state_infos(str(old_dir)), _beam.state_infos(str(new_dir)))


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    require("erlc", "elixirc")
    if not THIRDPARTY.is_dir():
        pytest.fail("shared/thirdparty is missing at %s" % THIRDPARTY, pytrace=False)
    tmp = tmp_path_factory.mktemp("libs")
    ti = ["server_config.ex", "listener.ex"]
    return {
        "ti_old": _elixirc(tmp, "ti_old", THIRDPARTY / "thousand_island-1.3.14/lib/thousand_island", ti),
        "ti_new": _elixirc(tmp, "ti_new", THIRDPARTY / "thousand_island-1.5.0/lib/thousand_island", ti),
        "tel_old": _erlc(tmp, "tel_old", THIRDPARTY / "telemetry-1.3.0/src", ["telemetry_handler_table.erl"]),
        "tel_new": _erlc(tmp, "tel_new", THIRDPARTY / "telemetry-1.4.1/src", ["telemetry_handler_table.erl"]),
    }


@pytest.mark.integration   # compiles real libraries from shared/thirdparty (not in `make unit`)
def test_a_library_process_whose_state_changes_shape_without_code_change_is_a_cold_reason(libs):
    """thousand_island 1.3.14 -> 1.5.0: the Listener's state map trades listener_socket for listener_sockets, and
    `use GenServer`'s code_change hands the old map to the new code (its next acceptor_info call raises)."""
    reasons, warnings = _check("thousand_island", "1.5.0", libs["ti_old"], libs["ti_new"])
    (r,) = reasons
    assert r.startswith("thousand_island: ThousandIsland.Listener's init/1 now returns a state of another shape "
                        "(%{listener_socket, listener_span, local_info} -> %{listener_sockets, listener_span, local_info}) "
                        "and its code_change returns the old state unchanged"), r
    assert "hotswap_mode=cold" in r and "rel/appups/thousand_island/1.5.0.appup" in r
    assert warnings == []


@pytest.mark.integration   # compiles real libraries from shared/thirdparty (not in `make unit`)
def test_a_library_process_whose_init_changed_without_code_change_is_a_warning(libs):
    """telemetry 1.3.0 -> 1.4.1: the handler table's new init/1 also puts the backend in a persistent_term that the
    new lookups read; the running process never runs it (its state, [], keeps its shape: only a warning)."""
    reasons, warnings = _check("telemetry", "1.4.1", libs["tel_old"], libs["tel_new"])
    assert reasons == []
    (w,) = warnings
    assert w.startswith("telemetry: telemetry_handler_table's init/1 changed and its code_change returns the old state "
                        "unchanged: a running telemetry_handler_table process keeps the state (and any ETS table or "
                        "persistent_term) its old init/1 set up"), w


STATE_V1 = """
defmodule S.Counter do
  use GenServer
  def init(n), do: {:ok, %{n: n}}
  def handle_call(:get, _f, s), do: {:reply, s.n, s}
end
"""


@pytest.mark.parametrize("v2, expect", [
    # the same code a few lines lower: nothing changed that matters
    ("\n\n" + STATE_V1.replace("{:reply, s.n, s}", "{:reply, s.n + 0, s}"), ([], [])),
    # a code_change of its own: the library converts its state itself
    (STATE_V1.replace("%{n: n}", "%{n: n, at: 0}").replace(
        "def handle_call", "def code_change(_, s, _), do: {:ok, Map.put(s, :at, 0)}\n  def handle_call"), ([], [])),
    # the shape changes and the default code_change keeps the old one
    (STATE_V1.replace("%{n: n}", "%{count: n}").replace("s.n", "s.count"), (1, [])),
    # init/1 changed, same shape
    (STATE_V1.replace("{:ok, %{n: n}}", "{:ok, %{n: n + 1}}").replace("s.n", "s.n + 0"), ([], 1)),
])
def test_state_checks_judge_only_what_the_debug_info_shows(tmp_path, v2, expect):
    require("elixirc")
    old = _elixirc(tmp_path, "old", _src(tmp_path, "a", STATE_V1), ["c.ex"])
    new = _elixirc(tmp_path, "new", _src(tmp_path, "b", v2), ["c.ex"])
    reasons, warnings = _check("s", "2", old, new)
    got = tuple(len(x) if isinstance(e, int) else x for x, e in zip((reasons, warnings), expect))
    assert got == expect, (reasons, warnings)


def _src(tmp, name, text):
    d = tmp / name
    d.mkdir()
    (d / "c.ex").write_text(textwrap.dedent(text))
    return d


@pytest.mark.integration   # compiles real libraries from shared/thirdparty (not in `make unit`)
def test_modules_without_debug_info_are_never_judged(libs, tmp_path):
    """A release's own modules are stripped of their debug info (mix release): nothing is claimed from them."""
    old, new = _beam.read_ebin(str(libs["ti_old"])), _beam.read_ebin(str(libs["ti_new"]))
    assert _appup.state_checks("thousand_island", "1.5.0", old, new, _appup.changed_modules(old, new), {}, {}) == ([], [])
    info = _beam.state_infos(str(libs["ti_new"]))["Elixir.ThousandIsland.Listener"]
    back = _beam.StateInfo.from_json(json.loads(json.dumps(info.to_json())))
    assert (back.init, back.code_change, back.shapes) == (info.init, info.code_change, info.shapes)
