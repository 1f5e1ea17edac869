# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Appup generation, coverage check and the hot-or-cold verdict: pure functions, no I/O.

Input is what :mod:`_beam` reads from two sets of compiled modules; output is appup instructions
(Python values rendered by :func:`_agent.erlterms.format_term`) and the reasons an edge cannot go hot.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.beam.hotswap.plugins.module_utils._beam import Atom

A = Atom

# Applications that come with OTP or Elixir: a change in any of them needs an emulator restart.
SYSTEM_APPS = frozenset([
    "kernel", "stdlib", "sasl", "compiler", "crypto", "public_key", "ssl", "asn1", "inets",
    "runtime_tools", "tools", "syntax_tools", "parsetools", "xmerl", "mnesia", "os_mon",
    "elixir", "logger", "eex", "iex", "mix", "ex_unit",
])


class AppEdge(object):
    """Instructions for one application between two versions, plus a summary for the manifest."""

    def __init__(self, app, old_vsn, new_vsn):
        self.app = app
        self.old_vsn = old_vsn
        self.new_vsn = new_vsn
        self.up = []
        self.down = []
        self.added = []
        self.deleted = []
        self.updated = []
        self.supervisors = []
        self.loaded = []

    def summary(self):
        return {
            "app": self.app, "from": self.old_vsn, "to": self.new_vsn,
            "added": self.added, "deleted": self.deleted, "updated": self.updated,
            "supervisors": self.supervisors, "loaded": self.loaded,
        }


def changed_modules(old, new):
    """Names of modules present in both sets whose compiled code (or ``vsn``) differs."""
    return sorted(m for m in set(old) & set(new)
                  if old[m].digest != new[m].digest or old[m].vsn != new[m].vsn)


def call_order(mods, infos):
    """Order modules so that a module comes after the modules it calls (callees first).

    Cycles are broken deterministically by name. Only calls among ``mods`` matter.
    """
    mods = sorted(mods)
    wanted = set(mods)
    deps = dict((m, sorted(set(infos[m].imports) & wanted - {m})) for m in mods)
    out, done, active = [], set(), set()

    def visit(m):
        if m in done or m in active:
            return
        active.add(m)
        for d in deps[m]:
            visit(d)
        active.discard(m)
        done.add(m)
        out.append(m)

    for m in mods:
        visit(m)
    return out


def _eval(code):
    return (A("apply"), (A("Elixir.Code"), A("eval_string"), [code.encode("utf-8")]))


def _ex_atom(name):
    return ':"%s"' % name.replace("\\", "\\\\").replace('"', '\\"')


def _ex_list(names):
    return "[" + ", ".join(_ex_atom(n) for n in names) + "]"


# Runs inside release_handler during the relup: it must never raise (after the point of no return
# an exception reboots the node), so everything is wrapped and returns :ok.
_SUP_SNIPPET = """
try do
  sup_mod = %(sup)s
  gone = %(gone)s
  phase = %(phase)s
  sups = for pid <- Process.list(),
             {:dictionary, d} <- [Process.info(pid, :dictionary)],
             List.keyfind(d, :"$initial_call", 0) == {:"$initial_call", {:supervisor, sup_mod, 1}},
             do: pid
  for sup <- sups do
    children = :supervisor.which_children(sup)
    case phase do
      :change ->
        # what {update, Sup, supervisor} does (the new init/1 gives the child specs), but a supervisor
        # whose new init/1 refuses its start arguments keeps its specs instead of failing the relup
        why =
          try do
            :ok = :sys.suspend(sup, 5000)
            try do
              :sys.change_code(sup, sup_mod, :undefined, [], 10000)
            after
              :sys.resume(sup, 5000)
            end
          catch
            k, r -> {:error, {k, r}}
          end
        if why != :ok do
          key = {:beam_hotswap, :kept_supervisors}
          line = "#{inspect(sup_mod)} #{inspect(sup)}: #{inspect(why, limit: 6, printable_limit: 160)}"
          :persistent_term.put(key, :persistent_term.get(key, []) ++ [String.slice(line, 0, 400)])
        end

      :before_down ->
        for {id, _child, _type, mods} <- children, is_list(mods), Enum.any?(mods, &(&1 in gone)) do
          :supervisor.terminate_child(sup, id)
          :supervisor.delete_child(sup, id)
        end
      :after_down ->
        state = :sys.get_state(sup)
        case sup_mod.init(elem(state, tuple_size(state) - 1)) do
          {:ok, {_flags, specs}} ->
            ids = for s <- specs, do: (if is_map(s), do: s.id, else: elem(s, 0))
            for {id, _child, _type, _mods} <- children, id not in ids do
              :supervisor.terminate_child(sup, id)
              :supervisor.delete_child(sup, id)
            end
          _ -> :ok
        end
      :after_up ->
        for {id, :undefined, _type, _mods} <- children do
          case :supervisor.get_childspec(sup, id) do
            {:ok, %%{restart: :permanent}} -> :supervisor.restart_child(sup, id)
            _ -> :ok
          end
        end
    end
  end
  :ok
rescue
  _ -> :ok
catch
  _, _ -> :ok
end
"""

