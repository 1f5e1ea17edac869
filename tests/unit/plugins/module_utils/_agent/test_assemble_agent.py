"""The agent's source package assembles into the committed, stdlib-only file a host receives."""
import ast
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.beam.hotswap.plugins.module_utils._agent import (
    MODULES,
    _assemble,
)

REPO = Path(__file__).resolve().parents[5]
PACKAGE = REPO / "plugins" / "module_utils" / "_agent"
ARTIFACT = REPO / "roles" / "agent" / "files" / "hotswap_agent.py"


def test_committed_agent_is_what_the_package_assembles_to():
    assert ARTIFACT.read_text() == _assemble.assemble(), "run `make agent` and commit the result"


def test_assembly_is_byte_identical_across_runs(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"agent{i}.py"
        p = subprocess.run([sys.executable, str(PACKAGE / "_assemble.py"), str(out)], capture_output=True,
                           text=True, check=False)
        assert p.returncode == 0, p.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_check_mode_reports_a_stale_artifact(tmp_path):
    stale = tmp_path / "agent.py"
    stale.write_text(ARTIFACT.read_text() + "# edited by hand\n")
    p = subprocess.run([sys.executable, str(PACKAGE / "_assemble.py"), "--check", str(stale)],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 1 and "make agent" in p.stderr


def test_every_module_says_what_it_owns_and_stays_small():
    for mod in MODULES:
        src = (PACKAGE / f"{mod}.py").read_text()
        assert ast.get_docstring(ast.parse(src)), f"{mod}.py has no docstring"
        assert src.count("\n") <= 500, f"{mod}.py has {src.count(chr(10))} lines"
    listed = {m + ".py" for m in MODULES} | {"__init__.py", "_assemble.py"}
    assert set(os.listdir(PACKAGE)) - {"__pycache__"} == listed


def test_the_assembled_agent_imports_only_the_standard_library_and_parses_on_python_3_9():
    tree = ast.parse(ARTIFACT.read_text(), feature_version=(3, 9))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names), ast.dump(node)
        assert not isinstance(node, ast.ImportFrom), f"line {node.lineno}: from-import in the assembled agent"


def test_a_non_stdlib_or_later_module_import_is_refused(tmp_path, monkeypatch):
    real = _assemble._read

    def fake(name):
        src = real(name)
        if name == "names.py":
            return src.replace('\nimport ', '\nimport yaml\nimport ', 1)
        return src
    monkeypatch.setattr(_assemble, "_read", fake)
    try:
        _assemble.assemble()
    except _assemble.AssemblyError as e:
        assert "import yaml" in str(e) and "standard library" in str(e)
    else:
        raise AssertionError("a non-stdlib import was accepted")

    def later(name):
        src = real(name)
        if name == "errors.py":
            return src.replace('"""\n\nimport time', '"""\n\nimport time\n\nfrom .cli import main', 1)
        return src
    monkeypatch.setattr(_assemble, "_read", later)
    try:
        _assemble.assemble()
    except _assemble.AssemblyError as e:
        assert "assembled before" in str(e)
    else:
        raise AssertionError("an import of a later module was accepted")
