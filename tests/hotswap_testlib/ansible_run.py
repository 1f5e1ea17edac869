"""Run ansible-playbook against a test fleet and read its recap.  Stdlib only.

    rc, out, err = run_playbook(fleet, "tests/integration/playbooks/build.yml", {"hotswap_app": "sample"})
    recap = parse_recap(out)   # {"build1": {"ok": 3, "changed": 1, "failed": 0, "unreachable": 0, ...}}
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
ANSIBLE_PLAYBOOK = VENV / "bin" / "ansible-playbook"
COLLECTIONS_ROOT = VENV / "collections"

# The settle window (hotswap_settle_seconds, default 6 s, waited once per batch) is waiting, not work. The test
# suite (tests/conftest.py) sets this to 0: a run of deploy.yml or rollback.yml that does not set the variable
# itself runs without the window. The settle, hooks, privilege and ledger tests set it; `make demo` (part of
# `make fresh-check`) and the benchmarks run the role's default.
SETTLE_UNLESS_SET: float | None = None
_SETTLED_PLAYBOOKS = ("deploy.yml", "rollback.yml")


def ansible_env(fleet, extra: dict | None = None) -> dict:
    """The fleet's ansible environment plus the collection and test-lib paths."""
    env = fleet.ansible_env()
    env["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS_ROOT)
    # tests read task results and messages from the output: pin its format whatever ansible.cfg says
    env.pop("ANSIBLE_CONFIG", None)
    env["ANSIBLE_CALLBACK_RESULT_FORMAT"] = "json"
    paths = [str(COLLECTIONS_ROOT), str(REPO / "tests")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if extra:
        env.update(extra)
    return env


def run_playbook(fleet, playbook, extra_vars: dict | None = None, check: bool = False, diff: bool = False,
                 limit: str | None = None, args: list | tuple = (), env: dict | None = None,
                 timeout: float = 900) -> tuple[int, str, str]:
    """``ansible-playbook -i INVENTORY PLAYBOOK -e @vars.json [--check] [--diff] [--limit L]``.

    ``extra_vars`` go in one JSON file (so lists, dicts and strings with spaces survive).
    Returns ``(rc, stdout, stderr)``; never raises on a failed play.
    """
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(fleet.inventory_path), str(playbook)]
    extra_vars = dict(extra_vars or {})
    if SETTLE_UNLESS_SET is not None and Path(str(playbook)).name in _SETTLED_PLAYBOOKS:
        extra_vars.setdefault("hotswap_settle_seconds", SETTLE_UNLESS_SET)
    fd, vars_path = tempfile.mkstemp(prefix="hotswap-vars-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(extra_vars or {}, f)
        argv += ["-e", "@" + vars_path]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if limit:
            argv += ["--limit", limit]
        argv += list(args)
        p = subprocess.run(argv, env=ansible_env(fleet, env), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(REPO), check=False)
        return p.returncode, p.stdout, p.stderr
    finally:
        os.unlink(vars_path)


_RECAP_LINE = re.compile(r"^(\S+)\s*:\s*((?:\w+=\d+\s*)+)$")


def parse_recap(stdout: str) -> dict:
    """``{host: {"ok": n, "changed": n, "unreachable": n, "failed": n, "skipped": n, ...}}`` from
    the PLAY RECAP at the end of ansible-playbook's default output (the last recap wins)."""
    out: dict = {}
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")]
    if not starts:
        return out
    for line in lines[starts[-1] + 1:]:
        m = _RECAP_LINE.match(line.strip())
        if not m:
            if line.strip():
                continue
            if out:
                break
            continue
        counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        for k in ("ok", "changed", "unreachable", "failed"):
            counts.setdefault(k, 0)
        out[m.group(1)] = counts
    return out


_RESULT_LINE = re.compile(r"^(ok|changed|fatal|failed|skipping|included): \[([^\]]+)\](?:: FAILED!)? => ", re.M)
_TASK_LINE = re.compile(r"^TASK \[(.*)\] \**$", re.M)


def task_results(stdout: str) -> list[dict]:
    """Per-host task results printed with ``-v`` or more by the default callback:
    ``[{"task": name, "host": h, "status": "ok"|"changed"|"fatal"|..., "result": {...}}]``."""
    decoder = json.JSONDecoder()
    tasks = [(m.start(), m.group(1)) for m in _TASK_LINE.finditer(stdout)]
    out = []
    for m in _RESULT_LINE.finditer(stdout):
        try:
            result, _end = decoder.raw_decode(stdout, m.end())
        except ValueError:
            result = None
        task = next((name for pos, name in reversed(tasks) if pos < m.start()), None)
        out.append({"task": task, "host": m.group(2), "status": m.group(1), "result": result})
    return out


def task_result(stdout: str, task_contains: str, host: str | None = None) -> dict | None:
    """The last result of a task whose name contains ``task_contains`` (for ``host``), or None."""
    found = [r for r in task_results(stdout)
             if r["task"] and task_contains in r["task"] and (host is None or r["host"] == host)]
    return found[-1] if found else None