_CONSOLIDATED_SNIPPET = """
try do
  dir = Path.join([List.to_string(:code.root_dir()), "releases", %(vsn)s, "consolidated"])
  for m <- %(mods)s do
    :code.purge(m)
    :code.load_abs(String.to_charlist(Path.join(dir, Atom.to_string(m))))
  end
  for p <- :code.get_path(), String.ends_with?(List.to_string(p), "/consolidated"), do: :code.del_path(p)
  :code.add_patha(String.to_charlist(dir))
  :ok
rescue
  _ -> :ok
catch
  _, _ -> :ok
end
"""


# Runs inside release_handler after an application's modules are loaded: makes the children of the
# application's top supervisor what the new version's start/2 starts (the ids it no longer has, or
# starts differently, are stopped; the ones it adds are started). Never raises; says what it did.
_CHILDREN_SNIPPET = """
key = {:beam_hotswap, :children_changed}
note = fn line -> :persistent_term.put(key, :persistent_term.get(key, []) ++ [String.slice(line, 0, 400)]) end
try do
  app = %(app)s
  {:ok, toks, _} = :erl_scan.string(String.to_charlist(%(specs)s <> "."))
  {:ok, specs} = :erl_parse.parse_term(toks)
  id_of = fn s -> if is_map(s), do: s.id, else: elem(s, 0) end
  start_of = fn s -> if is_map(s), do: s.start, else: elem(s, 1) end
  master = :application_controller.get_master(app)
  {sup, _} = :application_master.get_child(master)
  live = for {id, _, _, _} <- :supervisor.which_children(sup), do: id
  want = Map.new(specs, &{id_of.(&1), &1})
  stopped =
    for id <- live,
        (case Map.fetch(want, id) do
           :error -> true
           {:ok, s} -> match?({:ok, cur} when is_map(cur), :supervisor.get_childspec(sup, id)) and
                         start_of.(elem(:supervisor.get_childspec(sup, id), 1)) != start_of.(s)
         end) do
      :supervisor.terminate_child(sup, id)
      :supervisor.delete_child(sup, id)
      id
    end
  kept = live -- stopped
  started =
    for s <- specs, id_of.(s) not in kept do
      case :supervisor.start_child(sup, s) do
        {:ok, _} -> {id_of.(s), :ok}
        {:ok, _, _} -> {id_of.(s), :ok}
        other -> {id_of.(s), other}
      end
    end
  bad = for {id, r} <- started, r != :ok, do: "#{inspect(id)}: #{inspect(r, limit: 6)}"
  if stopped != [] or started != [] do
    note.("#{app}: stopped #{inspect(stopped)}, started #{inspect(for {id, :ok} <- started, do: id)}" <>
            if(bad == [], do: "", else: "; FAILED to start " <> Enum.join(bad, ", ")))
  end
  :ok
rescue
  e -> note.("#{%(app)s}: children not reconciled: #{Exception.message(e)}") && :ok
catch
  k, r -> note.("#{%(app)s}: children not reconciled: #{inspect({k, r}, limit: 6)}") && :ok
end
"""


def children_step(app, specs_text):
    """An ``apply`` instruction that gives ``app``'s top supervisor the children of ``specs_text`` (an
    Erlang term: the list of child specs its new start/2 starts, learned at build time)."""
    code = _CHILDREN_SNIPPET % {"app": _ex_atom(app), "specs": _ex_string(specs_text)}
    return _eval(code)


