"""Read-only commands: `status` and `facts` (state, OS fingerprint, agent checksums), the relup edges a
release offers, the previous release, and the state key a plan is checked against.
"""

import json
import os
import pwd
import re
import subprocess

from .errors import BadInput, OpFailed
from .names import AGENT_VERSION, plan_state_key, vsn_key
from .erlterms import parse_terms, _s, TermError
from .files import sha256_file
from .fingerprint import gather_fingerprint
from .state import host_state, installed_by_agent


def cmd_status(h, a):
    """status: what runs, what is permanent, what is unpacked, the relup edges of the running release,
    the previous release, the packages held and any repairs needed; changes nothing."""
    hs = host_state(h)
    rels, releases_error, se, up, pid, boot, perm, running, current = (
        hs[k] for k in ("rels", "releases_error", "se", "up", "pid", "boot", "perm", "running", "current"))
    rv = running if up else perm
    relup_up, relup_down, relup_error = [], [], None
    if rv:
        try:
            with open(h.p("releases", rv, "relup"), encoding="utf-8") as fh:
                relup_up, relup_down = relup_edges(fh.read())
        except FileNotFoundError:
            pass
        except (OSError, TermError, ValueError, UnicodeDecodeError) as e:
            relup_error = f"releases/{rv}/relup: {e}"
    pk = {}
    pdir = os.path.join(h.hs, "packages")
    if os.path.isdir(pdir):
        for f in sorted(os.listdir(pdir)):
            m = re.match(r"^([0-9a-f]{8,64})", f)
            pk[m.group(1) if m else f] = f
    return {
        "changed": False,
        # the agent's own records too: the node's user can delete bin/APP, not make the host look fresh
        "installed": os.path.exists(h.p("bin", h.app)) or installed_by_agent(h),
        "node": h.node_name(),
        "node_up": up, "os_pid": pid, "boot_version": boot,
        "running": running, "permanent": perm, "current": current,
        "host_version": running if up else perm,
        "previous": previous_release(h, perm, rels) if perm else None,
        "relup_up": relup_up, "relup_down": relup_down, "relup_error": relup_error,
        "first_install_pending": os.path.exists(os.path.join(h.hs, "first-install.json")),
        "env_pending_restart": h.env_pending() if up else [],
        "unpacked": [r["version"] for r in rels or [] if r["status"] == "unpacked" and r["version"] != current],
        "old": [r["version"] for r in rels or [] if r["status"] == "old"],
        "releases": [{"version": r["version"], "status": r["status"], "erts": r["erts"],
                      "sha256": h.sha_record(r["version"])} for r in rels or []],
        "releases_file": os.path.exists(os.path.join(h.rel_dir, "RELEASES")),
        "releases_error": releases_error,
        "start_erl": se,
        "agent_version": AGENT_VERSION,
        "packages": pk,
        "rpc_calls": h.rpc_calls,
    }


