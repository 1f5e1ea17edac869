# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: check a play's ``hotswap_*`` variables against the roles' argument specs, up front.

The rules are read from the roles' own ``meta/argument_specs.yml`` (one copy of each rule: the specs
ansible-core checks at role start) and the known names also from the playbooks and role task files (the
names the playbooks set themselves). ``check(values, specs, known)`` returns one readable line per bad
value and one warning per unknown name; it never raises for any input.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib
import glob
import os
import re

import yaml

from ansible.module_utils.common.parameters import DEFAULT_TYPE_VALIDATORS

PREFIX = "hotswap_"
NAME_RE = re.compile(r"(?<![A-Za-z0-9_])(hotswap_[a-z0-9_]+)")

# how each option type is named in a message (the type a value must have)
TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "list": "a list",
    "dict": "a dict (KEY: value mapping)", "path": "a path", "str": "a string", "raw": "any value",
}


def collection_root():
    """The collection's directory (through the checkout's playbooks/collections link, the real one)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def load_specs(root=None):
    """({variable: [(role, spec), ...]}, [problems]) from every role's meta/argument_specs.yml (entry main)."""
    root = root or collection_root()
    specs, problems = {}, []
    for path in sorted(glob.glob(os.path.join(root, "roles", "*", "meta", "argument_specs.yml"))):
        role = path.split(os.sep)[-3]
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
            options = ((doc.get("argument_specs") or {}).get("main") or {}).get("options") or {}
        except (OSError, yaml.YAMLError, AttributeError) as e:
            problems.append("could not read the argument specs of role %s (%s): %s" % (role, path, e))
            continue
        for name, spec in options.items():
            if isinstance(spec, dict):
                specs.setdefault(name, []).append((role, spec))
    return specs, problems


def load_known(root=None):
    """Every hotswap_* name the playbooks and roles use (set, read, register or document)."""
    root = root or collection_root()
    names = set()
    pats = ("playbooks/*.yml", "roles/*/tasks/*.yml", "roles/*/defaults/*.yml", "roles/*/vars/*.yml",
            "roles/*/meta/argument_specs.yml")
    for pat in pats:
        for path in glob.glob(os.path.join(root, pat)):
            try:
                with open(path, encoding="utf-8") as f:
                    names.update(NAME_RE.findall(f.read()))
            except (OSError, UnicodeDecodeError):
                continue
    return names


def _unit(spec):
    desc = spec.get("description")
    text = " ".join(desc) if isinstance(desc, list) else str(desc or "")
    return " (seconds)" if spec.get("type") in ("int", "float") and "second" in text.lower() else ""


def _show(value):
    text = repr(value) if not isinstance(value, str) else "'%s'" % value
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(kind, value):
    """``value`` converted as ansible-core converts an option of type ``kind``; raises on a bad one."""
    if kind in ("int", "float") and isinstance(value, bool):
        raise TypeError("a bool is not a number")
    if kind == "str" and isinstance(value, (dict, list)):
        raise TypeError("not a string")
    validator = DEFAULT_TYPE_VALIDATORS.get(kind)
    return value if validator is None else validator(value)


def value_error(name, value, spec):
    """One line saying what is wrong with ``value`` for an option ``spec``, or None."""
    kind = spec.get("type") or "str"
    if value is None and not spec.get("required"):
        return None
    try:
        conv = _convert(kind, value)
    except Exception:  # pylint: disable=broad-except  # any conversion failure is a bad value
        return "%s must be %s%s, got %s." % (name, TYPE_WORDS.get(kind, "of type " + kind), _unit(spec), _show(value))
    if kind == "list" and spec.get("elements"):
        el = spec["elements"]
        for i, item in enumerate(conv):
            try:
                _convert(el, item)
            except Exception:  # pylint: disable=broad-except
                return "%s must be a list of %s, but item %d is %s." % (
                    name, {"str": "strings", "int": "integers", "dict": "dicts", "path": "paths"}.get(el, el), i + 1,
                    _show(item))
    choices = spec.get("choices")
    if choices and conv not in choices:
        return "%s must be one of %s, got %s." % (name, ", ".join(str(c) for c in choices), _show(value))
    return None


def suggest(name, known):
    """The closest known name (or None)."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def check(values, specs, known):
    """(errors, warnings) for ``values`` ({name: value}): a bad type or choice is an error; a hotswap_*
    name that no role and no playbook knows is a warning naming the closest known one."""
    errors, warnings = [], []
    known = set(known) | set(specs)
    for name in sorted(values):
        if not isinstance(name, str) or not name.startswith(PREFIX):
            continue  # _hotswap_* (internal) and every other variable are not ours to judge
        if name not in known:
            near = suggest(name, known)
            warnings.append("unknown variable %s is ignored%s" % (
                name, (": did you mean %s?" % near) if near else " (no beam.hotswap role or playbook uses it)"))
            continue
        for _role, spec in specs.get(name, ()):
            err = value_error(name, values[name], spec)
            if err:
                errors.append(err)
                break
    return errors, warnings