def children_diff(old_text, new_text):
    """"-Plug.Upload, +Plug.Upload.Supervisor" from two child spec lists (ids read roughly from the text)."""
    import re
    id_re = re.compile(r"#\{id\s*=>\s*('[^']*'|[a-z][\w@]*)")
    o, n = id_re.findall(old_text), id_re.findall(new_text)
    out = ["-" + i.strip("'").replace("Elixir.", "") for i in o if i not in n] + \
          ["+" + i.strip("'").replace("Elixir.", "") for i in n if i not in o]
    return ", ".join(out) or "same ids, started differently"


def _ex_string(text):
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"').replace("#", "\\#").replace("\n", "\\n")


def supervisor_step(sup, phase, gone=()):
    """An ``apply`` instruction that reconciles a supervisor's children around its update.

    ``after_up``: start the permanent children that the new child spec added (``{update, Sup,
    supervisor}`` only records them). ``before_down``: terminate and delete the children whose
    modules this edge deletes. ``after_down``: terminate and delete children the old spec lacks.
    """
    code = _SUP_SNIPPET % {"sup": _ex_atom(sup), "gone": _ex_list(sorted(gone)), "phase": ":" + phase}
    return _eval(code)


def consolidated_step(vsn, mods):
    """An ``apply`` instruction that loads the release's consolidated protocols and fixes the path."""
    if not all(c.isalnum() or c in "._+-" for c in vsn):
        raise ValueError("invalid version %r" % vsn)
    return _eval(_CONSOLIDATED_SNIPPET % {"vsn": '"%s"' % vsn, "mods": _ex_list(sorted(mods))})


def app_edge(app, old_vsn, new_vsn, old, new, skip=frozenset()):
    """Generate up and down instructions for ``app`` between two sets of :class:`BeamInfo`.

    ``skip`` names modules handled elsewhere (protocols that are consolidated). Order: added
    modules, then changed modules callees-first (``update`` for processes with ``code_change``,
    ``load_module`` for the rest), then supervisors with their child reconciliation, then deletes.
    The down edge mirrors it.
    """
    e = AppEdge(app, old_vsn, new_vsn)
    added = sorted(m for m in set(new) - set(old) if m not in skip)
    deleted = sorted(m for m in set(old) - set(new) if m not in skip)
    changed = [m for m in changed_modules(old, new) if m not in skip]
    sups = [m for m in changed if new[m].is_supervisor]
    rest = [m for m in changed if m not in sups]
    e.added, e.deleted = added, deleted
    e.supervisors = sups
    e.updated = [m for m in rest if new[m].has_code_change]
    e.loaded = [m for m in rest if not new[m].has_code_change]

    # Post-purge soft everywhere: release_handler then never kills a process still running the old code
    # at make_permanent; it purges that code when the last such process ends. Which processes may stay
    # (connection processes finishing their connection) and which must not (a loop that never leaves) is
    # decided on the node before and after the load (hotswap_old_code).
    def change(m, info):
        if info.has_code_change:
            return (A("update"), A(m), (A("advanced"), []), A("brutal_purge"), A("soft_purge"), [])
        return load(m)

    def load(m):
        return (A("load_module"), A(m), A("brutal_purge"), A("soft_purge"), [])

    # up
    e.up.extend((A("add_module"), A(m)) for m in call_order(added, new))
    e.up.extend(change(m, new[m]) for m in call_order(rest, new))
    for s in sups:
        e.up.append(load(s))
        e.up.append(supervisor_step(s, "change"))
        e.up.append(supervisor_step(s, "after_up"))
    e.up.extend((A("delete_module"), A(m)) for m in deleted)

    # down: bring back what up deleted, undo changes callees-first in the old code's call graph,
    # drop the children whose code goes away before the supervisors change back, then delete.
    e.down.extend((A("add_module"), A(m)) for m in call_order(deleted, old))
    e.down.extend(change(m, new[m]) for m in call_order(rest, old))
    for s in sups:
        if added:
            e.down.append(supervisor_step(s, "before_down", added))
        e.down.append(load(s))
        e.down.append(supervisor_step(s, "change"))
        e.down.append(supervisor_step(s, "after_down"))
    e.down.extend((A("delete_module"), A(m)) for m in added)
    return e