def ensure_user(name):
    """The node's run user, created on first install when missing (a system user: no home, no shell).
    Returns True when it was created."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise BadInput(f"no such user {name!r} (and only root can create it)")
    p = subprocess.run(["useradd", "--system", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True, timeout=60, check=False)
    if p.returncode != 0:
        raise OpFailed(f"could not create the run user {name!r}: {(p.stderr or p.stdout).strip()[-300:]}")
    return True


def state_key(h):
    """What the plan was made from, in one string: node up, running, permanent (see `facts`)."""
    st = host_state(h)
    return plan_state_key(st["up"], st["running"], st["perm"])


def cmd_facts(h, a):
    """status + the OS fingerprint + the installed agent's checksums (one read for the collection's
    facts step); with --expect-agent, `agent_current` says whether they are the expected ones."""
    res = cmd_status(h, a)
    res["fingerprint"] = gather_fingerprint()
    here = os.path.dirname(os.path.abspath(__file__))
    files = {}
    for name in ("agent.py", "node.erl"):
        f = os.path.join(here, name)
        files[name] = sha256_file(f) if os.path.isfile(f) else None
    res["agent_files"] = files
    if a.expect_agent:
        want = {}
        for item in a.expect_agent.split(","):
            name, sep, sha = item.partition("=")
            if not sep or name not in files:
                raise BadInput(f"--expect-agent wants NAME=SHA256 pairs for agent.py, node.erl (got {item!r})")
            want[name] = sha
        res["agent_current"] = all(files.get(n) == sha for n, sha in want.items())
    return res


def _relup_edges_scan(text):
    """Fallback for relups the term parser cannot read: walk the text tracking only nesting,
    skipping strings, quoted atoms, char literals and comments, and pick the version strings at
    {_, [{HERE, ...}], [{HERE, ...}]}."""
    ups, downs = [], []
    stack = []
    pos, n = 0, len(text)
    str_re = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
    while pos < n:
        c = text[pos]
        if c == "%":
            nl = text.find("\n", pos)
            pos = n if nl < 0 else nl + 1
        elif c == '"':
            m = str_re.match(text, pos)
            if not m:
                raise TermError("unterminated string in relup")
            if (len(stack) == 3 and stack[0][0] == "{" and stack[0][1] in (1, 2) and stack[1][0] == "["
                    and stack[2][0] == "{" and stack[2][1] == 0):
                (ups if stack[0][1] == 1 else downs).append(m.group(1))
            pos = m.end()
        elif c == "'":
            m = re.compile(r"'((?:[^'\\]|\\.)*)'", re.S).match(text, pos)
            if not m:
                raise TermError("unterminated quoted atom in relup")
            pos = m.end()
        elif c == "$":
            m = re.compile(r"\$(\\(x\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|[0-7]{1,3}|\^.|.)|.)", re.S).match(text, pos)
            pos = m.end() if m else pos + 1
        elif text.startswith("<<", pos):
            stack.append(["<<", 0])
            pos += 2
        elif text.startswith(">>", pos) and stack and stack[-1][0] == "<<":
            stack.pop()
            pos += 2
        elif c in "{[":
            stack.append([c, 0])
            pos += 1
        elif c in "}]":
            if not stack:
                raise TermError("unbalanced relup")
            stack.pop()
            pos += 1
        elif c == ",":
            if stack:
                stack[-1][1] += 1
            pos += 1
        elif c == "." and not stack and (pos + 1 >= n or text[pos + 1] in " \t\r\n%"):
            break
        else:
            pos += 1
    return ups, downs


def relup_edges(text):
    """(up-from versions, down-to versions) of a relup file {Vsn, Ups, Downs}."""
    try:
        terms = parse_terms(text)
        t = terms[0] if terms else None
        if not (isinstance(t, tuple) and len(t) == 3 and isinstance(t[1], list) and isinstance(t[2], list)):
            raise TermError("not {Vsn, Ups, Downs}")
        return [_s(e[0]) for e in t[1]], [_s(e[0]) for e in t[2]]
    except (TermError, ValueError, IndexError, TypeError, KeyError):
        return _relup_edges_scan(text)


TRANSITION_OPS = ("hot", "cold", "rollback", "revert", "first-install", "install", "commit")


def previous_release(h, perm, rels):
    """The release this host ran before `perm`: the journal's last successful transition to perm
    (its `from`); else the newest `old` release in RELEASES."""
    f = os.path.join(h.hs, "journal.jsonl")
    lines = []
    try:
        with open(f, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - (4 << 20)))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        pass
    for line in reversed(lines):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict) or e.get("result") != "ok" or e.get("op") not in TRANSITION_OPS:
            continue
        if e.get("version") != perm or e.get("op") == "commit":
            continue  # a commit's `from` is in the install before it
        frm = e.get("from")
        if e.get("op") == "first-install":
            break
        if frm and frm != perm:
            return frm
    olds = sorted((r["version"] for r in rels or [] if r["status"] == "old"), key=vsn_key)
    return olds[-1] if olds else None
