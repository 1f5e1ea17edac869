"""Assemble the agent package into the one file a host receives (roles/agent/files/hotswap_agent.py).

    python3 plugins/module_utils/_agent/_assemble.py [--check] [OUTPUT]

The output is the package docstring, the standard-library imports of every module (sorted, once), then
each module of ``MODULES`` in order: its docstring as a comment and its code without the package's
own imports.  The same sources always give the same bytes, so an unchanged agent is not reinstalled.
Refused (exit 1, with the reason): an import that is not the standard library or this package, an
import below a module's first statement, a module importing one that comes after it, a name defined
by two modules.  ``--check`` compares with OUTPUT instead of writing it (exit 1 when they differ).
"""
import ast
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "..", "..", "..", "roles", "agent", "files", "hotswap_agent.py")
RULE = "# " + "=" * 98


class AssemblyError(Exception):
    pass


def _package():
    tree = ast.parse(_read("__init__.py"))
    doc = ast.get_docstring(tree, clean=False)
    modules = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "MODULES":
            modules = ast.literal_eval(node.value)
    if not doc or not modules:
        raise AssemblyError("__init__.py needs a docstring and MODULES")
    return doc, modules


def _read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def _stdlib_only(name, node):
    stdlib = getattr(sys, "stdlib_module_names", None)     # Python 3.10+; the controller has 3.11
    for alias in node.names:
        if alias.asname or (stdlib is not None and alias.name.split(".")[0] not in stdlib):
            raise AssemblyError(f"{name}:{node.lineno}: import {alias.name}: the agent uses the standard "
                                "library only (no aliases)")


def _split(name, src, earlier):
    """(docstring, stdlib import lines, code after the imports) of one module, checked."""
    tree = ast.parse(src, filename=name)
    lines = src.splitlines(keepends=True)
    doc = ast.get_docstring(tree, clean=False)
    if not doc:
        raise AssemblyError(f"{name}: no module docstring saying what it owns")
    imports, last = set(), tree.body[0].end_lineno
    for node in tree.body[1:]:
        if isinstance(node, ast.Import):
            _stdlib_only(name, node)
            imports.update(f"import {alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level != 1 or node.module not in earlier:
                raise AssemblyError(f"{name}:{node.lineno}: only `from .MODULE import ...` of a module "
                                    f"assembled before this one ({', '.join(earlier) or 'none'})")
        else:
            break
        last = node.end_lineno
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno <= last:
            continue
        if id(node) in top or isinstance(node, ast.ImportFrom):
            raise AssemblyError(f"{name}:{node.lineno}: imports belong at the top of the module (a function "
                                "may `import` a standard module lazily)")
        _stdlib_only(name, node)
    return doc, imports, "".join(lines[last:]).strip("\n")


def _defined(name, code):
    out = set()
    for node in ast.parse(code, filename=name).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def assemble():
    """The assembled agent's text."""
    pkg_doc, modules = _package()
    imports, parts, owner = set(), [], {}
    for i, mod in enumerate(modules):
        name = mod + ".py"
        doc, imp, code = _split(name, _read(name), modules[:i])
        for d in _defined(name, code):
            if d in owner:
                raise AssemblyError(f"{name}: {d} is already defined by {owner[d]}.py")
            owner[d] = mod
        imports |= imp
        comment = "\n".join(("# " + line).rstrip() for line in doc.strip("\n").splitlines())
        parts.append(f"{RULE}\n# {mod}.py\n{comment}\n{RULE}\n\n{code}\n")
    head = ('"""' + pkg_doc.rstrip("\n") + "\n\nGENERATED from plugins/module_utils/_agent/ by _assemble.py: edit those "
            "modules, then run\n`make agent`.\n\"\"\"\n")
    text = head + "\n".join(sorted(imports)) + "\n\n\n" + "\n\n".join(parts) + \
        '\n\nif __name__ == "__main__":\n    sys.exit(main())\n'
    ast.parse(text, feature_version=(3, 9))     # the oldest Python a target runs (Debian 11)
    return text


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    out = os.path.normpath(args[0] if args else DEFAULT_OUTPUT)
    try:
        text = assemble()
    except (AssemblyError, SyntaxError) as e:
        sys.stderr.write(f"agent assembly refused: {e}\n")
        return 1
    if check:
        try:
            with open(out, encoding="utf-8") as f:
                same = f.read() == text
        except OSError:
            same = False
        if not same:
            sys.stderr.write(f"{out} is not what plugins/module_utils/_agent/ assembles to: run `make agent`\n")
            return 1
        return 0
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