def instruction_modules(instrs):
    """Module names that instructions of an appup edge name (high-level instructions)."""
    out = set()
    for ins in instrs:
        if not isinstance(ins, tuple) or not ins:
            continue
        head = ins[0]
        if head in ("update", "load_module", "add_module", "delete_module", "remove", "purge", "load"):
            if len(ins) > 1 and isinstance(ins[1], str):
                out.add(str(ins[1]))
            elif len(ins) > 1 and isinstance(ins[1], list):
                out.update(str(x) for x in ins[1])
            elif len(ins) > 1 and isinstance(ins[1], tuple) and ins[1]:
                out.add(str(ins[1][0]))
        elif head == "restart_application" or head == "restart_new_emulator" or head == "restart_emulator":
            out.add("*")
    return out


def coverage_gaps(old, new, instrs, skip=frozenset()):
    """Modules that differ between ``old`` and ``new`` but no instruction names (sorted)."""
    named = instruction_modules(instrs)
    if "*" in named:
        return []
    differ = set(changed_modules(old, new)) | (set(new) ^ set(old))
    return sorted(m for m in differ - set(skip) if m not in named)


def find_user_edge(appup_terms, from_vsn):
    """Pick the up and down instruction lists for ``from_vsn`` from a parsed user ``.appup``."""
    import re
    if len(appup_terms) != 1 or not isinstance(appup_terms[0], tuple) or len(appup_terms[0]) != 3:
        raise ValueError("an .appup holds one term {Vsn, UpFrom, DownTo}")
    _vsn, ups, downs = appup_terms[0]

    def pick(entries):
        for entry in entries:
            key, instrs = entry
            if isinstance(key, bytes):
                if re.fullmatch(key.decode("utf-8"), from_vsn):
                    return instrs
            elif key == from_vsn:
                return instrs
        return None
    return pick(ups), pick(downs)


def verdict(old, new):
    """Reasons an edge must go cold, from two release fingerprints (empty list: hot is possible).

    A fingerprint is a dict: ``erts``, ``apps`` ({app: vsn}), ``files`` ({relative path: sha256}
    for vm.args, env.sh, the bin script), ``nifs`` ({relative path: sha256} for shared objects).
    """
    reasons = []
    if old["erts"] != new["erts"]:
        reasons.append("ERTS changed (%s -> %s): needs an emulator restart" % (old["erts"], new["erts"]))
    for app in sorted(SYSTEM_APPS & (set(old["apps"]) | set(new["apps"]))):
        a, b = old["apps"].get(app), new["apps"].get(app)
        if a != b:
            what = "Elixir" if app in ("elixir", "logger", "eex", "iex", "mix", "ex_unit") else "OTP"
            reasons.append("%s application %s changed (%s -> %s): needs an emulator restart"
                           % (what, app, a or "absent", b or "absent"))
    for path in sorted(set(old["files"]) | set(new["files"])):
        if old["files"].get(path) != new["files"].get(path):
            reasons.append("%s changed: it takes effect only on a cold start" % path.replace("releases/VSN/", ""))
    for path in sorted(set(old["nifs"]) | set(new["nifs"])):
        a, b = old["nifs"].get(path), new["nifs"].get(path)
        if a is not None and b is not None and a != b:
            reasons.append("NIF library %s changed: a loaded NIF cannot be replaced hot" % path)
    return reasons


def application_module_notes(app, old_mod, new_mod, old, new):
    """What a hot upgrade of ``app`` leaves undone because its Application callback module changed.

    ``old_mod``/``new_mod`` are the ``mod`` module names of the two ``.app`` files (None when absent),
    ``old``/``new`` the two sets of :class:`BeamInfo`. release_handler never calls ``start/2`` again on
    a running application: children that a changed ``start/2`` adds are not started and the ones it
    drops are not stopped (they belong to no supervisor module whose spec an ``update`` could change).
    Returns a list of short human strings (empty: nothing left undone).
    """
    if not old_mod and not new_mod:
        return []
    if old_mod == new_mod:
        if new_mod not in old or new_mod not in new or not changed_modules({new_mod: old[new_mod]},
                                                                           {new_mod: new[new_mod]}):
            return []
        what = "the Application module %s changed" % new_mod
    elif not old_mod:
        what = "the application now has an Application module (%s)" % new_mod
    elif not new_mod:
        what = "the application no longer has an Application module (was %s)" % old_mod
    else:
        what = "the Application module changed (%s -> %s)" % (old_mod, new_mod)
    return ["%s: %s; children its start/2 adds or removes are not started or stopped by a hot upgrade: "
            "restart the node (hotswap_mode=cold) to apply them, or start them from a supervisor module"
            % (app, what)]
