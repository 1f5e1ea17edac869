"""beam.hotswap host agent: moves one mix release root from one state to another.

    python3 agent.py --root /opt/APP --app APP [--user U] COMMAND [options]

Commands: status, facts, unpack, install, health, commit, revert, rollback, hot, cold, first-install,
prune, start, stop.
Prints exactly one JSON object on stdout.  Exit 0 ok, 1 operation failed, 2 bad input.
Python 3.9+ standard library only.  The node-side code lives in node.erl (installed next to
this file, in the agent's root-only directory PARENT/.hotswap/NAME beside the release root;
`hotswap_node.erl` in the repository): an Erlang expression sequence that erl_eval evaluates in
the node, needing only kernel, stdlib and sasl (mix and relx releases alike).  The agent runs its
phases on the live node through `erl_call` (shipped with every ERTS), run as the node's user:
nothing from the release tree ever runs as root.

Before a hot install the node rehearses every code_change of the relup edge on a copy of
the live state in a scratch peer node; if one raises, the install is refused (nothing is
installed, the host keeps its version and its state).

TEST-ONLY fault injection: the environment variable HOTSWAP_AGENT_FAULT=before_install makes
`hot` and `install` SIGKILL the node right before the install rpc (to test recovery from a node
that dies mid-deploy); =after_commit right after a hot commit, =after_start right after a cold
start passed its health check (both inside the settle window).  Any other value is ignored.  Never
set it in production.

Source layout: this package's modules, each owning one concern, in the order they are assembled
(each imports only from those before it); `_assemble.py` joins them into the single stdlib-only
file a host receives, roles/agent/files/hotswap_agent.py (`make agent`).

GENERATED from plugins/module_utils/_agent/ by _assemble.py: edit those modules, then run
`make agent`.
"""
import argparse
import base64
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import lzma
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zlib


# ==================================================================================================
# errors.py
# The agent's errors and their exit codes: BadInput and PackageRefused exit 2 (nothing changed),
# OpFailed exits 1 (the operation failed; its extra fields go into the JSON result).
# ==================================================================================================

class BadInput(Exception):
    """exit 2"""


class PackageRefused(BadInput):
    """A package that is malformed or unsafe (entries escaping the root, another app, a bad .rel):
    refused before anything is written (exit 2)."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


class OpFailed(Exception):
    """exit 1; extra goes into the JSON result"""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def now_ms():
    return time.monotonic() * 1000.0


# ==================================================================================================
# options.py
# The options the release task hands to the agent, one row each: the task's option (its spec: type,
# default, choices), the agent's flag, and how the agent parses it.  The agent's command line
# (``cli.build_parser``) and the controller's (the task's spec, and the command line ``_release`` builds)
# both come from these rows: an option the agent takes from the task is added here, in one place.
# ==================================================================================================

# (task option, task spec, agent flag, agent dest, agent type, agent default)
TASK_OPTIONS = (
    ("keep_releases", {"type": "int", "default": 5}, "--keep", "keep", int, None),
    ("health_timeout", {"type": "int", "default": 30}, "--timeout", "timeout", float, 30.0),
    ("service_manager", {"type": "str", "default": "auto", "choices": ["auto", "systemd", "daemon"]},
     "--service-manager", "service_manager", str, "auto"),
    # no_log: a URL may carry a token; the controller hands it to the agent on stdin, never on a command line
    ("health_check", {"type": "str", "no_log": True}, "--check", "check", str, None),
    # after a hot commit (and prune) the node must stay up and healthy this long; 0 = no watch
    ("settle_seconds", {"type": "float", "default": 6.0}, "--settle", "settle", float, 0.0),
    # processes executing code a hot upgrade replaces (a purge would kill them): refuse, or let them die
    ("old_code", {"type": "str", "default": "refuse", "choices": ["refuse", "kill"]},
     "--old-code", "old_code", str, "refuse"),
    # how long such processes get to leave before that decision
    ("old_code_wait", {"type": "float", "default": 5.0}, "--old-code-wait", "old_code_wait", float, 5.0),
)


# options that travel with the settings on the agent's stdin (``_release.settings_of``), not on its command line
SETTINGS_OPTIONS = ("health_check",)


def task_option_specs():
    """The task's argument spec entries for these options."""
    return {name: dict(spec) for name, spec, _flag, _dest, _type, _default in TASK_OPTIONS}


def agent_option_args(params):
    """The agent's command-line arguments for a task's validated parameters (unset options left out)."""
    out = []
    for name, _spec, flag, _dest, _type, _default in TASK_OPTIONS:
        if name in SETTINGS_OPTIONS:
            continue
        if params.get(name) not in (None, ""):
            out += [flag, str(params[name])]
    return out


def add_agent_options(parser):
    """Add these options to an agent (sub)command parser."""
    for _name, spec, flag, dest, kind, default in TASK_OPTIONS:
        kw = {"dest": dest, "type": kind, "default": default}
        if spec.get("choices"):
            kw["choices"] = list(spec["choices"])
        parser.add_argument(flag, **kw)


# ==================================================================================================
# names.py
# Names and versions, for the agent and the controller alike: the rules for a release name, a release
# version, a sha256, a user and an env key (one copy of each rule: the playbooks' input check, the build,
# the modules and the agent all use these), the agent's own version, and the order of release versions.
# ==================================================================================================

AGENT_VERSION = "1.3.0"

# a release version: letters, digits and . _ + - (never "..": versions become paths)
VSN_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}\Z")
# a release name (the `releases:` key in mix.exs): an Erlang atom written bare
APP_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# a release root as the controller accepts it: absolute, plain characters, not /, no ".."
ROOT_RE = re.compile(r"^/[A-Za-z0-9._/-]*\Z")


SYSTEM_DIRS = {"/", "/opt", "/usr", "/usr/local", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/share", "/etc", "/var",
               "/var/lib", "/var/tmp", "/var/log", "/srv", "/home", "/root", "/tmp", "/bin", "/sbin", "/boot", "/dev",
               "/proc", "/sys", "/run", "/mnt", "/media", "/snap"}


def is_system_dir(path, real=True):
    """True for a directory of the operating system (SYSTEM_DIRS, /lib*, /usr/lib*), by its path (and, on the
    host, its real path): never a release root."""
    paths = {os.path.normpath(path)} | ({os.path.realpath(path)} if real else set())
    return any(r in SYSTEM_DIRS or re.fullmatch(r"/(usr/)?lib[^/]*", r) is not None for r in paths)


def valid_version(v):
    """True for a release version (see VSN_RE)."""
    return isinstance(v, str) and VSN_RE.match(v) is not None and ".." not in v


def valid_user(u):
    """True for a user the node may run as: a system user name (see USER_RE), never root."""
    return isinstance(u, str) and USER_RE.match(u) is not None and u != "root"


def valid_app(a):
    """True for a release name (see APP_RE)."""
    return isinstance(a, str) and APP_RE.match(a) is not None


def valid_root(root):
    """True for a release root the controller accepts (see ROOT_RE)."""
    return isinstance(root, str) and ROOT_RE.match(root) is not None and os.path.normpath(root) not in ("/", "//") \
        and ".." not in root.split("/") and not is_system_dir(root, real=False)


def state_dir(root):
    """The agent's own directory for a release root: ``PARENT/.hotswap/NAME`` beside ROOT, never inside it
    (ROOT belongs to the node's user, who could rename anything in it); root-owned, like PARENT."""
    root = os.path.normpath(root)
    return os.path.join(os.path.dirname(root), ".hotswap", os.path.basename(root))


def legacy_state_dir(root):
    """Where agents before 1.2.0 kept their state: ROOT/.hotswap, inside the node user's tree."""
    return os.path.join(os.path.normpath(root), ".hotswap")


def check_vsn(v, what="version"):
    if not valid_version(v):
        raise BadInput(f"invalid {what} {v!r}: must match {VSN_RE.pattern} without '..'")
    return v


def check_app(a):
    if not valid_app(a):
        raise BadInput(f"invalid app name {a!r}: must match {APP_RE.pattern}")
    return a


def check_sha(s):
    s = (s or "").lower()
    if not SHA_RE.fullmatch(s):
        raise BadInput(f"invalid sha256 {s!r}: need 64 hex digits")
    return s


def plan_state_key(up, running, permanent):
    """The host state a plan is made from, in one string (``up:2.0.0:1.0.0``): the controller sends the
    key of the facts it planned from (--expect-state), the agent compares it with the host's own."""
    return "%s:%s:%s" % ("up" if up else "down", running or "-", permanent or "-")


def vsn_key(v):
    """Sort key for versions: numeric parts numerically, pre-releases before releases."""
    main, _ign, pre = v.partition("-")
    parts = []
    for p in re.split(r"[.+]", main):
        parts.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return (parts, 0 if pre else 1, pre)


# ==================================================================================================
# erlterms.py
# Erlang terms, for the agent and the controller alike: a reader for the files release_handler, mix and
# relx write (RELEASES, .rel, .appup, relup, start_erl.data, sys.config; maps, `base#`, `$c` included) and a
# writer whose output `file:consult` reads back.
#
# Atoms are :class:`Atom` (a ``str`` subclass); Erlang strings are ``str``; binaries are ``bytes``; tuples
# are ``tuple``; lists are ``list``; maps are ``dict``.
#
# Versions and lib dir names read from RELEASES and .rel files become paths on the host: ``parse_releases`` and
# ``parse_rel`` refuse (ValueError naming the entry) a release or ERTS version that is not a valid version and a
# lib dir that is not a plain NAME-VSN name, so nothing like ``1.0.0/../../x`` ever reaches a path.
# ==================================================================================================

class Atom(str):
    """An Erlang atom (a str subclass so it compares with plain strings)."""

    __slots__ = ()

    def __repr__(self):
        return f"Atom({str.__repr__(self)})"


class TermError(ValueError):
    """Text that is not a term this reader knows, or a value the writer cannot render."""


_ESC = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "b": "\b", "f": "\f", "v": "\v",
        "e": "\x1b", "d": "\x7f", "\\": "\\", '"': '"', "'": "'"}


def parse_terms(text):
    """Parse a file of Erlang terms each ending with '.' (file:consult subset):
    atoms, quoted atoms, strings, integers (incl. base#), floats, tuples, lists,
    binaries of strings/ints, maps.  Returns the list of terms."""
    pos = 0
    n = len(text)
    out = []

    def skip():
        nonlocal pos
        while pos < n:
            c = text[pos]
            if c in " \t\r\n":
                pos += 1
            elif c == "%":
                while pos < n and text[pos] != "\n":
                    pos += 1
            else:
                break

    def quoted(q):
        nonlocal pos
        pos += 1
        buf = []
        while True:
            if pos >= n:
                raise TermError("unterminated quoted text")
            c = text[pos]
            if c == q:
                pos += 1
                return "".join(buf)
            if c == "\\":
                pos += 1
                if pos >= n:
                    raise TermError("bad escape")
                c = text[pos]
                if c in "01234567":
                    m = re.match(r"[0-7]{1,3}", text[pos:])
                    buf.append(chr(int(m.group(0), 8)))
                    pos += len(m.group(0))
                    continue
                if c == "x":
                    m = re.match(r"x\{([0-9a-fA-F]+)\}|x([0-9a-fA-F]{2})", text[pos:])
                    if not m:
                        raise TermError("bad \\x escape")
                    buf.append(chr(int(m.group(1) or m.group(2), 16)))
                    pos += len(m.group(0))
                    continue
                if c == "^":
                    buf.append(chr(ord(text[pos + 1]) % 32))
                    pos += 2
                    continue
                buf.append(_ESC.get(c, c))
                pos += 1
                continue
            buf.append(c)
            pos += 1

    def seq(close):
        nonlocal pos
        items = []
        skip()
        if pos < n and text[pos] == close:
            pos += 1
            return items, None
        while True:
            items.append(value())
            skip()
            if pos >= n:
                raise TermError("unterminated sequence")
            c = text[pos]
            if c == ",":
                pos += 1
                continue
            if c == close:
                pos += 1
                return items, None
            if c == "|" and close == "]":
                pos += 1
                tail = value()
                skip()
                if pos >= n or text[pos] != "]":
                    raise TermError("bad improper list")
                pos += 1
                return items, tail
            raise TermError(f"unexpected {c!r} at {pos}")

    def value():
        nonlocal pos
        skip()
        if pos >= n:
            raise TermError("unexpected end of input")
        c = text[pos]
        if c == "[":
            pos += 1
            items, tail = seq("]")
            if tail is not None:
                if isinstance(tail, list):
                    return items + tail
                if isinstance(tail, str) and not isinstance(tail, Atom):
                    return items + list(tail)
                raise TermError("improper list")
            return items
        if c == "{":
            pos += 1
            items, _ign = seq("}")
            return tuple(items)
        if c == '"':
            s = quoted('"')
            skip()
            while pos < n and text[pos] == '"':  # adjacent string literals concatenate
                s += quoted('"')
                skip()
            return s
        if c == "'":
            return Atom(quoted("'"))
        if text.startswith("<<", pos):
            pos += 2
            skip()
            if text.startswith(">>", pos):
                pos += 2
                return b""
            buf = bytearray()
            while True:
                skip()
                v = value()
                if isinstance(v, str) and not isinstance(v, Atom):
                    buf += v.encode("utf-8")
                elif isinstance(v, int):
                    buf.append(v & 0xFF)
                else:
                    raise TermError("unsupported binary segment")
                skip()
                if text.startswith("/utf8", pos):
                    pos += 5
                    skip()
                if text.startswith(">>", pos):
                    pos += 2
                    return bytes(buf)
                if pos < n and text[pos] == ",":
                    pos += 1
                    continue
                raise TermError(f"bad binary at {pos}")
        if text.startswith("#{", pos):
            pos += 2
            d = {}
            skip()
            if pos < n and text[pos] == "}":
                pos += 1
                return d
            while True:
                k = value()
                skip()
                if not text.startswith("=>", pos):
                    raise TermError(f"expected => at {pos}")
                pos += 2
                v = value()
                d[k if not isinstance(k, list) else tuple(k)] = v
                skip()
                if pos < n and text[pos] == ",":
                    pos += 1
                    continue
                if pos < n and text[pos] == "}":
                    pos += 1
                    return d
                raise TermError(f"bad map at {pos}")
        if c == "$":
            if text[pos + 1] == "\\":
                pos += 1
                s = quoted_char()
                return s
            pos += 2
            return ord(text[pos - 1])
        m = re.compile(r"-?\d+(\.\d+([eE][-+]?\d+)?|#[0-9a-zA-Z]+)?").match(text, pos)
        if m and m.group(0) not in ("-",):
            tok = m.group(0)
            pos = m.end()
            if "#" in tok:
                base, digits = tok.split("#")
                return int(digits, int(base.lstrip("-"))) * (-1 if base.startswith("-") else 1)
            if "." in tok:
                return float(tok)
            return int(tok)
        m = re.compile(r"[a-z][A-Za-z0-9_@]*").match(text, pos)
        if m:
            pos = m.end()
            return Atom(m.group(0))
        raise TermError(f"unexpected {c!r} at offset {pos}")

    def quoted_char():
        nonlocal pos
        # pos at backslash of $\x
        c = text[pos + 1]
        pos += 2
        return ord(_ESC.get(c, c))

    while True:
        skip()
        if pos >= n:
            return out
        out.append(value())
        skip()
        if pos >= n or text[pos] != ".":
            raise TermError(f"expected '.' after term at offset {pos}")
        pos += 1


def _estr(s):
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\x{%x}" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _eatom(a):
    if re.fullmatch(r"[a-z][A-Za-z0-9_@]*", a) and a not in ("after", "and", "andalso", "band", "begin",
                                                             "bnot", "bor", "bsl", "bsr", "bxor", "case",
                                                             "catch", "cond", "div", "end", "fun", "if",
                                                             "let", "not", "of", "or", "orelse",
                                                             "receive", "rem", "try", "when", "xor"):
        return a
    return "'" + a.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ebin(b):
    if not b:
        return "<<>>"
    if all(0x20 <= x < 0x7F for x in b):
        return "<<" + _estr(b.decode("ascii")) + ">>"
    try:
        return "<<" + _estr(b.decode("utf-8")) + "/utf8>>"
    except UnicodeDecodeError:
        return "<<" + ",".join(str(x) for x in b) + ">>"


def format_term(t):
    """Python value -> Erlang term text (without the full stop)."""
    if isinstance(t, Atom):
        return _eatom(t)
    if isinstance(t, bool):
        return "true" if t else "false"
    if isinstance(t, str):
        return _estr(t)
    if isinstance(t, bytes):
        return _ebin(t)
    if isinstance(t, int):
        return str(t)
    if isinstance(t, tuple):
        return "{" + ",".join(format_term(x) for x in t) + "}"
    if isinstance(t, list):
        return "[" + ",".join(format_term(x) for x in t) + "]"
    raise TermError(f"cannot format {type(t).__name__}")


def _s(v):
    """Erlang string (str or list of ints) -> str."""
    if isinstance(v, list) and all(isinstance(x, int) for x in v):
        return "".join(chr(x) for x in v)
    if isinstance(v, (str, bytes)):
        return v.decode() if isinstance(v, bytes) else str(v)
    raise TermError(f"expected a string, got {v!r}")


_LIB_APP_RE = re.compile(r"[^/\x00-\x1f\x7f.][^/\x00-\x1f\x7f]*\Z")


def valid_lib(app, vsn):
    """True when ``app``-``vsn`` is a safe lib dir name (one path component, no '..', a valid version)."""
    return isinstance(app, str) and _LIB_APP_RE.match(app) is not None and ".." not in app and valid_version(vsn)


def check_release_names(what, vsn, erts, libs):
    """Raise TermError unless vsn and erts are valid versions and each (app, vsn[, dir]) names a plain lib dir."""
    for label, v in (("version", vsn), ("ERTS version", erts)):
        if not valid_version(v):
            raise TermError(f"{what}: {label} {v!r} is not a valid version (letters, digits and . _ + -, no '..')")
    for lib in libs:
        if not valid_lib(lib[0], lib[1]):
            raise TermError(f"{what}: lib {lib[0]!r} {lib[1]!r} is not a plain NAME-VSN directory name")
        if len(lib) > 2:
            d = lib[2]
            parts = d.rstrip("/").split("/")
            if ".." in parts or any(ord(c) < 0x20 for c in d) or not valid_lib(*parts[-1].rpartition("-")[::2]):
                raise TermError(f"{what}: lib dir {d!r} of {lib[0]} is not a plain .../NAME-VSN path")


def parse_releases(text):
    """releases/RELEASES -> [{"name","version","erts","libs":[(app,vsn,dir)],"status"}]; an entry whose
    version, ERTS version or lib dirs are not safe names is refused (TermError)."""
    terms = parse_terms(text)
    if len(terms) != 1 or not isinstance(terms[0], list):
        raise TermError("RELEASES must hold one list")
    rels = []
    for r in terms[0]:
        if not (isinstance(r, tuple) and len(r) == 6 and r[0] == "release"):
            raise TermError(f"bad release entry {r!r}")
        _ign, name, vsn, erts, libs, status = r
        if not isinstance(libs, list) or not all(isinstance(x, tuple) and len(x) == 3 for x in libs):
            raise TermError(f"bad lib list in release entry {_s(vsn)!r}")
        rel = {"name": _s(name), "version": _s(vsn), "erts": _s(erts), "status": str(status),
               "libs": [(str(x[0]), _s(x[1]), _s(x[2])) for x in libs]}
        check_release_names(f"RELEASES entry {rel['version']!r}", rel["version"], rel["erts"], rel["libs"])
        rels.append(rel)
    return rels


def permanent_version(rels):
    """The permanent release's version in parsed RELEASES (``parse_releases``), or None (also for None)."""
    return next((r["version"] for r in rels or [] if r["status"] == "permanent"), None)


def format_releases(rels):
    body = [(Atom("release"), r["name"], r["version"], r["erts"],
             [(Atom(a), v, d) for a, v, d in r["libs"]], Atom(r["status"])) for r in rels]
    return "%% coding: utf-8\n" + format_term(body) + ".\n"


def parse_rel(text):
    """APP.rel -> {"name","version","erts","apps":[(app,vsn)]}"""
    terms = parse_terms(text)
    if len(terms) != 1:
        raise TermError(".rel must hold one term")
    t = terms[0]
    if not (isinstance(t, tuple) and len(t) == 4 and t[0] == "release"):
        raise TermError("not a release resource term")
    _ign, (name, vsn), (_erts_tag, erts), apps = t
    rel = {"name": _s(name), "version": _s(vsn), "erts": _s(erts), "apps": [(str(a[0]), _s(a[1])) for a in apps]}
    check_release_names(f"release {rel['name']} {rel['version']!r}", rel["version"], rel["erts"], rel["apps"])
    return rel


# ==================================================================================================
# files.py
# Files on the host: the node's env file, epmd's registered names, sha256 of a file, and the tar safety
# rules (members that stay inside the root, no links out, no device files) used before anything is
# extracted; chown and removal of trees.
#
# Everything below the release root belongs to the node's user and is hostile input to the root agent:
# writes, reads, renames and removals there go through the dir-fd helpers below (``safe_open_dir``,
# ``safe_write``, ``safe_read``, ``safe_rmtree``, ``safe_rename``), which never follow a symbolic link below
# the root and chown only what they created (fchown/lchown).
# ==================================================================================================

def parse_env(text):
    """KEY=VALUE lines ('#' comments and blank lines skipped, an optional 'export ' prefix): the key must
    match exactly (no surrounding blanks), the value is kept byte-exact (everything after the first '=',
    quotes and blanks included), as the agent writes it."""
    env = {}
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:]
        key, sep, val = line.partition("=")
        if not sep or not ENV_KEY_RE.fullmatch(key) or "\0" in val:
            raise ValueError(f"env line {i}: expected KEY=VALUE (KEY letters, digits and _, nothing around it)")
        env[key] = val
    return env


def epmd_names(host="127.0.0.1", port=None, timeout=1.0):
    """{name: port} registered with epmd (NAMES_REQ); None when epmd is not reachable."""
    port = port or int(os.environ.get("ERL_EPMD_PORT") or 4369)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">HB", 1, 110))
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    names = {}
    for line in data[4:].decode("utf-8", "replace").splitlines():
        m = re.match(r"^name (\S+) at port (\d+)$", line.strip())
        if m:
            names[m.group(1)] = int(m.group(2))
    return names


def _inside(root, path):
    root = os.path.normpath(root)
    path = os.path.normpath(path)
    return path == root or path.startswith(root + os.sep)


def inside(root, path, real=True):
    """True when ``path`` is ``root`` or below it; with ``real`` both are resolved first (realpath), so a
    symbolic link anywhere in ``path`` that leads out of ``root`` makes it False."""
    if real:
        root, path = os.path.realpath(root), os.path.realpath(path)
    return _inside(root, path)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _rel_parts(root, rel):
    """``rel`` (relative to root, or an absolute path below root) as a list of names; no '..'."""
    if os.path.isabs(rel):
        if not _inside(root, rel):
            raise OpFailed(f"{rel} is not inside {root}: refused")
        rel = os.path.relpath(os.path.normpath(rel), os.path.normpath(root))
    parts = [x for x in rel.split("/") if x not in ("", ".")]
    if ".." in parts:
        raise OpFailed(f"{os.path.join(root, rel)}: a path with '..' below {root} is refused")
    return parts


def _link_refused(path, root, e):
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return OpFailed(f"{path} is a symbolic link or not a directory: the agent never follows links below "
                        f"{root} (remove or rename it, then re-run)", path=path)
    return OpFailed(f"cannot open {path}: {e.strerror}", path=path)


def safe_open_dir(root, rel="", create=False, mode=0o750, owner=None):
    """A file descriptor (the caller closes it) for the directory ROOT/rel, opened one component at a time
    with openat(O_NOFOLLOW|O_DIRECTORY): a symbolic link at the root or anywhere below it is refused
    (OpFailed naming the path).  ``create``: missing components are made (``mode``; chowned to ``owner``
    when we are root, via the new directory's own fd)."""
    parts = _rel_parts(root, rel)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as e:
        raise _link_refused(root, root, e) from None
    path = root
    try:
        for name in parts:
            path = os.path.join(path, name)
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise OpFailed(f"{path} does not exist", path=path) from None
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    raise _link_refused(path, root, e) from None
                if owner is not None and os.geteuid() == 0:
                    os.fchown(nfd, *owner)
                os.fchmod(nfd, mode)
            except OSError as e:
                raise _link_refused(path, root, e) from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def safe_write(root, rel, data, owner=None, mode=0o644, create_dirs=False):
    """Write ``data`` (str: UTF-8, or bytes) to ROOT/rel atomically without following any symbolic link
    below ROOT: a temp file with a random name is created in the (no-follow opened) directory with
    O_CREAT|O_EXCL|O_NOFOLLOW, written, fsynced, fchmod ``mode``, fchown ``owner`` (when we are root and an
    owner is given), renamed over the name through the dir fd, and the dir fsynced.  A symbolic link
    planted at the name is replaced, never written through.  On failure the temp file is removed."""
    parts = _rel_parts(root, rel)
    if not parts:
        raise OpFailed(f"safe_write: no file name below {root}")
    if isinstance(data, str):
        data = data.encode("utf-8")
    dfd = safe_open_dir(root, "/".join(parts[:-1]), create=create_dirs, owner=owner)
    name = parts[-1]
    tmp = f".{name}.hotswap-tmp-{os.urandom(6).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600, dir_fd=dfd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                os.fchmod(fd, mode)
                if owner is not None and os.geteuid() == 0:
                    os.fchown(fd, *owner)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        try:
            os.fsync(dfd)
        except OSError:
            pass
    finally:
        os.close(dfd)
    return os.path.join(root, *parts)


def safe_read(root, rel, limit=None):
    """Bytes of the regular file ROOT/rel, read without following a symbolic link anywhere below ROOT;
    None when it is missing, a link, or not a regular file."""
    try:
        parts = _rel_parts(root, rel)
        dfd = safe_open_dir(root, "/".join(parts[:-1]))
    except OpFailed:
        return None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read() if limit is None else fh.read(limit)
    finally:
        os.close(fd)


def _rm_at(dfd, name):
    """Remove ``name`` in the directory ``dfd`` (a tree, recursively through dir fds; links themselves)."""
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dfd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        for child in os.listdir(fd):
            _rm_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


def safe_rmtree(root, rel):
    """Remove ROOT/rel (file, link or tree) without following any symbolic link: the parent is opened
    no-follow from ROOT, the tree is walked through dir fds.  A missing path is fine."""
    parts = _rel_parts(root, rel)
    if not parts:
        raise OpFailed(f"refusing to remove the root {root} itself")
    try:
        dfd = safe_open_dir(root, "/".join(parts[:-1]))
    except OpFailed:
        if not os.path.lexists(os.path.join(root, *parts[:-1])):
            return
        raise
    try:
        _rm_at(dfd, parts[-1])
    finally:
        os.close(dfd)


def safe_rename(src_root, src_rel, dst_root, dst_rel):
    """rename(SRC_ROOT/src_rel, DST_ROOT/dst_rel) through no-follow opened parent dirs."""
    sp, dp = _rel_parts(src_root, src_rel), _rel_parts(dst_root, dst_rel)
    sfd = safe_open_dir(src_root, "/".join(sp[:-1]))
    try:
        dfd = safe_open_dir(dst_root, "/".join(dp[:-1]))
        try:
            os.rename(sp[-1], dp[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def lchown_tree_at(root, rel, uid, gid, top=True):
    """Chown ROOT/rel and everything below it to uid:gid (when we are root) without following any link:
    lchown on each entry, walking through no-follow dir fds (``top=False``: not ROOT/rel itself)."""
    if os.geteuid() != 0:
        return
    parts = _rel_parts(root, rel)
    fd = safe_open_dir(root, "/".join(parts))

    def walk(dfd, me=True):
        if me:
            os.fchown(dfd, uid, gid)
        for name in os.listdir(dfd):
            st = os.lstat(name, dir_fd=dfd)
            if stat.S_ISDIR(st.st_mode):
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    walk(cfd)
                finally:
                    os.close(cfd)
            else:
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
    try:
        walk(fd, top)
    finally:
        os.close(fd)


def member_rel(m):
    """Generic tar entry checks (shared by upgrade packages and full tarballs): no control
    characters, no absolute paths, no '..', no devices/fifos, no links leading outside.
    Returns the normalised relative path ('' for the archive root)."""
    name = m.name
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name + (m.linkname or "")):
        raise PackageRefused(f"package refused: entry {name!r} has control characters in its name; nothing changed")
    if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise PackageRefused(f"package refused: absolute path entry {name!r}; nothing changed")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in name.replace("\\", "/").split("/"):
        raise PackageRefused(f"package refused: entry {name!r} contains '..'; nothing changed")
    if not parts:
        return ""
    if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise PackageRefused(f"package refused: entry {name!r} is a device/fifo/special file; nothing changed")
    rel = "/".join(parts)
    if m.issym() or m.islnk():
        target = m.linkname
        if not target:
            raise PackageRefused(f"package refused: link {name!r} has an empty target; nothing changed")
        if target.startswith("/") or (m.islnk() and ".." in target.split("/")):
            raise PackageRefused(f"package refused: link {name!r} -> {target!r} leads outside the root; nothing changed")
        base = "/r"
        dest = os.path.normpath(os.path.join(base, os.path.dirname(rel), target)) if m.issym() \
            else os.path.normpath(os.path.join(base, target))
        if not _inside(base, dest):
            raise PackageRefused(f"package refused: link {name!r} -> {target!r} leads outside the root; nothing changed")
    return rel


def check_member(m, app, vsn):
    """Raise PackageRefused (exit 2, nothing changed) unless the tar member is safe and belongs in an
    upgrade package."""
    rel = member_rel(m)
    if not rel:
        return None
    top_rel = f"releases/{app}-{vsn}.rel"
    if not (rel in ("releases", "lib", "bin", top_rel, f"releases/{vsn}") or rel.startswith((f"releases/{vsn}/", "bin/"))
            or re.match(r"^lib/[^/]+-[^/]+(/|$)", rel)):
        raise PackageRefused(f"package refused: unexpected entry {m.name!r} (an upgrade package holds only "
                             f"{top_rel}, releases/{vsn}/, lib/NAME-VSN/ and bin/); nothing changed")
    return rel


def check_full_member(m, app, vsn):
    """Raise PackageRefused (exit 2, nothing changed) unless the tar member is safe and belongs in a full
    `mix release` tarball of app vsn: bin/, erts-*/, lib/NAME-VSN/, releases/VSN/, releases/COOKIE,
    releases/start_erl.data."""
    rel = member_rel(m)
    if not rel:
        return None
    if not (rel in ("bin", "lib", "releases", "releases/COOKIE", "releases/start_erl.data",
                    f"releases/{vsn}", f"releases/{app}-{vsn}.rel")
            or rel.startswith(("bin/", f"releases/{vsn}/"))
            or re.match(r"^erts-[0-9][0-9A-Za-z._-]*(/|$)", rel)
            or re.match(r"^lib/[^/]+-[^/]+(/|$)", rel)):
        raise PackageRefused(f"package refused: unexpected entry {m.name!r} (a full release of {app} {vsn} holds "
                             f"bin/, erts-*/, lib/NAME-VSN/, releases/{vsn}/, releases/COOKIE and "
                             f"releases/start_erl.data); nothing changed")
    if rel in ("releases/COOKIE", "releases/start_erl.data") and not m.isfile():
        raise PackageRefused(f"package refused: {m.name!r} must be a regular file; nothing changed")
    return rel


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _norm(name):
    return "/".join(x for x in name.replace("\\", "/").split("/") if x not in ("", "."))


def check_links(members):
    """Archive-wide link rules over [(member, rel)] (each already passed member_rel): no member of any kind
    below a symlink member; a symlink's target, resolved against the archive's own symlinks, stays inside;
    a hard link names a regular-file member that comes earlier (exact normalised name); no name twice
    when one of them is a link."""
    syms = {rel: m.linkname for m, rel in members if m.issym()}
    seen, files = {}, set()
    for m, rel in members:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in syms:
                raise PackageRefused(f"package refused: entry {m.name!r} lies below the symbolic link "
                                     f"{'/'.join(parts[:i])!r} of the package; nothing changed")
        if rel in seen and (m.issym() or m.islnk() or seen[rel]):
            raise PackageRefused(f"package refused: entry {m.name!r} appears twice, once as a link; nothing changed")
        seen[rel] = m.issym() or m.islnk()
        if m.islnk() and _norm(m.linkname) not in files:
            raise PackageRefused(f"package refused: hard link {m.name!r} -> {m.linkname!r} does not name a regular "
                                 f"file earlier in the package; nothing changed")
        if m.issym():
            _resolve_sym(rel, syms, m)
        if m.isfile():
            files.add(rel)


def _resolve_sym(rel, syms, m):
    """Follow the symlink member ``rel`` through the archive's own symlinks; refuse when it leaves the root."""
    todo, path, hops = m.linkname.split("/"), rel.split("/")[:-1], 0
    while todo:
        x = todo.pop(0)
        if x in ("", "."):
            continue
        if x == "..":
            if not path:
                raise PackageRefused(f"package refused: link {m.name!r} -> {m.linkname!r} leads outside the root "
                                     f"(through the package's own links); nothing changed")
            path.pop()
            continue
        path.append(x)
        target = syms.get("/".join(path))
        if target is not None:
            hops += 1
            if hops > 40 or target.startswith("/"):
                raise PackageRefused(f"package refused: link {m.name!r} -> {m.linkname!r} loops or leads outside "
                                     f"the root; nothing changed")
            path.pop()
            todo = target.split("/") + todo


def package_damaged(package, e):
    return PackageRefused(f"package {package} is truncated or damaged ({type(e).__name__}: {e}): re-upload it; "
                          f"nothing changed")


READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def safe_extract(tf, members, dest):
    """Extract pre-checked members under dest (a private, root-only staging dir) ourselves, through
    no-follow dir fds: no owners, no setuid/setgid/sticky bits, hard links copied from the regular file
    they name (never through a link)."""
    check_links(members)
    for m, rel in members:
        parts = rel.split("/")
        dfd = safe_open_dir(dest, "/".join(parts[:-1]), create=True, mode=0o700)
        name = parts[-1]
        try:
            if m.isdir():
                try:
                    os.mkdir(name, 0o700, dir_fd=dfd)
                except FileExistsError:
                    pass
                fd = safe_open_dir(dest, rel)
                os.fchmod(fd, (m.mode & 0o755) | 0o700)
                os.close(fd)
                continue
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
            if m.issym():
                os.symlink(m.linkname, name, dir_fd=dfd)
                continue
            if m.islnk():
                src_parts = _norm(m.linkname).split("/")
                sfd = safe_open_dir(dest, "/".join(src_parts[:-1]))
                try:
                    fin = os.open(src_parts[-1], os.O_RDONLY | _NOFOLLOW, dir_fd=sfd)
                finally:
                    os.close(sfd)
                src, mode = os.fdopen(fin, "rb"), stat.S_IMODE(os.fstat(fin).st_mode)
            else:
                src, mode = tf.extractfile(m), m.mode
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=dfd)
            with src, os.fdopen(out, "wb") as fo:
                try:
                    shutil.copyfileobj(src, fo)
                except READ_ERRORS as e:
                    raise package_damaged(getattr(tf, "name", "?"), e) from None
                os.fchmod(fo.fileno(), (mode & 0o755) | 0o600)
        finally:
            os.close(dfd)


def rmtree(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


# ==================================================================================================
# fingerprint.py
# The OS fingerprint a release depends on (distro and version, architecture, glibc, OpenSSL, OTP when ERTS
# is not bundled), gathered on the build host and on every target, and the comparison between them that
# refuses a release built for another OS.
# ==================================================================================================

FIELDS = ("distro", "distro_version", "arch", "glibc", "openssl", "otp")


def _os_release():
    out = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    k, sep, v = line.strip().partition("=")
                    if sep:
                        out[k] = v.strip().strip('"')
            break
    return out


def _openssl():
    """libcrypto's version (what crypto NIFs link against), from the openssl CLI or the library name."""
    try:
        out = subprocess.run(["openssl", "version"], capture_output=True, text=True, timeout=10, check=False).stdout
        m = re.match(r"OpenSSL (\S+)", out)
        if m:
            return m.group(1)
    except (OSError, subprocess.SubprocessError):
        pass
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if os.path.isdir(d):
            libs = sorted(f for f in os.listdir(d) if f.startswith("libcrypto.so."))
            if libs:
                return libs[-1][len("libcrypto.so."):]
    return None


def _otp():
    """The installed OTP release, or None (only matters when releases do not bundle ERTS)."""
    for path in ("/usr/lib/erlang/releases", "/usr/local/lib/erlang/releases"):
        if os.path.isdir(path):
            rels = sorted(d for d in os.listdir(path) if d.isdigit())
            if rels:
                return rels[-1]
    return None


def gather_fingerprint():
    """This host's fingerprint: what a release built here depends on."""
    osr = _os_release()
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    return {
        "distro": osr.get("ID"),
        "distro_version": osr.get("VERSION_ID"),
        "arch": platform.machine(),
        "glibc": libc.split(" ")[-1] if libc else None,
        "openssl": _openssl(),
        "otp": _otp(),
    }


def compare(build, targets, include_erts=True):
    """Differences between the build host's fingerprint and each target's.

    Returns a list of ``(host, field, build_value, target_value)``; ``otp`` counts only when the
    release does not bundle ERTS.
    """
    fields = [f for f in FIELDS if f != "otp" or not include_erts]
    out = []
    for host in sorted(targets):
        fp = targets[host] or {}
        for f in fields:
            if build.get(f) != fp.get(f):
                out.append((host, f, build.get(f), fp.get(f)))
    return out


def describe_mismatch(build_host, diffs):
    lines = ["%s differs from build host %s: %s (build %s, target %s)" % (h, build_host, f, b, t)
             for h, f, b, t in diffs]
    return "; ".join(lines)


def targets_mismatch(build_host, build_fp, targets, include_erts=True):
    """The error (or warning) text when targets differ from the build fingerprint, else None."""
    diffs = compare(build_fp, targets, include_erts=include_erts)
    return ("OS mismatch: " + describe_mismatch(build_host, diffs)) if diffs else None


MISMATCH_HINT = (". Build on a host whose OS matches the targets (or set hotswap_allow_os_mismatch: true "
                 "to only warn).")


def package_mismatch(manifest, host_fp):
    """Why a published release must not be installed on a host with fingerprint ``host_fp`` (None if it may).

    The manifest records the build host's fingerprint; ``otp`` matters only when ERTS is not bundled."""
    built = manifest.get("os")
    if not isinstance(built, dict):
        return None
    include_erts = (manifest.get("runtime") or {}).get("include_erts", True)
    diffs = compare(built, {"this host": host_fp}, include_erts=include_erts)
    if not diffs:
        return None
    return ("%s %s was built for another OS: %s. Build it on a host that matches the targets (or set "
            "hotswap_allow_os_mismatch: true to accept the risk)"
            % (manifest.get("app"), manifest.get("version"),
               ", ".join("%s %s (this host %s)" % (f, b, t) for _h, f, b, t in diffs)))


# ==================================================================================================
# layout.py
# Where the agent keeps its state and who may write there: the agent's directory beside the release
# root (PARENT/.hotswap/NAME, root-only), the check that nobody but root can write above it, private
# directories, and the move of the state of agents before 1.2.0 out of ROOT/.hotswap (the node user's tree).
# ==================================================================================================

def check_parents(root, app):
    """Refuse a root whose parent directories someone other than root could write: the agent's directory
    (PARENT/.hotswap/NAME) and ROOT itself must be where only root can rename them."""
    me = os.geteuid()
    d = os.path.realpath(os.path.dirname(root))
    while True:
        try:
            st = os.lstat(d)
        except OSError:
            st = None  # made by the first install, as root
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise BadInput(f"{d} is not a directory: hotswap_root {root} needs a directory above it")
            open_to_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
            if st.st_uid not in (0, me) or open_to_others:
                raise BadInput(f"{d} can be written by users other than root (owner uid {st.st_uid}, mode "
                               f"{stat.S_IMODE(st.st_mode):04o}): the agent keeps its state beside hotswap_root "
                               f"{root} and runs as root, so every directory above it must belong to root and be "
                               f"writable only by root; put hotswap_root in such a directory (for example "
                               f"/opt/{app}). Nothing was changed")
        if d == "/":
            return
        d = os.path.dirname(d)


def mkdir_private(d, mode):
    """A directory of the agent's own user with exactly ``mode`` (made when missing)."""
    try:
        os.mkdir(d, mode)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OpFailed(f"{d} is not a directory of the agent's user (uid {st.st_uid}): remove it and re-run")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(d, mode)


def _legacy_fd(legacy):
    """An fd on ROOT/.hotswap when it is a real directory of the agent's user that only it can write (what
    agents before 1.2.0 made), else None.  Opened without following links: the node's user can rename
    things in ROOT."""
    try:
        fd = os.open(legacy, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    st = os.fstat(fd)
    # 0711 is the new layout's PARENT/.hotswap (ROOT=PARENT holds other roots' agent directories): never it
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022 or stat.S_IMODE(st.st_mode) == 0o711:
        os.close(fd)
        return None
    try:  # an old agent's directory holds its files directly
        if not any(stat.S_ISREG(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode)
                   for n in os.listdir(fd) if n in ("agent.py", "journal.jsonl", "env", "lock")):
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd


def legacy_file(legacy, parts):
    """ROOT/.hotswap/PARTS when it is a regular file of the agent's user in such a directory, else None."""
    fd = _legacy_fd(legacy)
    if fd is None:
        return None
    try:
        st = os.stat(os.path.join(*parts), dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            return os.path.join(legacy, *parts)
    except OSError:
        pass
    finally:
        os.close(fd)
    return None


_NOT_STATE = ("agent.py", "node.erl", "node.exs", "__pycache__", "lock", "VERSION")


def _copy_private(src_fd, dst):
    """Copy the agent's own regular files and directories under src_fd into dst (through fds, never a link;
    a file with other hard links is left: it may not be the agent's)."""
    for name in os.listdir(src_fd):
        if name in _NOT_STATE or name.startswith(("staging", ".upload-", ".")):
            continue
        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if st.st_uid != os.geteuid():
            continue
        target = os.path.join(dst, name)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
            try:
                mkdir_private(target, 0o700)
                _copy_private(sub, target)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            with os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=src_fd), "rb") as fin:
                data = fin.read()
            if name == "journal.jsonl" and os.path.exists(target):
                with open(target, "rb") as fh:
                    data += fh.read()  # the old lines first
            elif os.path.lexists(target):
                continue
            tmp = target + ".migrating"
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as fout:
                fout.write(data)
                os.fchmod(fout.fileno(), 0o400 if name == "cookie" else 0o600)
            os.replace(tmp, target)


def migrate_legacy(legacy, hs):
    """Move the state an agent before 1.2.0 kept in ROOT/.hotswap into hs (the node keeps running), then
    remove the old directory.  Returns True when there was one."""
    fd = _legacy_fd(legacy)
    if fd is None:
        return False
    try:
        _copy_private(fd, hs)
    finally:
        os.close(fd)
    shutil.rmtree(legacy, ignore_errors=True)  # fd-based on Linux: never follows a link
    return True


# ==================================================================================================
# relx.py
# relx releases (rebar3): what the agent does differently for them than for mix releases.
#
# A relx release is told apart by its tree: releases/VSN/ has vm.args (or vm.args.src) and no env.sh, which
# every mix release has.  Its start script is `bin/APP foreground` (mix: `bin/APP start`), it names the
# version it boots (REL_VSN, so bin/ follows the permanent release: see bins.py), its node name and cookie
# are lines of vm.args, and `daemon` keeps its run_erl pipes in PIPE_DIR (default /tmp/erl_pipes/NAME).
# Everything here is read from the node user's tree: it decides only what runs as that user, and names
# are validated before they are used.
# ==================================================================================================

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}(@[A-Za-z0-9_.-]{1,255})?$")


def is_relx(root, vsn):
    """True when releases/VSN of ROOT is a relx release (vm.args and no env.sh)."""
    if not vsn:
        return False
    d = os.path.join(root, "releases", vsn)
    return (os.path.lexists(os.path.join(d, "vm.args")) or os.path.lexists(os.path.join(d, "vm.args.src"))) \
        and not os.path.lexists(os.path.join(d, "env.sh"))


def _expand(value, env):
    """${VAR} from the release's environment (the agent's env file, then the agent's own), as relx's
    RELX_REPLACE_OS_VARS does; None when a variable is unset."""
    missing = []

    def sub(m):
        name = m.group(1) or m.group(2)
        if name in env:
            return env[name]
        if name in os.environ:
            return os.environ[name]
        missing.append(name)
        return ""
    out = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)
    return None if missing else out


def vm_args(root, vsn, env):
    """{"flag": "-sname"|"-name", "name": ..., "cookie": ...} from releases/VSN/vm.args (vm.args.src),
    read without following a link; missing keys when absent or unusable."""
    out = {}
    for name in ("vm.args", "vm.args.src"):
        data = safe_read(root, f"releases/{vsn}/{name}", limit=1 << 20)
        if data is not None:
            break
    else:
        return out
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) != 2:
            continue
        value = _expand(parts[1], env)
        if value is None:
            continue
        if parts[0] in ("-sname", "-name") and NODE_NAME_RE.match(value):
            out.update(flag=parts[0], name=value)
        elif parts[0] == "-setcookie":
            out["cookie"] = value
    return out


def start_args(relx):
    """The start script's argument for a foreground start (systemd)."""
    return "foreground" if relx else "start"


def daemon_env(root, relx):
    """Variables for `bin/APP daemon`: relx's run_erl pipes and logs under ROOT/tmp (where mix keeps its
    own), not in /tmp shared by every release of the host."""
    if not relx:
        return {}
    return {"PIPE_DIR": os.path.join(root, "tmp", "erl_pipes") + "/", "RUNNER_LOG_DIR": os.path.join(root, "tmp", "log")}


# ==================================================================================================
# nodecall.py
# What travels to the node: Python values as Erlang literals, and the expression erl_call evaluates there
# (node.erl, kept parsed by the node, after the call's arguments).
# ==================================================================================================

NEED_SCRIPT = "hotswap:need-node-script"  # a node's answer when it does not hold this node.erl parsed


def erl_call_expr(head, key, script):
    """The expression erl_call evaluates in the node: ``head`` (``Hs = ARGS.``) followed by node.erl, which the
    node keeps parsed in a persistent term under ``key`` (its checksum). ``script`` None: send only the head; a
    node that does not hold that node.erl parsed yet answers NEED_SCRIPT.  The texts travel base64-encoded
    (plain ASCII in erl_call's input), and so does the JSON answer, as a charlist, whatever erl_call's term
    printer does; exprs/3 skips erl_eval's erl_lint pass over the whole script (most of the time of a short op)."""
    def b64(text):
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    parse = ("fun(HsB) -> {ok, HsT, _} = erl_scan:string(unicode:characters_to_list(base64:decode(HsB))), "
             "{ok, HsE} = erl_parse:parse_exprs(HsT), HsE end")
    load = ("need" if script is None else
            "begin HsE1 = HsParse(<<\"%s\">>), [persistent_term:erase(HsOK) || {{hotswap_node, _} = HsOK, _} "
            "<- persistent_term:get(), HsOK =/= HsK], persistent_term:put(HsK, HsE1), HsE1 end" % b64(script))
    return ("HsParse = %s, HsK = {hotswap_node, <<\"%s\">>}, "
            "HsN = case persistent_term:get(HsK, nil) of nil -> %s; HsE0 -> HsE0 end, "
            "case HsN of need -> \"%s\"; _ -> {value, HsR, _} = erl_eval:exprs(HsParse(<<\"%s\">>) ++ HsN, [], none), "
            "binary_to_list(base64:encode(HsR)) end.\n" % (parse, key, load, NEED_SCRIPT, b64(head)))


def erl_lit(v):
    """Python value -> Erlang literal: str as a UTF-8 binary (the text stays ASCII: every other character
    is escaped), None as the atom nil, bool, int, list, dict (keys as binaries)."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        out = ['<<"']
        for ch in v:
            o = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif 0x20 <= o < 0x7F:
                out.append(ch)
            else:
                out.append("\\x{%X}" % (0xFFFD if 0xD800 <= o <= 0xDFFF else o))
        out.append('"/utf8>>')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(erl_lit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "#{" + ", ".join(erl_lit(str(k)) + " => " + erl_lit(x) for k, x in v.items()) + "}"
    raise BadInput(f"cannot pass {type(v).__name__} to the node")


# ==================================================================================================
# host.py
# One release root on one host (`Host`): its paths and records (RELEASES, start_erl.data, releases/),
# the run user, and the node transport: erl_call running node.erl (an erl_eval expression sequence) on
# the live node, with values passed as Erlang literals.
# ==================================================================================================

def _is_beam(args):
    """An Erlang VM's command line: argv[0] is beam.smp, or the program name erlexec gave it (relx sets it
    to its start script) followed by erlexec's own -root/-bindir/-progname arguments."""
    return bool(args) and (os.path.basename(args[0]).startswith("beam")
                           or ("-progname" in args and "-bindir" in args and "-root" in args))


def same_namespaces(pid):
    """True when process ``pid`` shares this process's network and mount namespaces (where they can be
    read): two hosts on one kernel (containers, test namespaces) may both have a node under the same root."""
    for ns in ("net", "mnt"):
        try:
            if os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"):
                return False
        except OSError:
            continue
    return True


class Host:
    """One release root on this host: its paths, its records and files (written owned by the run user),
    the run user, and the node -- up or not, its OS pid, and calls into it (``rpc``)."""
    def __init__(self, root, app, user=None):
        self.root = os.path.abspath(root)
        self.app = app
        self.user = user
        self.hs = state_dir(self.root)  # root-only, beside ROOT: never in the node user's tree
        self.legacy_hs = legacy_state_dir(self.root)
        self.rel_dir = os.path.join(self.root, "releases")
        self.rpc_calls = 0
        self.rpc_ms = 0.0
        self._pw = None
        self.service_manager = "daemon"
        self.repaired = []  # repairs made on the way (reported as "repaired")
        if user:
            try:
                self._pw = pwd.getpwnam(user)
            except KeyError:
                raise BadInput(f"no such user {user!r}")

    # ---------------------------------------------------------------- files
    def p(self, *parts):
        return os.path.join(self.root, *parts)

    def check_parents(self):
        check_parents(self.root, self.app)

    def ensure_hs(self):
        """The agent's directory (PARENT/.hotswap/NAME, 0711), its packages/ and unpacked/ (0700); moves
        the state of an agent before 1.2.0 (ROOT/.hotswap) into it."""
        check_parents(self.root, self.app)
        for d, mode in ((os.path.dirname(self.hs), 0o711), (self.hs, 0o711), (os.path.join(self.hs, "packages"), 0o700),
                        (os.path.join(self.hs, "unpacked"), 0o700)):
            mkdir_private(d, mode)
        if migrate_legacy(self.legacy_hs, self.hs):
            self.repaired.append(f"moved the agent's state from {self.legacy_hs} to {self.hs}")

    def state_file(self, *parts):
        """A file of the agent's state; for a host set up by an agent before 1.2.0 and not yet written
        by this one, its copy in ROOT/.hotswap while that is still root's (reads only)."""
        f = os.path.join(self.hs, *parts)
        if os.path.lexists(f) or os.path.isdir(os.path.join(self.hs, "unpacked")):
            return f
        return legacy_file(self.legacy_hs, parts) or f

    def run_pw(self):
        """The node's user (--user, else the owner of ROOT): everything run from the release tree or
        against the node runs as this user, never as root."""
        if self._pw is None:
            try:
                uid = os.lstat(self.root).st_uid
            except OSError:
                raise BadInput(f"release root {self.root} does not exist yet: give the node's user (--user, "
                               f"hotswap_user), who will own it")
            try:
                self._pw = pwd.getpwuid(uid)
            except KeyError:
                raise BadInput(f"{self.root} belongs to uid {uid}, which has no user: give hotswap_user")
        if self._pw.pw_uid == 0 and os.geteuid() == 0:
            raise BadInput(f"{self.root} belongs to root: the node must run as its own user (hotswap_user), "
                           f"and the agent runs nothing from the release tree as root")
        return self._pw

    def env_file(self):
        f = self.state_file("env")
        if not os.path.exists(f):
            return {}
        try:
            with open(f, encoding="utf-8") as fh:
                return parse_env(fh.read())
        except (OSError, ValueError) as e:
            raise OpFailed(f"cannot read {f}: {e}")

    def env_pending(self):
        """Names of the variables in .hotswap/env whose value the running node did not start with (read
        from its /proc/PID/environ): they take effect at its next restart.  [] when the node is down
        or its environment cannot be read.  Values are never returned."""
        want = self.env_file()
        if not want:
            return []
        pid, _boot = self.os_pid()
        if not pid:
            return []
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                raw = fh.read()
        except OSError:
            return []
        have = {}
        for item in raw.split(b"\0"):
            k, sep, v = item.partition(b"=")
            if sep:
                have[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        return sorted(k for k, v in want.items() if have.get(k) != v)

    @property
    def relx(self):
        """True when the release that boots is a relx (rebar3) release, not a mix one."""
        return is_relx(self.root, (self.start_erl() or {}).get("version"))

    def vm_args(self):
        return vm_args(self.root, (self.start_erl() or {}).get("version"), self.env_file()) if self.relx else {}

    def node_name(self):
        if self.relx:
            return self.vm_args().get("name") or self.app
        return self.env_file().get("RELEASE_NODE") or self.app

    def releases(self):
        """RELEASES (read without following a link: the node's user may plant one), or None when missing."""
        f = os.path.join(self.rel_dir, "RELEASES")
        if not os.path.lexists(f):
            return None
        data = safe_read(self.root, "releases/RELEASES", limit=1 << 22)
        try:
            if data is None:
                raise ValueError("not a regular file of the release root")
            return parse_releases(data.decode("utf-8"))
        except (TermError, ValueError) as e:
            raise OpFailed(f"cannot parse {f}: {e}")

    def owner(self):
        """(uid, gid) the files root writes below ROOT get: --user's, else ROOT's own (lstat: never through a
        link; a root-owned ROOT keeps root's files, but nothing in it is ever run as root: ``run_pw``)."""
        if self._pw is not None:
            return self._pw.pw_uid, self._pw.pw_gid
        try:
            st = os.lstat(self.root)
        except OSError:
            pw = self.run_pw()
            return pw.pw_uid, pw.pw_gid
        return st.st_uid, st.st_gid

    def tree_owner(self):
        return self.owner()

    def _read_record(self, vsn, suffix):
        """The package checksum recorded for ``vsn`` in ``.hotswap/unpacked/VSN<suffix>``, or None."""
        try:
            with open(self.state_file("unpacked", vsn + suffix)) as fh:
                return fh.read().strip()
        except OSError:
            return None

    def _write_record(self, vsn, suffix, sha):
        """Record (or with None, forget) the package checksum for ``vsn``."""
        self.ensure_hs()
        f = os.path.join(self.hs, "unpacked", vsn + suffix)
        if sha is None:
            if os.path.exists(f):
                os.unlink(f)
        else:
            with open(f, "w") as fh:
                fh.write(sha + "\n")

    def full_sha(self, vsn):
        return self._read_record(vsn, ".full.sha256")

    def set_full_sha(self, vsn, sha):
        self._write_record(vsn, ".full.sha256", sha)

    def write_owned(self, path, text):
        """Write a file below ROOT for the node's user: through no-follow directory fds, a fresh temp file
        renamed over the name (a link planted there is replaced, never written through)."""
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if rel.startswith("..") or os.path.isabs(rel):
            raise OpFailed(f"{path} is outside {self.root}")
        safe_write(self.root, rel, text, owner=self.tree_owner(), mode=0o644)

    def write_releases(self, rels):
        self.write_owned(os.path.join(self.rel_dir, "RELEASES"), format_releases(rels))

    def start_erl(self):
        data = safe_read(self.root, "releases/start_erl.data", limit=4096)
        parts = data.decode("utf-8", "replace").split() if data else []
        return {"erts": parts[0], "version": parts[1]} if len(parts) >= 2 else None

    def sha_record(self, vsn):
        return self._read_record(vsn, ".sha256")

    def set_sha_record(self, vsn, sha):
        self._write_record(vsn, ".sha256", sha)

    def installed_record(self):
        try:
            with open(self.state_file("installed.json")) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def set_installed_record(self, rec):
        f = os.path.join(self.hs, "installed.json")
        if rec is None:
            if os.path.exists(f):
                os.unlink(f)
        else:
            self.ensure_hs()
            with open(f, "w") as fh:
                json.dump(rec, fh)

    # ---------------------------------------------------------------- processes
    def run_kwargs(self, as_user=True):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASE_")}
        env.update(self.env_file())
        env["RELEASE_ROOT"] = self.root
        kw = {"env": env, "cwd": self.root}
        if as_user and os.geteuid() == 0:
            pw = self.run_pw()
            kw.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
        return kw

    def bin(self):
        b = self.p("bin", self.app)
        if not os.path.exists(b):
            raise OpFailed(f"{b} is missing: is {self.root} a release root for {self.app}?")
        return b

    def node_up(self):
        names = epmd_names()
        if not names:
            return False
        return self.node_name().split("@")[0] in names

    def _beam_pids(self):
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    args = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
            except OSError:
                continue
            if _is_beam(args) and self._beam_matches(args, int(d)):
                pids.append((int(d), args))
        return pids

    def _beam_matches(self, args, pid=None):
        if not any(a == self.root or a.startswith(self.root + "/") for a in args):
            return False
        if pid is not None and not same_namespaces(pid):
            return False  # the same root path in another container/namespace is another host's node
        node = self.node_name().split("@")[0]
        for i, a in enumerate(args[:-1]):
            if a in ("-sname", "-name") and args[i + 1].split("@")[0] == node:
                return True
        return False

    def os_pid(self):
        """(pid, boot_version) of the node's beam process, or (None, None)."""
        pf = self.state_file("pid")
        cands = []
        try:
            with open(pf) as fh:
                pid = int(fh.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
            if _is_beam(args) and self._beam_matches(args, pid):
                cands = [(pid, args)]
        except (OSError, ValueError):
            pass
        if not cands:
            cands = self._beam_pids()
        if not cands:
            return None, None
        pid, args = cands[0]
        boot = None
        for i, a in enumerate(args[:-1]):
            if a == "-boot":
                m = re.search(r"/releases/([^/]+)/[^/]+$", args[i + 1])
                boot = m.group(1) if m and valid_version(m.group(1)) else None
        return pid, boot

    def node_erl(self):
        """The node-side script (an erl_eval expression sequence): node.erl beside the agent (a node.exs left
        there by an agent before 1.3.0 is never read), or hotswap_node.erl in the repository."""
        here = os.path.dirname(os.path.abspath(__file__))
        for n in ("node.erl", "hotswap_node.erl"):
            f = os.path.join(here, n)
            if os.path.exists(f):
                with open(f, encoding="utf-8") as fh:
                    return fh.read()
        raise OpFailed(f"node.erl is missing next to {__file__}: reinstall the agent (role beam.hotswap.agent)")

    def _erl_call_target(self):
        """(erl_call, name flag, node, cookie) to reach the running node directly, or None.

        erl_call ships in every ERTS (the release's erts-*/bin, or the system's); it joins the node's
        distribution in a few ms where `bin/APP rpc` boots a whole VM (~0.25 s of CPU).  The node name
        and cookie come from the live VM's own command line (what it really uses), then from
        .hotswap/env and releases/COOKIE like bin/APP."""
        # the ERTS the release boots (start_erl.data, validated), else the host's: never whichever erts-*
        # directory sorts highest (the node's user could plant erts-99.0/bin/erl_call to steer the answers)
        erts = (self.start_erl() or {}).get("erts")
        erl_call = self.p(f"erts-{erts}", "bin", "erl_call") if erts and valid_version(erts) else None
        if not erl_call or not os.path.isfile(erl_call):
            erl_call = shutil.which("erl_call")
        env = self.env_file()
        if not erl_call or env.get("RELEASE_DISTRIBUTION", "sname") == "none":
            return None
        flag, node, cookie = ("-name" if env.get("RELEASE_DISTRIBUTION") == "name" else "-sname"), \
            self.node_name(), env.get("RELEASE_COOKIE")
        if self.relx:
            va = self.vm_args()
            flag, cookie = va.get("flag", "-sname"), va.get("cookie")
        pid, _boot = self.os_pid()
        if pid:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    argv = [x.decode("utf-8", "replace") for x in fh.read().split(b"\0")]
                for i, x in enumerate(argv[:-1]):
                    if x in ("-sname", "-name"):
                        flag, node = x, argv[i + 1]
                    elif x == "-setcookie":
                        cookie = argv[i + 1]
            except OSError:
                pass
        if not cookie:
            try:
                # never through a link: the node's user could point it at a file only root may read
                data = safe_read(self.root, "releases/COOKIE", limit=65536)
                cookie = data.decode("utf-8").strip() if data else None
            except (OSError, UnicodeDecodeError):
                return None
        return (erl_call, flag, node, cookie) if cookie else None

    def _cookie_for(self, cookie, uid, gid):
        """HS/.erlang.cookie holding ``cookie``, owned by the node's user, 0400 (erl_call's only way to get
        a cookie without a command line): rewritten only when it differs."""
        if not os.path.isdir(self.hs):  # a read of a host set up before 1.2.0: the directory only
            check_parents(self.root, self.app)
            mkdir_private(os.path.dirname(self.hs), 0o711)
            mkdir_private(self.hs, 0o711)
        f = os.path.join(self.hs, ".erlang.cookie")
        want = cookie.encode("utf-8")
        try:
            st = os.lstat(f)
            if stat.S_ISREG(st.st_mode) and (uid is None or st.st_uid == uid) and stat.S_IMODE(st.st_mode) == 0o400:
                fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fh:
                    if fh.read() == want:
                        return
        except OSError:
            pass
        tmp = f"{f}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(want)
            if uid is not None:
                os.fchown(fh.fileno(), uid, gid)
        os.replace(tmp, f)

    def _run_erl_call(self, target, head, key, script, timeout):
        """Evaluate ``head`` (an expression sequence, here ``Hs = ARGS.``) followed by node.erl in the node through
        erl_call (erl_eval: nothing compiled, no Elixir needed).  The node keeps node.erl parsed in a persistent
        term under its checksum ``key``: parsing it costs the node more CPU than most operations it runs, so it
        is sent and parsed only when the node does not hold it yet (``script`` None: the call answers
        NEED_SCRIPT instead, and the caller sends it).
        The cookie goes in a private ~/.erlang.cookie, never on a command line."""
        erl_call, flag, node, cookie = target
        kw = {"env": {"HOME": self.hs, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}, "cwd": "/"}
        if os.geteuid() == 0:
            # erl_call comes from the release tree: it runs as the node's user, who reads the cookie from
            # HOME/.erlang.cookie (HOME = the agent's 0711 directory, the file the user's own, 0400)
            pw = self.run_pw()
            kw.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
            self._cookie_for(cookie, pw.pw_uid, pw.pw_gid)
        else:
            self._cookie_for(cookie, None, None)

        expr = erl_call_expr(head, key, script)
        # a client node name of our own: two erl_calls on one host must not collide
        p = subprocess.run([erl_call, flag, node, "-h", f"hotswap_{os.getpid()}_{os.urandom(3).hex()}",
                            "-e", "-timeout", str(int(timeout))],
                           input=expr, capture_output=True, text=True, timeout=timeout + 10, check=False, **kw)
        m = re.fullmatch(r'\{ok, *(?:"([A-Za-z0-9+/=]*)"|\[([0-9,\s]*)\])\}\s*', p.stdout)
        if m and p.returncode == 0:
            try:
                b = m.group(1) if m.group(1) is not None else bytes(int(x) for x in m.group(2).split(",") if x.strip())
                p.stdout = "HOTSWAP_RESULT " + base64.b64decode(b).decode("utf-8") + "\n"
            except ValueError:
                pass
        return p

    def rpc(self, op, timeout=120, **args):
        """Evaluate node.erl with Hs = args inside the running node; returns the node's result map.

        Transport: erl_call, run as the node's user with the cookie in a file (never `bin/APP rpc`, which
        puts the cookie on a command line every user of the host can read)."""
        args = dict(args, op=op, app=self.app)
        head = "Hs = " + erl_lit(args) + "."
        script = self.node_erl()
        key = hashlib.sha256(script.encode("utf-8")).hexdigest()[:32]
        t0 = now_ms()
        self.rpc_calls += 1
        try:
            target = self._erl_call_target()
            if target is None:
                raise OpFailed(f"cannot reach node {self.node_name()} ({op}): no erl_call in {self.root}/erts-*/bin "
                               f"or on PATH, no cookie, or RELEASE_DISTRIBUTION=none", rpc_transport=True)
            p = self._run_erl_call(target, head, key, None, timeout)
            if p.returncode == 0 and f'"{NEED_SCRIPT}"' in p.stdout:  # the node does not hold this node.erl yet
                p = self._run_erl_call(target, head, key, script, timeout)
            if p.returncode != 0 and "failed to connect" in p.stderr:
                raise OpFailed(f"erl_call could not connect to node {target[2]} ({op}): {p.stderr.strip()[-300:]}",
                               rpc_transport=True)
        except subprocess.TimeoutExpired:
            raise OpFailed(f"erl_call ({op}) timed out after {timeout}s", rpc_transport=True)
        finally:
            self.rpc_ms += now_ms() - t0
        for line in reversed(p.stdout.splitlines()):
            if line.startswith("HOTSWAP_RESULT "):
                try:
                    return json.loads(line[len("HOTSWAP_RESULT "):])
                except ValueError:
                    break
        # what the call printed, without the node script it may echo back (one long base64 line)
        # erl_call echoes the expression it sent (the call's code, not news to anyone): only its verdict is kept
        said = [re.sub(r"[A-Za-z0-9+/=]{40,}", "...", re.sub(r"(evaluating input failed):.*", r"\1", x))
                for x in (p.stdout + "\n" + p.stderr).splitlines()
                if x.strip() and not re.fullmatch(r"[A-Za-z0-9+/=]{40,}", x.strip())]
        tail = "\n".join(said).strip()[-600:] or "no output"
        raise OpFailed(f"erl_call ({op}) gave no result (exit {p.returncode}): {tail}",
                       rpc_transport=True)


# ==================================================================================================
# state.py
# The root's state: the lock, the JSON-lines journal, repairs of RELEASES and the boot files,
# `host_state` (what runs, what is permanent, what is unpacked) that every plan depends on, and whether a
# root is installed (the agent's own records) or may take a first install (new, empty or agent-made).
# ==================================================================================================

class Lock:
    """The root's exclusive lock (``.hotswap/lock``, flock): a second agent fails at once, naming the holder."""
    def __init__(self, host, cmd):
        self.host = host
        self.cmd = cmd
        self.fh = None

    def __enter__(self):
        if getattr(self.host, "lock_depth", 0):  # already held by this agent (cli.run takes it first)
            self.host.lock_depth += 1
            return self
        self.host.ensure_hs()
        path = os.path.join(self.host.hs, "lock")
        fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
        os.chmod(path, 0o600)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                h = json.loads(holder)
                who = f"pid {h.get('pid')} running {h.get('cmd')!r} since {h.get('since')}"
            except ValueError:
                who = "an unknown process"
            raise OpFailed(f"another agent holds {path}: {who}; wait for it to finish (do not delete the lock)",
                           lock_holder=holder)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "cmd": self.cmd,
                             "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}))
        fh.flush()
        self.fh = fh
        self.host.lock_depth = 1
        return self

    def __exit__(self, *exc):
        if self.fh is None and getattr(self.host, "lock_depth", 0):
            self.host.lock_depth -= 1
            return False
        self.host.lock_depth = 0
        if self.fh:
            try:
                self.fh.seek(0)
                self.fh.truncate()
                fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            finally:
                self.fh.close()
        return False


JOURNAL_KEYS = ("op", "version", "from", "to", "result", "changed", "failed", "reverted", "mode",
                "host_version", "total_ms", "install_ms", "downtime_ms", "start_ms", "rpc_calls", "stage",
                "removed", "msg")


def journal(host, entry):
    """Append one operation's outcome to ``.hotswap/journal.jsonl`` (known keys only; never the settings)."""
    if not os.path.isdir(host.hs):
        return
    rec = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")}
    rec.update({k: entry[k] for k in JOURNAL_KEYS if k in entry and entry[k] is not None})
    try:
        path = os.path.join(host.hs, "journal.jsonl")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
        os.chmod(path, 0o600)
    except OSError:
        pass


def drop_stale_staging(h):
    """Staging dirs (``staging-PID``) that an agent killed mid-operation left in the agent's directory: removed
    when their agent is gone (its pid dead, or the dir older than this agent's process).  Call it holding the
    lock, before a write operation."""
    try:
        names = os.listdir(h.hs)
    except OSError:
        return []
    try:
        me = os.stat(f"/proc/{os.getpid()}").st_mtime
    except OSError:
        me = None
    dropped = []
    for n in names:
        pid = n.rpartition("-")[2]
        if not n.startswith("staging") or pid == str(os.getpid()):
            continue
        try:
            alive = pid.isdigit() and (os.kill(int(pid), 0) or True)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        try:
            old = me is not None and os.lstat(os.path.join(h.hs, n)).st_mtime < me
        except OSError:
            continue
        if not alive or old:
            rmtree(os.path.join(h.hs, n))
            dropped.append(n)
    return dropped


def start_erl_checked(h):
    """releases/start_erl.data as {"erts", "version"}, or None when missing or when either is not a valid
    version (the file belongs to the node's user: what it names becomes a path)."""
    se = h.start_erl()
    if se and valid_version(se.get("erts")) and valid_version(se.get("version")):
        return se
    return None


def releases_from_disk(h):
    """Every complete release on disk, newest first: releases/V/APP.rel naming APP V, its boot
    script, its lib dirs and its ERTS present.  Returns parsed .rel dicts (names validated, read no-follow)."""
    out = []
    try:
        names = os.listdir(h.rel_dir)
    except OSError:
        return out
    for v in names:
        d = h.p("releases", v)
        if not valid_version(v):
            continue
        raw = safe_read(h.root, f"releases/{v}/{h.app}.rel", limit=1 << 20)
        if raw is None:
            continue
        try:
            rel = parse_rel(raw.decode("utf-8"))
        except (TermError, ValueError, UnicodeDecodeError):
            continue
        if rel["version"] != v or rel["name"] != h.app or not os.path.isfile(os.path.join(d, "start.boot")):
            continue
        if any(not os.path.isdir(h.p("lib", ln)) for ln in _rel_libs(rel)) or not os.path.isdir(h.p(f"erts-{rel['erts']}")):
            continue
        out.append(rel)
    return sorted(out, key=lambda r: vsn_key(r["version"]), reverse=True)


def _set_aside(h, name):
    """Keep a copy of a damaged releases/NAME (read without following links) under the agent's directory for
    a human (root-only, 0600); returns its path."""
    h.ensure_hs()
    data = safe_read(h.root, f"releases/{name}", limit=16 << 20)
    if data is None:
        return None
    dst = f"{name}.damaged-{datetime.datetime.now().strftime('%Y%m%dT%H%M%S')}"
    return safe_write(h.hs, dst, data, mode=0o600)


def repair_releases(h, up):
    """releases/RELEASES exists but cannot be parsed: rebuild it.  Node up: from release_handler's
    in-memory list (what it would write itself); if that is unusable, remove the file so the node
    recreates it (create_RELEASES + release_handler restart, as for a missing file).  Node down:
    from the complete releases on disk (permanent: start_erl.data's if complete, else the newest).
    Returns the list of repairs made (empty when the file is fine or missing)."""
    f = os.path.join(h.rel_dir, "RELEASES")
    if not os.path.exists(f):
        return []
    try:
        h.releases()
        return []
    except OpFailed as e:
        err = e.msg
    aside = _set_aside(h, "RELEASES")
    if up:
        try:
            r = h.rpc("dump_releases", timeout=60)
        except OpFailed as e2:
            r = {"ok": False, "error": e2.msg}
        rels = []
        for x in r.get("releases") or []:
            try:  # the node's reply becomes paths: the same name rules as for RELEASES
                check_release_names(f"release_handler's entry {x.get('version')!r}", x.get("version"), x.get("erts"),
                                    [tuple(lib) for lib in x.get("libs") or []])
                ok = isinstance(x["name"], str) and bool(x["libs"]) and x["status"] in ("permanent", "current", "old", "unpacked")
            except (TermError, TypeError, KeyError, AttributeError, IndexError):
                ok = False
            if not ok:
                rels = []
                break
            rels.append({"name": x["name"], "version": x["version"], "erts": x["erts"],
                         "status": "unpacked" if x["status"] == "current" else x["status"],
                         "libs": [tuple(lib) for lib in x["libs"]]})
        if r.get("ok") and rels and sum(1 for x in rels if x["status"] == "permanent") == 1:
            h.write_releases(rels)
            return [f"releases/RELEASES was unreadable ({err}): rewritten from release_handler's list "
                    f"({', '.join(x['version'] + ' ' + x['status'] for x in rels)}); damaged copy: {aside}"]
        safe_rmtree(h.root, "releases/RELEASES")
        return [f"releases/RELEASES was unreadable ({err}) and release_handler's list is unusable: removed, the "
                f"node recreates it from its boot release; damaged copy: {aside}"]
    disk = releases_from_disk(h)
    if not disk:
        raise OpFailed(f"{f} is unreadable ({err}) and no complete release is on disk to rebuild it from")
    se = (start_erl_checked(h) or {}).get("version")
    perm = se if any(r["version"] == se for r in disk) else disk[0]["version"]
    h.write_releases([_releases_entry(h, r, "permanent" if r["version"] == perm else "old") for r in disk])
    return [f"releases/RELEASES was unreadable ({err}): rebuilt from the releases on disk "
            f"({', '.join(r['version'] for r in disk)}; {perm} permanent); damaged copy: {aside}"]


def repair_boot_files(h):
    """Node down, before a start: make RELEASES and start_erl.data name a release that can boot.
    start_erl.data naming a version whose releases/V is gone (or incomplete) is pointed at RELEASES'
    permanent entry, or else the newest complete release on disk.  Returns the repairs made."""
    repaired = repair_releases(h, up=False)
    rels = h.releases()
    disk = {r["version"]: r for r in releases_from_disk(h)}
    if rels is None:
        if not disk:
            return repaired
        se = (start_erl_checked(h) or {}).get("version")
        newest = sorted(disk, key=vsn_key)[-1]
        perm = se if se in disk else newest
        rels = [_releases_entry(h, disk[v], "permanent" if v == perm else "old")
                for v in sorted(disk, key=vsn_key, reverse=True)]
        h.write_releases(rels)
        repaired.append(f"releases/RELEASES was missing: rebuilt from the releases on disk ({perm} permanent)")
    perm = permanent_version(rels)
    se = start_erl_checked(h)
    sev = (se or {}).get("version")
    if sev in disk and (se or {}).get("erts") == disk[sev]["erts"]:
        return repaired
    listed = [r["version"] for r in rels]
    if perm in disk:
        target = perm
    else:
        cands = sorted((v for v in disk if v in listed), key=vsn_key) or sorted(disk, key=vsn_key)
        if not cands:
            raise OpFailed(f"start_erl.data names {sev}, which is not on disk, and no complete release is: "
                           f"nothing can boot (first-install again)")
        target = cands[-1]
    if target not in listed:
        rels.append(_releases_entry(h, disk[target], "old",
                                    all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"])))
        h.write_releases(rels)
    why = "is missing or invalid" if se is None else f"names {sev}, but releases/{sev} is missing or incomplete"
    _make_permanent_offline(h, target)
    repaired.append(f"start_erl.data {why}: now {disk[target]['erts']} {target}"
                    + (f" ({target} made permanent, was {perm})" if target != perm else ""))
    return repaired


def host_state(h):
    """What runs: RELEASES (or why it cannot be read), start_erl.data, node up, OS pid, boot, running,
    permanent, current -- the part of `status` a plan depends on, without its slower extras."""
    releases_error = None
    try:
        rels = h.releases()
    except OpFailed as e:  # report, do not crash: `hot`/`start` repair it
        rels, releases_error = None, e.msg
    se = h.start_erl()
    up = h.node_up()
    pid, boot = h.os_pid() if up else (None, None)
    perm = permanent_version(rels)
    running = current = None
    if up and releases_error:
        try:  # the file cannot tell: ask release_handler (one rpc, only in this case)
            info = h.rpc("info", timeout=30)
            running, perm = info.get("running"), info.get("permanent")
        except OpFailed:
            running = None
    if up:
        rec = h.installed_record()
        if running is None and rec and rec.get("version") != perm and rec.get("os_pid") == pid:
            try:  # an uncommitted install: RELEASES on disk never says 'current', ask the node
                info = h.rpc("info", timeout=30)
                running = info.get("running")
                perm = info.get("permanent") or perm
            except OpFailed:
                running = None
        if running is None:
            running = perm or boot or (se or {}).get("version")
        if running != perm:
            current = running
    return {"rels": rels, "releases_error": releases_error, "se": se, "up": up, "pid": pid, "boot": boot,
            "perm": perm, "running": running, "current": current}


def running_and_permanent(h, rels):
    """(running, permanent, node up, OS pid) of a root whose RELEASES was read as ``rels``: the running
    release is the one the agent last installed into this very OS process, else the permanent one (else
    the boot release).  ``host_state`` gives the fuller answer a plan needs (it may ask the node)."""
    perm = permanent_version(rels)
    if not h.node_up():
        return None, perm, False, None
    rec = h.installed_record()
    pid, boot = h.os_pid()
    running = rec["version"] if rec and rec.get("os_pid") == pid else (perm or boot)
    return running, perm, True, pid


def _make_permanent_offline(h, old):
    """With the node down, make OLD the permanent release in RELEASES and start_erl.data."""
    rels = h.releases()
    if rels is None:
        raise OpFailed("RELEASES is missing: cannot revert cold")
    entry = next((r for r in rels if r["version"] == old), None)
    if entry is None:
        raise OpFailed(f"{old} is not in RELEASES: nothing to revert to")
    for r in rels:
        if r["version"] == old:
            r["status"] = "permanent"
        elif r["status"] in ("permanent", "current"):
            r["status"] = "old"
    h.write_releases(rels)
    h.write_owned(os.path.join(h.rel_dir, "start_erl.data"), f"{entry['erts']} {old}\n")


def _rel_libs(rel):
    return [f"{a}-{v}" for a, v in rel["apps"]]


def _releases_entry(h, rel, status, relative=True):
    libs = [(a, v, f"lib/{a}-{v}" if relative else h.p("lib", f"{a}-{v}")) for a, v in rel["apps"]]
    return {"name": rel["name"], "version": rel["version"], "erts": rel["erts"], "libs": libs, "status": status}


def installed_by_agent(h):
    """The agent's own (root-owned) records say this root holds an installation: a package checksum recorded
    under unpacked/, or installed.json.  Unlike RELEASES or bin/APP, the node's user cannot delete these."""
    try:
        recs = os.listdir(os.path.join(h.hs, "unpacked"))
    except OSError:
        recs = []
    return bool(recs) or os.path.exists(os.path.join(h.hs, "installed.json"))


def check_first_install_root(h, owner, retry, create=False):
    """A first install goes only into a directory that does not exist (made here, 0750), an empty one, or
    one an interrupted first install of this agent made (``retry``); never a system directory or a user's
    home.  ``create``: make it when missing, and give the directory itself (only it) to the node's user."""
    norm, real = os.path.normpath(h.root), os.path.realpath(h.root)
    homes = {}
    for pw in pwd.getpwall():
        if pw.pw_dir and pw.pw_dir != "/":
            homes.setdefault(os.path.normpath(pw.pw_dir), pw)
    why = None
    for r in (norm, real):
        if is_system_dir(r):
            why = "is a system directory"
        elif r in homes and (homes[r].pw_uid != owner[0] or (os.path.isdir(r) and os.listdir(r))):
            why = f"is the home directory of user {homes[r].pw_name}"
    if why:
        raise OpFailed(f"hotswap_root {h.root} {why}: a first install only goes into a directory of its own "
                       f"(for example /opt/{h.app}); nothing changed", changed=False)
    try:
        st = os.lstat(h.root)
    except FileNotFoundError:
        if not create:
            return
        os.makedirs(os.path.dirname(h.root), mode=0o755, exist_ok=True)
        os.mkdir(h.root, 0o750)
        st = os.lstat(h.root)
    if not stat.S_ISDIR(st.st_mode):
        raise OpFailed(f"hotswap_root {h.root} is a symbolic link or not a directory: a first install needs a new "
                       f"or empty directory; nothing changed", changed=False)
    left = sorted(os.listdir(h.root))
    if left and not retry:
        raise OpFailed(f"hotswap_root {h.root} is not empty ({len(left)} entries: {', '.join(left[:5])}) and no "
                       f"earlier first install of this agent made it: a first install only goes into a new or "
                       f"empty directory; empty it or choose another hotswap_root; nothing changed", changed=False)
    if create:
        fd = safe_open_dir(h.root)  # O_NOFOLLOW: the directory itself, never what a link names
        try:
            if os.geteuid() == 0:
                os.fchown(fd, *owner)
            if not left:
                os.fchmod(fd, 0o750)
        finally:
            os.close(fd)


# ==================================================================================================
# reads.py
# Read-only commands: `status` and `facts` (state, OS fingerprint, agent checksums), the relup edges a
# release offers, the previous release, and the state key a plan is checked against.
# ==================================================================================================

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


# ==================================================================================================
# packages.py
# Packages: the node's settings (env and cookie, private files), storing an uploaded package, verifying
# and opening it, unpacking an upgrade package into the root (space check, undo), and `unpack`.
# ==================================================================================================

def _lstat_at(root, rel):
    """lstat of ROOT/rel through a no-follow opened parent, or None."""
    parts = rel.split("/")
    try:
        fd = safe_open_dir(root, "/".join(parts[:-1]))
    except OpFailed:
        return None
    try:
        return os.lstat(parts[-1], dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_private(root, rel, data, mode, owner=None, strip=False):
    """Write bytes `data` to ROOT/rel (no-follow temp file + rename, ``files.safe_write``) with `mode` and,
    when we are root, `owner` (uid, gid; None: root's); True when it changed.  A regular file with the same
    content (with `strip`: ignoring surrounding whitespace), mode and owner is left alone."""
    owner = tuple(owner) if owner is not None else (0, 0)
    st = _lstat_at(root, rel)
    if st is not None and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode \
            and (os.geteuid() != 0 or (st.st_uid, st.st_gid) == owner):
        old = safe_read(root, rel)
        if old is not None and (old.strip() == data.strip() if strip else old == data):
            return False
    safe_write(root, rel, data, owner=owner, mode=mode)
    return True


def copy_tree_nofollow(src_root, src_rel, dst_root, dst_rel, owner=None, only_missing=False, uid_only=None):
    """Copy the tree SRC_ROOT/src_rel to DST_ROOT/dst_rel through no-follow dir fds on both sides: symlinks
    are copied as links, regular files by content (O_NOFOLLOW), nothing else; no setuid/setgid bits; new
    entries chowned to ``owner`` (fchown/lchown on what was created).  ``only_missing``: entries already
    at the destination are kept.  ``uid_only``: source files not owned by that uid are skipped (a hard link
    the node's user planted to someone else's file is never copied).  Returns the paths created."""
    made = []
    sfd = safe_open_dir(src_root, src_rel)
    try:
        dfd = safe_open_dir(dst_root, dst_rel, create=True, mode=0o755, owner=owner)
    except BaseException:
        os.close(sfd)
        raise
    try:
        for name in sorted(os.listdir(sfd)):
            st = os.lstat(name, dir_fd=sfd)
            if only_missing and _lstat_at(dst_root, f"{dst_rel}/{name}") is not None and not stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                made += copy_tree_nofollow(src_root, f"{src_rel}/{name}", dst_root, f"{dst_rel}/{name}", owner,
                                           only_missing, uid_only)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                if owner is not None and os.geteuid() == 0:
                    os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
                made.append(f"{dst_rel}/{name}")
            elif stat.S_ISREG(st.st_mode):
                fin = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), dir_fd=sfd)
                with os.fdopen(fin, "rb") as fi:
                    fst = os.fstat(fin)  # what was opened, not what lstat saw (the tree may change meanwhile)
                    if not stat.S_ISREG(fst.st_mode) or (uid_only is not None and fst.st_uid != uid_only):
                        continue
                    safe_write(dst_root, f"{dst_rel}/{name}", fi.read(), owner=owner,
                               mode=stat.S_IMODE(fst.st_mode) & 0o755 | 0o600)
                made.append(f"{dst_rel}/{name}")
    finally:
        os.close(sfd)
        os.close(dfd)
    return made


def apply_settings(h, settings):
    """Write the node's environment (.hotswap/env, 0600) and cookie (.hotswap/cookie, 0400) when they
    differ; never echoes either.  Returns the names of the files that changed."""
    if not isinstance(settings, dict):
        raise BadInput("settings must be a JSON object")
    changed = []
    env, cookie = settings.get("env"), settings.get("cookie")
    if env:
        if not isinstance(env, dict):
            raise BadInput("settings env must be an object of NAME: value")
        for k, v in env.items():
            if not isinstance(k, str) or not ENV_KEY_RE.fullmatch(k):
                raise BadInput(f"hotswap_env {k!r}: a name is letters, digits and _ (not starting with a digit), "
                               f"nothing else around it; nothing changed")
            if isinstance(v, bool) or not isinstance(v, (str, int)) or any(c in str(v) for c in "\n\r\0"):
                raise BadInput(f"hotswap_env {k}: the value must be one line of text (no newline, carriage return "
                               f"or NUL; a number is fine), and is passed exactly as given; nothing changed")
        env = {k: str(v) for k, v in env.items()}
        h.ensure_hs()
        text = "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
        if _write_private(h.hs, "env", text.encode("utf-8"), 0o600):
            changed.append("env")
    if cookie:
        if not isinstance(cookie, str) or any(c in cookie for c in "\n\r\0"):
            raise BadInput("the cookie must be one line of text")
        h.ensure_hs()
        if _write_private(h.hs, "cookie", cookie.encode("utf-8"), 0o400):
            changed.append("cookie")
    return changed


def store_package(h, path, sha, name):
    """Verify an uploaded package and keep it as STATE/packages/SHA256-NAME (0600: a full tarball holds the
    release's default cookie); returns that path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}", name or ""):
        raise BadInput(f"--store-package {name!r} is not a plain file name")
    dest = os.path.join(h.hs, "packages", f"{sha}-{name}")
    if os.path.abspath(path) == dest:
        return dest
    if os.path.isfile(dest) and sha256_file(dest) == sha:
        os.unlink(path)
        return dest
    got = sha256_file(path) if os.path.isfile(path) else None
    if got != sha:
        raise OpFailed(f"package {path} refused: sha256 is {got}, expected {sha}; nothing changed", changed=False)
    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    try:
        os.chmod(path, 0o600)
        os.replace(path, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # uploaded to another filesystem (a temp dir): copy beside the destination, then rename
        tmp = dest + ".part"
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
        os.unlink(path)
    return dest


def move_in(src_root, src_rel, dst_root, dst_rel, owner=None):
    """Move the staged SRC_ROOT/src_rel (root's, trusted) to DST_ROOT/dst_rel through no-follow dir fds: a
    rename, or when the two are on different filesystems (the agent's directory is beside the root, which may
    be a mount point of its own) a no-follow copy to a temp name beside the destination, chowned to
    ``owner``, renamed into place; the staged copy is removed then."""
    try:
        safe_rename(src_root, src_rel, dst_root, dst_rel)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    parent, _sep, name = dst_rel.rpartition("/")
    tmp = f"{parent}/.{name}.hotswap-new" if parent else f".{name}.hotswap-new"
    src = os.path.join(src_root, src_rel)
    st = os.lstat(src)
    safe_rmtree(dst_root, tmp)
    try:
        if stat.S_ISDIR(st.st_mode):
            copy_tree_nofollow(src_root, src_rel, dst_root, tmp, owner=owner)
        elif stat.S_ISLNK(st.st_mode):
            fd = safe_open_dir(dst_root, parent)
            try:
                os.symlink(os.readlink(src), tmp.rpartition("/")[2], dir_fd=fd)
                if owner is not None and os.geteuid() == 0:
                    os.chown(tmp.rpartition("/")[2], *owner, dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)
        else:
            with open(src, "rb") as fh:
                safe_write(dst_root, tmp, fh.read(), owner=owner, mode=stat.S_IMODE(st.st_mode) & 0o755)
        safe_rename(dst_root, tmp, dst_root, dst_rel)
    except BaseException:
        safe_rmtree(dst_root, tmp)
        raise
    rmtree(src)


def _referenced_libs(rels, skip_vsn=None):
    return {os.path.basename(d.rstrip("/")) for r in rels or [] if r["version"] != skip_vsn for _ign, _ign, d in r["libs"]}


def _remove_files_of(h, vsn, rels, lib_names):
    """Python removal of a release's dirs not used by any other release."""
    keep = _referenced_libs(rels, skip_vsn=vsn)
    removed = []
    for ln in lib_names:
        if ln not in keep and valid_lib(*ln.rpartition("-")[::2]) and os.path.isdir(h.p("lib", ln)):
            safe_rmtree(h.root, "lib/" + ln)
            removed.append("lib/" + ln)
    for x in (f"releases/{check_vsn(vsn)}", f"releases/{h.app}-{vsn}.rel"):
        if os.path.lexists(h.p(x)):
            safe_rmtree(h.root, x)
            removed.append(x)
    return removed


def package_rel(tf, members, rel_name, app, vsn):
    """The .rel member ``rel_name`` of an open package, parsed and checked to describe ``app`` ``vsn``."""
    relm = next(m for m, r in members if r == rel_name)
    try:
        rel = parse_rel(tf.extractfile(relm).read().decode("utf-8"))
    except (TermError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise PackageRefused(f"package refused: {rel_name} unreadable ({e}); nothing changed")
    if rel["version"] != vsn or rel["name"] != app:
        raise PackageRefused(f"package refused: {rel_name} describes {rel['name']} {rel['version']}, "
                             f"expected {app} {vsn}; nothing changed")
    return rel


def open_verified(package, sha, check):
    """Verify a package's sha256 FIRST, then open it and check every entry with ``check`` (which raises
    for an unsafe entry and returns the entry's path in the root, or None to skip it).
    Returns (tarfile, [(member, path)]); the caller closes the tarfile."""
    if not os.path.isfile(package):
        raise OpFailed(f"package {package} does not exist; nothing changed")
    got = sha256_file(package)
    if got != sha:
        raise OpFailed(f"package {package} refused: sha256 is {got}, expected {sha}; nothing changed",
                       sha256_actual=got)
    try:
        tf = tarfile.open(package, "r:*")
    except READ_ERRORS as e:
        raise package_damaged(package, e) from None
    except OSError as e:
        raise OpFailed(f"package {package} is not a readable tar archive ({e}); nothing changed")
    try:
        members = [(m, rel) for m in tf.getmembers() for rel in [check(m)] if rel]
        check_links(members)
    except READ_ERRORS as e:
        tf.close()
        raise package_damaged(package, e) from None
    except BaseException:
        tf.close()
        raise
    return tf, members


def prepare_unpack(h, package, sha, vsn, node_up, running=None):
    """Verify + stage + move the package into the root.  Returns a dict:
    {"changed", "noop", "rel_file" (to register, or None), "moved": [...], "cleaned": [...]}.
    Registration with release_handler is the caller's job (rpc or write_releases)."""
    drop_stale_staging(h)
    tf, members = open_verified(package, sha, lambda m: check_member(m, h.app, vsn))
    with tf:
        names = {rel for _ign, rel in members}
        top_rel = f"releases/{h.app}-{vsn}.rel"
        if top_rel not in names:
            raise PackageRefused(f"package refused: {top_rel} missing (release_handler format); nothing changed")
        if not any(n.startswith(f"releases/{vsn}/") for n in names):
            raise PackageRefused(f"package refused: releases/{vsn}/ missing; nothing changed")
        rel = package_rel(tf, members, top_rel, h.app, vsn)
        if not os.path.isdir(h.p("erts-" + rel["erts"])):
            raise OpFailed(f"package needs ERTS {rel['erts']} which {h.root} lacks: not hot-upgradable, "
                           f"use the cold path; nothing changed")
        lib_names = [f"{a}-{v}" for a, v in rel["apps"]]
        pkg_libs = sorted({rel_.split("/")[1] for rel_ in names if rel_.startswith("lib/") and rel_.count("/") >= 1
                           and rel_ != "lib"})
        rels = h.releases()
        entry = next((r for r in rels or [] if r["version"] == vsn), None)
        recorded = h.sha_record(vsn)
        cleaned = []
        if entry is not None:
            installed = entry["status"] in ("permanent", "current") or running == vsn
            if recorded == sha or (recorded is None and installed):
                missing = [ln for ln in lib_names if not os.path.isdir(h.p("lib", ln))]
                if not missing and os.path.isdir(h.p("releases", vsn)):
                    return {"changed": False, "noop": True, "rel_file": None, "moved": [], "cleaned": [],
                            "status": entry["status"]}
            if installed:
                raise OpFailed(f"{vsn} is installed ({entry['status']}) from another package "
                               f"(sha256 {recorded}); a running release cannot be replaced: "
                               f"publish a new version", sha256_recorded=recorded)
            # stale unpack (other checksum or missing dirs): remove so it can be retried
            if node_up:
                r = h.rpc("remove", remove=[vsn], timeout=60)
                if not r.get("ok"):
                    raise OpFailed(f"cannot remove stale unpacked {vsn}: {r.get('error')}")
                cleaned.append(f"release_handler:remove_release({vsn})")
                rels = h.releases()
            else:
                rels = [r for r in rels if r["version"] != vsn]
                h.write_releases(rels)
            cleaned += _remove_files_of(h, vsn, rels, set(lib_names) | set(pkg_libs))
        elif os.path.lexists(h.p("releases", vsn)) or os.path.lexists(h.p("releases", f"{h.app}-{vsn}.rel")):
            cleaned += _remove_files_of(h, vsn, rels, set(pkg_libs))
        h.set_sha_record(vsn, None)

        referenced = _referenced_libs(rels)
        need, free = _space_needed(members), _space_free(h)
        if free is not None and need > free:
            raise OpFailed(f"no space left on device while unpacking {vsn} into {h.root}: it needs about "
                           f"{need // 1024} KB, {free // 1024} KB are free; nothing changed",
                           space_needed_kb=need // 1024, space_free_kb=free // 1024, cleaned=cleaned)
        staging = os.path.join(h.hs, f"staging-{os.getpid()}")
        moved = []
        try:
            _unpack_into_root(h, tf, members, staging, pkg_libs, referenced, vsn, top_rel, moved, cleaned)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OpFailed(f"no space left on device while unpacking {vsn} into {h.root} ({e.strerror}); "
                           f"partial files removed; nothing changed", cleaned=cleaned) from None
        missing = [ln for ln in lib_names if not os.path.isdir(h.p("lib", ln))]
        if missing:
            for x in moved:
                safe_rmtree(h.root, x)
            raise OpFailed(f"package refused: the release needs lib dirs that are neither on the host nor in "
                           f"the package: {', '.join(missing)}; nothing changed")
        return {"changed": True, "noop": False, "rel_file": h.p(top_rel), "moved": moved, "cleaned": cleaned,
                "rel": rel}


def _space_needed(members, block=4096):
    """Bytes the members take on disk (each file, and each hard link -- extracted as a copy -- rounded up to a
    block, a block per dir/symlink) + slack."""
    need = 64 * 1024
    sizes = {_rel: m.size for m, _rel in members if m.isfile()}
    for m, _rel in members:
        size = m.size if m.isfile() else sizes.get("/".join(x for x in m.linkname.split("/") if x not in ("", ".")), 0) \
            if m.islnk() else 0  # a hard link is extracted as a copy of its file
        need += ((size + block - 1) // block) * block if size else block
    return need


def _space_free(h):
    """Bytes free where the package lands: the least of the agent's directory and the root (two filesystems
    when the root is a mount point of its own), None when neither can be asked."""
    free = []
    for d in (h.hs, h.root):
        try:
            st = os.statvfs(d)
            free.append(st.f_bavail * st.f_frsize)
        except OSError:
            continue
    return min(free) if free else None


def _unpack_into_root(h, tf, members, staging, pkg_libs, referenced, vsn, top_rel, moved, cleaned):
    """Extract into a private staging dir, then rename into the root through no-follow dir fds (a planted
    link in lib/ or releases/ is refused, never followed); on any error, what was moved is taken out again
    and the staging dir removed."""
    rmtree(staging)
    st = os.path.basename(staging)
    try:
        os.makedirs(staging, mode=0o700)
        safe_extract(tf, members, staging)
        uid, gid = h.tree_owner()
        lchown_tree_at(h.hs, st, uid, gid, top=False)
        for ln in pkg_libs:
            dst = f"lib/{ln}"
            if os.path.lexists(h.p(dst)):
                if ln in referenced:
                    continue  # never overwrite a lib dir another release uses
                safe_rmtree(h.root, dst)
                cleaned.append(dst)
            move_in(h.hs, f"{st}/{dst}", h.root, dst, (uid, gid))
            moved.append(h.p(dst))
        for x in (f"releases/{vsn}", top_rel):
            move_in(h.hs, f"{st}/{x}", h.root, x, (uid, gid))
            moved.append(h.p(x))
        keep_package_bin(h, st, vsn)
    except BaseException:
        for x in moved:
            safe_rmtree(h.root, x)
        del moved[:]
        raise
    finally:
        rmtree(staging)


def keep_package_bin(h, st, vsn):
    """The version's start scripts from its package (staged in the agent's ST/bin) become the agent's
    bin/VSN, root's: made ROOT/bin when VSN becomes the release that boots (bins.boot_bin)."""
    if _lstat_at(h.hs, f"{st}/bin") is None:
        return
    dst = os.path.join(h.hs, "bin", vsn)
    os.close(safe_open_dir(h.hs, "bin", create=True, mode=0o700))
    rmtree(dst + ".tmp")
    copy_tree_nofollow(h.hs, f"{st}/bin", h.hs, f"bin/{vsn}.tmp")
    rmtree(dst)
    os.rename(dst + ".tmp", dst)


def register_offline(h, vsn, rel):
    """Node down: add the release to RELEASES as release_handler:set_unpacked would."""
    rels = h.releases()
    if rels is None:
        raise OpFailed(f"{h.rel_dir}/RELEASES is missing: first-install must create it before upgrades")
    relative = all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"]) and bool(rels)
    libs = [(a, v, f"lib/{a}-{v}" if relative else h.p("lib", f"{a}-{v}")) for a, v in rel["apps"]]
    rels.insert(0, {"name": rel["name"], "version": vsn, "erts": rel["erts"], "libs": libs, "status": "unpacked"})
    h.write_releases(rels)


def undo_unpack(h, prep):
    """Take the files an unpack placed back out of the root (the version can then be unpacked again)."""
    for x in prep.get("moved", []):
        safe_rmtree(h.root, x)


def cmd_unpack(h, a):
    """unpack --package P --sha256 S --version V: verify the upgrade package and place its release in the
    root (registered with release_handler when the node is up, in RELEASES when it is down)."""
    vsn = a.version
    up = h.node_up()
    with Lock(h, "unpack"):
        prep = prepare_unpack(h, a.package, a.sha256, vsn, up)
        if prep["noop"]:
            return {"changed": False, "version": vsn, "status": prep["status"]}
        if up:
            r = h.rpc("unpack", vsn=vsn, rel_file=prep["rel_file"], timeout=60)
            if not r.get("ok"):
                undo_unpack(h, prep)
                raise OpFailed(f"release_handler refused {vsn}: {r.get('error')}; files removed again, "
                               f"nothing changed", node=r)
        else:
            try:
                register_offline(h, vsn, prep["rel"])
            except BaseException:
                undo_unpack(h, prep)
                raise
        h.set_sha_record(vsn, a.sha256)
        return {"changed": True, "version": vsn, "cleaned": prep["cleaned"], "registered": "rpc" if up else "file"}


# ==================================================================================================
# bins.py
# The start scripts (ROOT/bin) of each release the host holds: kept by the agent under its own bin/VSN
# (from full packages, and from upgrade packages, which carry them too), and made ROOT/bin whenever the
# release that boots changes.  A mix release's bin/APP is the same for every version (it reads
# start_erl.data); relx's names the version it boots (REL_VSN), so after a hot upgrade is made permanent,
# or a host goes back to an older release, ROOT/bin must be that release's or the next start boots another.
# ==================================================================================================

def save_bin(h, vsn, force=False):
    """Keep a copy of the bin/ that boots vsn under the agent's bin/VSN (restored on a cold switch back).
    ROOT/bin is the node user's: it is read through no-follow fds, links copied as links, and only files
    owned by the node's user (never a hard link to someone else's file)."""
    if not vsn or not os.path.isdir(h.p("bin")) or os.path.islink(h.p("bin")):
        return None
    dst = os.path.join(h.hs, "bin", vsn)
    if force and os.path.isdir(dst) and not _tree_same(dst, h.p("bin")):
        rmtree(dst)
    if not os.path.isdir(dst):
        h.ensure_hs()
        os.close(safe_open_dir(h.hs, "bin", create=True, mode=0o700))
        rmtree(dst + ".tmp")
        copy_tree_nofollow(h.root, "bin", h.hs, f"bin/{vsn}.tmp",
                           uid_only=h.tree_owner()[0] if os.geteuid() == 0 else None)
        os.rename(dst + ".tmp", dst)
    return dst


def _hash_nofollow(p):
    """sha256 of the regular file p (O_NOFOLLOW|O_NONBLOCK: never a link's target, never blocks on a fifo)."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest() if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _tree_same(a, b):
    def listing(d):
        out = {}
        for dp, dns, fns in os.walk(d):
            for f in fns + [x for x in dns if os.path.islink(os.path.join(dp, x))]:
                p = os.path.join(dp, f)
                st = os.lstat(p)
                out[os.path.relpath(p, d)] = os.readlink(p) if stat.S_ISLNK(st.st_mode) else \
                    _hash_nofollow(p) if stat.S_ISREG(st.st_mode) else f"special {st.st_mode:o}"
        return out
    return os.path.isdir(a) and os.path.isdir(b) and not os.path.islink(b) and listing(a) == listing(b)


def swap_bin(h, src, owner):
    """Replace ROOT/bin with a copy of src, a root-owned tree (atomic rename of the directory, through
    no-follow dir fds; new entries chowned to owner). Returns True if changed."""
    if not src or not os.path.isdir(src) or _tree_same(src, h.p("bin")):
        return False
    safe_rmtree(h.root, "bin.hotswap-new")
    copy_tree_nofollow(os.path.dirname(src), os.path.basename(src), h.root, "bin.hotswap-new", owner=owner)
    safe_rmtree(h.root, "bin.hotswap-old")
    if os.path.lexists(h.p("bin")):
        safe_rename(h.root, "bin", h.root, "bin.hotswap-old")
    safe_rename(h.root, "bin.hotswap-new", h.root, "bin")
    safe_rmtree(h.root, "bin.hotswap-old")
    return True


def boot_bin(h):
    """Make ROOT/bin the start scripts of the release start_erl.data names, when the agent keeps them and
    they differ.  Returns True when ROOT/bin was replaced."""
    vsn = (h.start_erl() or {}).get("version")
    src = os.path.join(h.hs, "bin", vsn) if vsn else None
    if not src or not os.path.isdir(src):
        return False
    return swap_bin(h, src, h.tree_owner())


# ==================================================================================================
# prune.py
# Pruning: old releases beyond --keep (never the permanent, running, booted or rollback one) and stale
# uploads, over release_handler while the node runs, from the files when it is down.
# ==================================================================================================

def _drop_stale_uploads(h, age_s=3600):
    """Uploads a failed or interrupted run left in .hotswap/ (.upload-*.part, older than an hour)."""
    try:
        names = os.listdir(h.hs)
    except OSError:
        return
    for n in names:
        f = os.path.join(h.hs, n)
        try:
            if n.startswith(".upload-") and n.endswith(".part") and time.time() - os.lstat(f).st_mtime > age_s:
                os.unlink(f)
        except OSError:
            pass


def do_prune(h, keep):
    """Remove releases beyond the newest ``keep`` (never the permanent, running, booted or previous one);
    returns the versions removed."""
    _drop_stale_uploads(h)
    drop_stale_staging(h)
    rels = h.releases()
    if not rels:
        return []
    up = h.node_up()
    perm = permanent_version(rels)
    protected = {perm}
    pid, boot = h.os_pid() if up else (None, None)
    rec = h.installed_record()
    if up:
        protected.add(boot)  # its consolidated dir stays on the code path
        if rec:
            protected.add(rec.get("version"))
    if perm:
        older = sorted((r["version"] for r in rels if vsn_key(r["version"]) < vsn_key(perm)), key=vsn_key)
        if older:
            protected.add(older[-1])  # rollback target
    cands = sorted((r["version"] for r in rels if r["version"] not in protected), key=vsn_key)
    remove = []
    total = len(rels)
    for v in cands:
        if total <= keep:
            break
        remove.append(v)
        total -= 1
    if not remove:
        return []
    if up:
        r = h.rpc("remove", remove=remove, timeout=60)
        # the node's reply becomes paths: only versions we asked to remove, each a valid version
        removed = [v for v in r.get("removed") or [] if v in remove and valid_version(v)]
        for v in removed:
            safe_rmtree(h.root, f"releases/{h.app}-{v}.rel")
            rmtree(os.path.join(h.hs, "bin", v))
            h.set_sha_record(v, None)
            h.set_full_sha(v, None)
        if not r.get("ok"):
            raise OpFailed(f"prune: {r.get('error')}", removed=removed)
        return removed
    for v in remove:
        entry = next(r for r in rels if r["version"] == v)
        rels = [r for r in rels if r["version"] != v]
        _remove_files_of(h, v, rels, [os.path.basename(d.rstrip("/")) for _ign, _ign, d in entry["libs"]])
        h.write_releases(rels)
        h.set_sha_record(v, None)
        h.set_full_sha(v, None)
        rmtree(os.path.join(h.hs, "bin", v))
    return remove


def cmd_prune(h, a):
    """prune --keep N: remove old releases (see ``do_prune``)."""
    if a.keep is None:
        raise BadInput("prune needs --keep N")
    if a.keep < 1:
        raise BadInput("--keep must be >= 1")
    with Lock(h, "prune"):
        removed = do_prune(h, a.keep)
        return {"changed": bool(removed), "removed": removed}


# ==================================================================================================
# health.py
# Health checks after install and before commit: an http(s) URL, a command on the host, or an rpc
# expression on the node (the default: the node answers and runs the new release).
# ==================================================================================================

def _need_up(h, what):
    if not h.node_up():
        raise OpFailed(f"node {h.node_name()} is not running: {what} needs a running node "
                       f"(start it, or use the cold path)", node_up=False)


def _http_check(url, timeout):
    # imported here: only HTTP checks need it, and it costs every agent start 13 ms
    import urllib.error  # pylint: disable=import-outside-toplevel
    import urllib.request  # pylint: disable=import-outside-toplevel
    try:
        with urllib.request.build_opener().open(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"{type(e).__name__}: {getattr(e, 'reason', e)}"


def _cmd_check(h, argv, timeout):
    """The command runs as the node's user (never root: a script in the release tree is the user's)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL, **h.run_kwargs())
    except FileNotFoundError:
        return False, f"command not found: {argv[0]}"
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.1f}s"
    out = (p.stdout + p.stderr).strip()[-200:]
    return p.returncode == 0, f"exit {p.returncode}" + (f": {out}" if out else "")


def parse_check(spec):
    """A health check specification -> (kind, argument): ``default``, ``http`` URL, ``cmd`` argv or ``rpc``
    expression; BadInput for a malformed one."""
    if spec is None or spec == "":
        return ("default", None)
    if spec.startswith(("http://", "https://")):
        return ("http", spec)
    if spec.startswith("cmd:"):
        try:
            argv = shlex.split(spec[4:])
        except ValueError as e:
            raise BadInput(f"bad cmd check: {e}")
        if not argv:
            raise BadInput("empty cmd: check")
        return ("cmd", argv)
    if spec.startswith("rpc:"):
        if not spec[4:].strip():
            raise BadInput("empty rpc: check")
        return ("rpc", spec[4:])
    raise BadInput(f"unknown check {spec!r}: use http(s)://..., cmd:ARGV or rpc:EXPR")


def run_health(h, vsn, check, timeout):
    """Returns (ok, why).  rpc/default run inside the node (one rpc, retried there)."""
    kind, arg = check
    if kind in ("default", "rpc"):
        try:
            r = h.rpc("verify", vsn=vsn, check_rpc=arg, timeout_ms=int(timeout * 1000), timeout=timeout + 60)
        except OpFailed as e:
            return False, e.msg
        return bool(r.get("ok")), r.get("error") or "ok"
    deadline = time.monotonic() + timeout
    why = "not run"
    while True:
        left = deadline - time.monotonic()
        # a command may take as long as the budget allows; one HTTP request at most 10 s, then retry
        per = max(0.5, left if kind == "cmd" else min(10.0, left))
        ok, why = _http_check(arg, per) if kind == "http" else _cmd_check(h, arg, per)
        if ok:
            return True, why
        if time.monotonic() + 0.5 >= deadline:
            return False, why
        time.sleep(0.5)


def cmd_health(h, a):
    """health --version V: run the health check once against the live node (OpFailed when it fails)."""
    check = parse_check(a.check)
    if check[0] in ("default", "rpc"):
        _need_up(h, "the health check")
    ok, why = run_health(h, a.version, check, a.timeout)
    if not ok:
        raise OpFailed(f"health check ({check[0]}) of {a.version} failed: {why}", healthy=False, check=check[0])
    return {"changed": False, "healthy": True, "version": a.version, "check": check[0]}


# ==================================================================================================
# service.py
# Service managers (systemd unit or the release's own daemon mode): write the unit, start and stop the
# node, wait for it to answer.
# ==================================================================================================

SYSTEMD_UNIT_DIR = "/etc/systemd/system"


def resolve_service_manager(sm):
    """auto = systemd where PID 1 is systemd (/run/systemd/system exists), else the release's daemon."""
    if sm in (None, "", "auto"):
        return "systemd" if os.path.isdir("/run/systemd/system") else "daemon"
    if sm not in ("systemd", "daemon"):
        raise BadInput(f"unknown service manager {sm!r}")
    return sm


def unit_name(app):
    return f"hotswap-{app}.service"


def systemd_unit(root, app, user=None, relx=False):
    """The unit text for ROOT/bin/APP (in the foreground: mix's `start`, relx's `foreground`; Type=exec)."""
    lines = [
        "# generated by beam.hotswap (the reload agent); local changes are overwritten",
        "[Unit]",
        f"Description=beam.hotswap release {app} ({root})",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"WorkingDirectory={root}",
        f"Environment=RELEASE_ROOT={root}",
        f"EnvironmentFile=-{state_dir(root)}/env",
        f"ExecStart={root}/bin/{app} {start_args(relx)}",
    ]
    if user:
        lines.append(f"User={user}")
    lines += [
        "Restart=on-failure",
        "RestartSec=2",
        "TimeoutStopSec=60",
        # no ExecStop (`bin/APP stop` shows the cookie on its command line): SIGTERM to the VM is an orderly
        # init:stop; the VM starts epmd, which the host's other nodes use too: stop only the VM
        "KillMode=process",
        "LimitNOFILE=65536",
        f"SyslogIdentifier={app}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _systemctl(*args, run=None, check=True, timeout=120):
    run = run or subprocess.run
    p = run(["systemctl", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            check=False)
    if check and p.returncode != 0:
        raise OpFailed(f"systemctl {' '.join(args)} exited {p.returncode}: {(p.stdout + p.stderr).strip()[-400:]}")
    return p


def ensure_unit(h, unit_dir=SYSTEMD_UNIT_DIR, run=None):
    """Write the unit only when its text changed; then daemon-reload + enable.  Returns changed."""
    path = os.path.join(unit_dir, unit_name(h.app))
    text = systemd_unit(h.root, h.app, h.run_pw().pw_name, h.relx)
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(unit_dir, exist_ok=True)
    tmp = path + ".hotswap-tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    _systemctl("daemon-reload", run=run)
    _systemctl("enable", unit_name(h.app), run=run, check=False)
    return True


def _pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def start_node(h, timeout=60):
    """Start the node on the release start_erl.data names; wait until APP is started.
    Returns {"changed", "os_pid", "running", "boot_ms", "service_manager"}."""
    if h.node_up():
        pid, _ign = h.os_pid()
        return {"changed": False, "os_pid": pid, "running": None}
    if not os.path.exists(os.path.join(h.rel_dir, "RELEASES")):
        raise OpFailed(f"{h.rel_dir}/RELEASES is missing: create it before starting (first-install), "
                       f"or downgrades will crash")
    h.bin()
    sm = h.service_manager
    t0 = now_ms()
    res = {"service_manager": sm}
    if sm == "systemd":
        res["unit_changed"] = ensure_unit(h)
        _systemctl("start", unit_name(h.app), timeout=timeout + 30)
    else:
        kw = h.run_kwargs()
        kw["env"].update(daemon_env(h.root, h.relx))
        p = subprocess.run([h.bin(), "daemon"], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, **kw, check=False)
        if p.returncode != 0:
            raise OpFailed(f"bin/{h.app} daemon exited {p.returncode}: {(p.stdout + p.stderr).strip()[-400:]}")
    deadline = time.monotonic() + timeout
    no_beam_since = None
    while not h.node_up():
        now = time.monotonic()
        if now > deadline:
            raise OpFailed(f"node {h.node_name()} did not register with epmd within {timeout}s: "
                           f"see {h.p('tmp', 'log')}", node_up=False)
        if sm == "daemon":  # a VM that died during boot (bad vm.args, missing ERTS...) fails fast
            if h._beam_pids():
                no_beam_since = None
            elif no_beam_since is None:
                no_beam_since = now
            elif now - no_beam_since > 5:
                raise OpFailed(f"node {h.node_name()} exited during boot: see {h.p('tmp', 'log')}", node_up=False)
        time.sleep(0.05)
    while True:
        # a node that just registered with epmd may not have Elixir running yet ("evaluating input failed"):
        # ask again until the deadline
        try:
            info = h.rpc("ready", timeout_ms=int(max(1, deadline - time.monotonic()) * 1000), timeout=timeout + 30)
            break
        except OpFailed as e:
            if not e.extra.get("rpc_transport") or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
            if not h.os_pid()[0]:
                raise OpFailed(f"node {h.node_name()} exited during boot (did its application fail to start? a port "
                               f"in use?): see {h.p('tmp', 'log')}", node_up=False)
    pid, _ign = h.os_pid()
    pid = pid or info.get("os_pid")
    if pid:
        h.ensure_hs()
        with open(os.path.join(h.hs, "pid"), "w") as fh:
            fh.write(f"{pid}\n")
    if not info.get("ok"):
        raise OpFailed(f"node started but {h.app} is not running: {info.get('error')}", os_pid=pid)
    h.set_installed_record(None)
    return dict(res, changed=True, os_pid=pid, running=info.get("running"), boot_ms=round(now_ms() - t0, 1))


def stop_node(h, timeout=60):
    """Stop the node (the unit under systemd, else `bin/APP stop`, then SIGTERM/SIGKILL of the OS process
    if it lingers); never `bin/APP restart`."""
    pid, _ign = h.os_pid()
    if not h.node_up() and not pid:
        if h.service_manager == "systemd":  # a unit restarting in a loop has no node to see
            _systemctl("stop", unit_name(h.app), check=False, timeout=timeout + 30)
        return {"changed": False}
    t0 = now_ms()
    forced = None
    stopped = False
    if h.service_manager == "systemd":
        active = _systemctl("is-active", "--quiet", unit_name(h.app), check=False).returncode == 0
        if active:
            _systemctl("stop", unit_name(h.app), check=False, timeout=timeout + 30)
            stopped = True
    if not stopped and h.node_up():  # NEVER `bin/APP restart` (init:restart keeps the old env)
        try:  # not `bin/APP stop`: its VM carries the cookie on its command line
            h.rpc("stop", timeout=30)
        except OpFailed:
            pass  # then SIGTERM below
    deadline = time.monotonic() + timeout
    while (pid and _pid_alive(pid)) or (not pid and h.node_up()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if pid and _pid_alive(pid):  # last resort: the recorded/identified pid only
        for sig in (signal.SIGTERM, signal.SIGKILL):
            forced = sig.name
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            if not _pid_alive(pid):
                break
    if pid and _pid_alive(pid):
        raise OpFailed(f"node pid {pid} did not exit", os_pid=pid)
    pf = os.path.join(h.hs, "pid")
    if os.path.exists(pf):
        os.unlink(pf)
    h.set_installed_record(None)
    # epmd unregisters when the VM's connection closes
    end = time.monotonic() + 5
    while h.node_up() and time.monotonic() < end:
        time.sleep(0.05)
    return {"changed": True, "stop_ms": round(now_ms() - t0, 1), "forced": forced, "os_pid": pid}


def start_timeout(timeout):
    """A cold start (boot to rpc-ready) gets at least 60 s, whatever the health check's --timeout:
    a loaded host boots slowly, and a start that gives up too early leaves the host down."""
    return max(float(timeout or 0), 60.0)


def _gate(h, vsn, check, timeout, started):
    """Health gate after a cold start: default = the node answers and runs vsn (start_node's
    `ready` rpc already said so); rpc/cmd/http checks run as run_health does."""
    if started.get("running") != vsn:
        return False, f"node runs {started.get('running')}, not {vsn}"
    if check[0] == "default":
        return True, "ok"
    return run_health(h, vsn, check, timeout)


def cmd_start(h, a):
    """start [--version V]: boot the permanent release (repairing the boot files first when the node is
    down) and wait until it answers and passes the health check."""
    check = parse_check(a.check)
    repaired = []
    if not h.node_up():
        with Lock(h, "start"):
            repaired = repair_boot_files(h)
    perm = permanent_version(h.releases())
    if a.version:
        se = (h.start_erl() or {}).get("version")
        if a.version not in (perm, se):
            raise OpFailed(f"start boots the permanent release ({perm}, start_erl.data: {se}), not {a.version}: "
                           f"commit/revert first")
    vsn = a.version or perm
    with Lock(h, "start"):
        was_up = h.node_up()
        t0 = now_ms()
        st = start_node(h, a.timeout)
        if was_up:
            info = h.rpc("info", timeout=30)
            st["running"] = info.get("running")
        ok, why = _gate(h, vsn, check, a.timeout, st)
        res = dict(st, version=vsn, host_version=st.get("running"), healthy=ok, check=check[0])
        if repaired:
            res.update(repaired=repaired, changed=True)
        if not was_up:
            res["start_ms"] = round(now_ms() - t0, 1)
        if not ok:
            raise OpFailed(f"{h.app} {vsn} started but the health check ({check[0]}) failed: {why}",
                           stage="health", **res)
        return res


def cmd_stop(h, a):
    """stop: stop the node (see ``stop_node``)."""
    with Lock(h, "stop"):
        return stop_node(h, a.timeout)


# ==================================================================================================
# hot.py
# The hot path: install over the relup (after the code_change rehearsal), commit, revert, and `hot`
# which carries them out in one lock; pruning old releases.
# ==================================================================================================

def fault_point(h, name):
    """TEST-ONLY fault injection (HOTSWAP_AGENT_FAULT=NAME, see the module docstring): SIGKILL the
    node's OS process at the named point.  Does nothing unless the variable names this point."""
    if os.environ.get("HOTSWAP_AGENT_FAULT") != name:
        return
    pid, _ign = h.os_pid()
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.02)


def _recover_dead_node(h, old, err, timeout=60, when="before the upgrade was committed"):
    """The node's OS process died mid-deploy (killed, OOM...): make `old` the permanent release again
    (whatever was committed) and start it cold.  Returns the failure info (with "msg") for the caller's
    OpFailed; ``when`` says in that message when the node died."""
    h.set_installed_record(None)
    repaired = []
    try:
        # release_handler writes start_erl.data, then RELEASES in place (truncated first): a node killed in
        # between leaves RELEASES empty; rebuilt from the releases on disk, OLD is found and made permanent again
        repaired += repair_releases(h, up=False)
        rels = h.releases() or []
    except OpFailed:
        rels = []
    perm = permanent_version(rels)
    se = (h.start_erl() or {}).get("version")
    if old and any(r["version"] == old for r in rels) and (perm != old or se != old):
        _make_permanent_offline(h, old)
        repaired.append(f"{old} made permanent again (was {perm}, start_erl.data {se})")
    try:
        boot_bin(h)
        st = start_node(h, start_timeout(timeout))
    except OpFailed as e2:
        return {"host_version": None, "node_up": h.node_up(), "reverted": False, "state_lost": True,
                "node_died": True, "repaired": repaired,
                "msg": f"{err}; the node died and did not start again: {e2.msg}"}
    running = st.get("running")
    return {"host_version": running, "node_up": True, "reverted": running == old, "os_pid": st.get("os_pid"),
            "state_lost": True, "restarted": "cold", "node_died": True, "repaired": repaired,
            "msg": (f"{err}; the node died (its OS process is gone) {when}: "
                    f"started the permanent release {running} again cold (in-memory state lost)")}


def _after_failure(h, old, err, rh_pid_before=None, wait_s=60, pid_before=None):
    """install_release failed or the rpc died.  Past the relup's point of no return
    release_handler replies {error, _} and then calls init:restart(): the VM reboots in place
    from the permanent release, losing all in-memory state.  Find out which happened: wait until
    the node answers with init 'started', and compare release_handler's pid with the one from
    before the install (a new pid = the node restarted)."""
    deadline = time.monotonic() + wait_s
    info = None
    while time.monotonic() < deadline:
        if h.node_up():
            try:
                info = h.rpc("ready", timeout=max(5, int(deadline - time.monotonic()) + 5),
                             timeout_ms=int(max(1, deadline - time.monotonic()) * 1000))
                if info.get("ok"):
                    break
            except OpFailed:
                info = None
        elif pid_before and not _pid_alive(pid_before):
            # not an in-place restart (that keeps the OS pid): the VM is gone
            return _recover_dead_node(h, old, err, timeout=max(30, wait_s))
        time.sleep(0.3)
    h.set_installed_record(None)
    if info is None or not info.get("ok"):
        return {"host_version": None, "node_up": h.node_up(), "reverted": False, "state_lost": None,
                "msg": f"{err}; the node did not answer afterwards: check it (status), then start it"}
    restarted = None if rh_pid_before is None else info.get("rh_pid") != rh_pid_before
    running = info.get("running")
    res = {"host_version": running, "node_up": True, "reverted": running == old, "os_pid": info.get("os_pid"),
           "state_lost": restarted, "restarted_in_place": restarted}
    if restarted is None:
        res["msg"] = (f"{err}; the node answers on {running} (same OS pid), but whether release_handler restarted "
                      f"it in place (losing its in-memory state) is not known: check the application")
    elif restarted:
        res["msg"] = (f"{err}; release_handler restarted the node in place on {running} "
                      f"(same OS pid, in-memory state LOST)")
    else:
        res["msg"] = f"{err}; node still runs {running}, state intact"
    return res


def _rehearsal_fields(r):
    """The rehearsal's figures from a node result, for the agent's JSON."""
    out = {"rehearse_ms": r.get("rehearse_ms"), "rehearsal_warnings": r.get("rehearsal_warnings") or [],
           "rehearsed": r.get("rehearsed") or [], "rehearsal_peer": bool(r.get("rehearsal_peer")),
           "rehearse_skipped": r.get("rehearse_skipped") or 0}
    if r.get("rehearsal_failures"):
        out["rehearsal_failures"] = r["rehearsal_failures"]
    return out


def _refusal_msg(vsn, r):
    fails = r.get("rehearsal_failures") or []
    what = "; ".join(f"{f.get('module')}.code_change({f.get('old_vsn')}, state, extra) in {f.get('pid')} "
                     + (f"(callback {f.get('callback')}) " if f.get("callback") not in (None, f.get("module")) else "")
                     + f"{f.get('error')}" for f in fails[:3]) or r.get("error")
    keeps = r.get("running")
    return (f"hot upgrade to {vsn} refused: {what} -- rehearsed on a copy of the live state; nothing was "
            f"installed; the host keeps {keeps} and its state")


def _old_code_args(a):
    """The node's old-code options from the agent's arguments."""
    return {"old_code": getattr(a, "old_code", None) or "refuse",
            "old_code_wait_ms": int(max(0.0, getattr(a, "old_code_wait", 5.0) or 0.0) * 1000)}


def _procs_text(procs, limit=5, total=None):
    """Processes the node named (old_code_procs) as one line; processes alike (same function, same start)
    are told once with their count."""
    groups = {}
    for p in procs or []:
        key = (p.get("in"), p.get("current_function"), p.get("initial_call"), tuple(p.get("modules") or []))
        groups.setdefault(key, []).append(p.get("name"))
    out = []
    for (where, cur, init, mods), names in list(groups.items())[:limit]:
        who = names[0] if len(names) == 1 else f"{len(names)} processes like {names[0]}"
        out.append(f"{who} in {where or cur}"
                   + (f" (blocked in {cur})" if where and cur and cur != where else "")
                   + (f", started as {init}" if init and init not in (cur, where) else "")
                   + (f", holding old code of {', '.join(mods)}" if not where else ""))
    shown = sum(len(n) for n in list(groups.values())[:limit])
    more = max(total or 0, len(procs or [])) - shown
    return "; ".join(out) + (f"; and {more} more" if more > 0 else "")


def _old_code_refusal_msg(vsn, r, wait_s):
    procs = r.get("old_code_procs") or []
    count = r.get("old_code_count") or len(procs)
    if r.get("old_code_conns"):
        return (f"hot upgrade to {vsn} refused: {count} connection process(es) still run code an earlier upgrade "
                f"replaced and were still serving a request after {wait_s:g} s: {_procs_text(procs, total=count)}. release_handler asks "
                f"such a process (a Cowboy connection) for its status, which moves it onto the current code with "
                f"its old state; idle ones are closed, a busy one is not -- nothing was installed; the host keeps "
                f"{r.get('running')} and its state. Deploy again when its request is done, or set "
                f"hotswap_old_code=kill to close it")
    return (f"hot upgrade to {vsn} refused: {count} process(es) execute code of modules this upgrade replaces and "
            f"did not leave within {wait_s:g} s, so purging the old code would kill them: {_procs_text(procs, total=count)} -- "
            f"nothing was installed; the host keeps {r.get('running')} and its state. Make such loops leave the "
            f"module (docs/writing-upgradable-code.md), or set hotswap_old_code=kill to let their supervisors "
            f"restart them on the new code, or deploy with hotswap_mode=cold")


def cmd_install(h, a):
    """install --version V: install an unpacked release over the relup on the live node (after the
    code_change rehearsal), without committing it; on a dead node or a failed install, report what the host runs."""
    vsn = a.version
    with Lock(h, "install"):
        _need_up(h, "install")
        rels = h.releases()
        if rels is not None and not any(r["version"] == vsn for r in rels):
            raise OpFailed(f"{vsn} is not unpacked on this host: run unpack first", releases=[r["version"] for r in rels])
        pid, _ign = h.os_pid()
        perm = permanent_version(rels)
        fault_point(h, "before_install")
        try:
            r = h.rpc("install", vsn=vsn, rehearse=True, timeout=a.timeout + 60, **_old_code_args(a))
        except OpFailed as e:
            if e.extra.get("rpc_transport"):
                info = _after_failure(h, perm, e.msg, pid_before=pid)
                raise OpFailed(info.pop("msg"), **info)
            raise
        if not r.get("ok") and r.get("stage") == "rehearse":
            raise OpFailed(_refusal_msg(vsn, r), stage="rehearse", host_version=r.get("running"),
                           **_rehearsal_fields(r))
        if not r.get("ok") and r.get("stage") == "old_code":
            raise OpFailed(_old_code_refusal_msg(vsn, r, a.old_code_wait), stage="old_code",
                           host_version=r.get("running"), old_code_procs=r.get("old_code_procs"))
        if not r.get("ok"):
            msg = f"install_release({vsn}) failed at {r.get('stage')}: {r.get('error')}"
            if r.get("stage") == "install":
                raise OpFailed(**_after_failure(h, perm, msg, r.get("rh_pid_before")))
            raise OpFailed(f"{msg}; node runs {r.get('running')}", host_version=r.get("running"))
        if r.get("running") != r.get("permanent"):
            h.set_installed_record({"version": r.get("running"), "os_pid": r.get("os_pid") or pid})
        return dict({"changed": r.get("changed", True), "version": vsn, "from": r.get("from"),
                     "host_version": r.get("running"), "permanent": r.get("permanent"),
                     "install_ms": r.get("install_ms"), "runtime_keys": r.get("runtime_keys"),
                     "created_releases": r.get("created_releases"), "os_pid": r.get("os_pid")},
                    **_rehearsal_fields(r))


def _verify_committed(h, vsn):
    """What disagrees with V being committed: start_erl.data and RELEASES must both name it (empty: all good)."""
    se = h.start_erl() or {}
    rels = h.releases() or []
    perm = permanent_version(rels)
    problems = []
    if se.get("version") != vsn:
        problems.append(f"start_erl.data names {se.get('version')}")
    if perm != vsn:
        problems.append(f"RELEASES has {perm} permanent")
    return problems


def cmd_commit(h, a):
    """commit --version V: health-check the running release, make it permanent (make_permanent) and check
    that the boot files say so.  A release whose check fails is never made permanent: a commit may follow
    a run that was interrupted before its check passed."""
    vsn = a.version
    with Lock(h, "commit"):
        _need_up(h, "commit")
        check = parse_check(a.check)
        ok, why = run_health(h, vsn, check, a.timeout)
        if not ok:
            # never made permanent, and the host goes back to the release that is (hot, else cold)
            old = permanent_version(h.releases() or [])
            if not old or old == vsn:
                raise OpFailed(f"{vsn} runs but its health check ({check[0]}) fails: {why}; not made permanent",
                               stage="health", healthy=False)
            rv = _revert_or_recover(h, old, a.timeout, f"health check ({check[0]}) of {vsn} failed: {why}")
            raise OpFailed(f"{vsn} runs but its health check ({check[0]}) fails: {why}; not made permanent, "
                           + (f"reverted to {old} ({rv.get('mode')})" if rv.get("reverted")
                              else f"REVERT FAILED, node runs {rv.get('host_version')}"),
                           stage="health", healthy=False, reverted=bool(rv.get("reverted")), revert_mode=rv.get("mode"),
                           host_version=rv.get("host_version"), changed=True,
                           **{k: rv[k] for k in ("state_lost", "node_died", "os_pid") if k in rv})
        r = h.rpc("commit", vsn=vsn, timeout=60)
        if not r.get("ok"):
            raise OpFailed(f"make_permanent({vsn}) failed: {r.get('error')}", host_version=r.get("running"))
        problems = _verify_committed(h, vsn)
        if problems:
            raise OpFailed(f"{vsn} committed but the files disagree: {'; '.join(problems)}",
                           host_version=r.get("running"))
        boot_bin(h)
        h.set_installed_record(None)
        return {"changed": r.get("changed", True), "version": vsn, "host_version": r.get("running"),
                "permanent": r.get("permanent"), "commit_ms": r.get("commit_ms")}


def do_revert(h, old, timeout, mode="hot", old_code=None):
    """Hot revert to old; cold (stop, fix files, start) if that fails or mode == "cold".  With ``old_code``
    (an explicit rollback: the agent's arguments) processes in code the down edge replaces are checked
    first, and a refusal raises with nothing changed instead of going cold."""
    if not h.node_up():
        _make_permanent_offline(h, old)
        boot_bin(h)
        h.set_installed_record(None)
        return {"changed": True, "mode": "files", "reverted": True, "host_version": old, "node_up": False}
    hot_err = None
    refusal = None
    try:
        if mode == "cold":
            raise OpFailed("cold revert requested")
        extra = _old_code_args(old_code) if old_code is not None else {}
        r = h.rpc("revert", vsn=old, rehearse=True, timeout=timeout + 60 + 2 * (extra.get("old_code_wait_ms", 0) / 1000),
                  **extra)
        if old_code is not None and not r.get("ok") and r.get("old_code_procs"):
            # refused before anything changed: raised below, never turned into a cold revert
            refusal = OpFailed(_old_code_refusal_msg(old, r, old_code.old_code_wait).replace("hot upgrade", "hot rollback"),
                               stage="old_code", changed=False, reverted=False, host_version=r.get("running"),
                               old_code_procs=r.get("old_code_procs"))
        elif r.get("ok") and not _verify_committed(h, old):
            boot_bin(h)
            h.set_installed_record(None)
            return {"changed": r.get("changed", True), "mode": "hot", "reverted": True,
                    "host_version": r.get("running"), "from": r.get("from"),
                    "install_ms": r.get("revert_install_ms"), "conns_closed": r.get("revert_conns_closed") or []}
        else:
            hot_err = r.get("error") or "; ".join(_verify_committed(h, old))
    except OpFailed as e:
        hot_err = e.msg
    if refusal is not None:
        raise refusal
    # cold: stop, fix start_erl.data / RELEASES, start
    frm = permanent_version(h.releases())
    stop_node(h)
    _make_permanent_offline(h, old)
    boot_bin(h)
    h.set_installed_record(None)
    st = start_node(h, start_timeout(timeout))
    return {"changed": True, "mode": "cold", "reverted": st.get("running") == old, "state_lost": True, "from": frm,
            "hot_error": None if mode == "cold" else hot_err, "host_version": st.get("running"), "os_pid": st.get("os_pid")}


def cmd_revert(h, a):
    """revert --version OLD: put the node back on OLD (over the relup when it can, else cold), ending permanent."""
    with Lock(h, a.command):
        res = do_revert(h, a.version, a.timeout, getattr(a, "mode", "hot"), old_code=a)
        if not res.get("reverted"):
            raise OpFailed(f"revert to {a.version} failed; node runs {res.get('host_version')}", **res)
        return dict(res, version=a.version)


def _revert_or_recover(h, old, timeout, err):
    """After a failed health check/commit: revert to old (hot, else cold); when the node is gone
    altogether (its OS process died), start the permanent release old again cold."""
    if not h.node_up():
        info = _recover_dead_node(h, old, err, timeout=max(30, timeout))
        return dict(info, mode="cold-start")
    return do_revert(h, old, timeout)


def cmd_hot(h, a):
    """hot --package P --sha256 S --version V: the whole hot upgrade under one lock -- verify and unpack the
    upgrade package, rehearse code_change, install over the relup, health check, commit, prune -- and on any
    failure revert the host to the release it had before answering.  A rerun with V running and permanent
    changes nothing."""
    vsn = a.version
    check = parse_check(a.check)
    with Lock(h, "hot"):
        _need_up(h, "a hot upgrade")
        h.repaired += repair_releases(h, up=True)
        running, perm, _up, pid = running_and_permanent(h, h.releases())
        old = perm or running
        if running == vsn and perm == vsn:
            return already_there(h, vsn, a, h.sha_record(vsn))
        t_unpack = now_ms()
        prep = prepare_unpack(h, a.package, a.sha256, vsn, True, running=running)
        unpack_ms = round(now_ms() - t_unpack, 1)
        one_rpc = check[0] in ("default", "rpc")
        fault_point(h, "before_install")
        try:
            r = h.rpc("install", vsn=vsn, rel_file=prep["rel_file"], old=old, verify=one_rpc, commit=one_rpc,
                      revert_on_failure=one_rpc, check_rpc=check[1] if check[0] == "rpc" else None,
                      rehearse=True, timeout_ms=int(a.timeout * 1000),
                      timeout=a.timeout + 90 + 2 * (getattr(a, "old_code_wait", 0) or 0), **_old_code_args(a))
        except OpFailed as e:
            if e.extra.get("rpc_transport"):
                info = _after_failure(h, old, e.msg, pid_before=pid)
                raise OpFailed(info.pop("msg"), version=vsn, changed=True, stage="install", **{"from": old}, **info)
            raise
        if not r.get("ok") and r.get("stage") == "rehearse":
            # nothing was registered: take the files back out so the version can be retried
            undo_unpack(h, prep)
            raise OpFailed(_refusal_msg(vsn, r), stage="rehearse", changed=False, reverted=False,
                           host_version=r.get("running"), permanent=r.get("permanent"), os_pid=r.get("os_pid"),
                           unpack_ms=unpack_ms, cleaned=prep.get("cleaned"), **_rehearsal_fields(r))
        if not r.get("ok") and r.get("stage") == "old_code" and r.get("old_code_phase") == "before":
            # refused before anything was registered: the host keeps its release and its state
            undo_unpack(h, prep)
            raise OpFailed(_old_code_refusal_msg(vsn, r, a.old_code_wait), stage="old_code", changed=False,
                           reverted=False, host_version=r.get("running"), permanent=r.get("permanent"),
                           os_pid=r.get("os_pid"), unpack_ms=unpack_ms, cleaned=prep.get("cleaned"),
                           old_code_procs=r.get("old_code_procs"), **_rehearsal_fields(r))
        if not r.get("ok") and r.get("stage") == "unpack":
            undo_unpack(h, prep)
            raise OpFailed(f"release_handler refused to register {vsn}: {r.get('error')}; nothing changed",
                           host_version=r.get("running"), stage="unpack")
        h.set_sha_record(vsn, a.sha256)
        base = {"version": vsn, "from": old, "install_ms": r.get("install_ms"), "unpack_ms": unpack_ms,
                "runtime_keys": r.get("runtime_keys"), "os_pid": r.get("os_pid"), **_rehearsal_fields(r)}
        for k in ("old_code_killed", "old_code_waited", "old_code_ms", "old_code_finishing", "old_code_finishing_count",
                  "supervisors_kept", "children_changed", "paused", "quieted", "conns_closed"):
            if r.get(k):
                base[k] = r[k]
        if not r.get("ok") and r.get("stage") == "install":
            info = _after_failure(h, old, f"hot upgrade to {vsn} failed at install: {r.get('error')}",
                                  r.get("rh_pid_before"))
            raise OpFailed(info.pop("msg"), stage="install", changed=True, **dict(base, **info))
        if not r.get("ok"):
            stage = r.get("stage")
            err = (r.get("error") or "").strip().splitlines()[:2]
            if stage is None or not (_pid_alive(pid) and h.node_up()):
                # an error out of the node's script (no stage: it raised), or the node died meanwhile (e.g. a
                # process killed by the purge took its application down): never leave the host like that
                time.sleep(0.5)
                raise OpFailed(**_after_settle_failure(h, vsn, old, pid, f"the upgrade failed on the node: "
                                                       f"{' '.join(err)}", a.timeout, dict(base), stage=stage or "node"))
            reverted = r.get("running") == old and r.get("permanent") == old
            if stage in ("health", "commit", "old_code") and not r.get("reverted") and r.get("running") != old:
                rv = _revert_or_recover(h, old, a.timeout, f"hot upgrade to {vsn} failed at {stage}")
                reverted = rv.get("reverted")
                base["revert_mode"] = rv.get("mode")
            raise OpFailed(f"hot upgrade to {vsn} failed at {stage}: {r.get('error')}; "
                           + (f"reverted to {old}" if reverted else f"node runs {r.get('running')}"),
                           stage=stage, reverted=bool(reverted), host_version=old if reverted else r.get("running"),
                           changed=True, **base)
        if not r.get("changed", True):
            return dict(base, changed=False, host_version=r.get("running"))
        if not one_rpc:
            h.set_installed_record({"version": vsn, "os_pid": r.get("os_pid")})
            ok, why = run_health(h, vsn, check, a.timeout)
            if not ok:
                rv = _revert_or_recover(h, old, a.timeout, f"health check ({check[0]}) of {vsn} failed: {why}")
                raise OpFailed(f"health check ({check[0]}) of {vsn} failed: {why}; "
                               + (f"reverted to {old} ({rv.get('mode')})" if rv.get("reverted")
                                  else f"REVERT FAILED, node runs {rv.get('host_version')}"),
                               stage="health", reverted=bool(rv.get("reverted")), revert_mode=rv.get("mode"),
                               host_version=rv.get("host_version"), changed=True,
                               **dict(base, **{k: rv[k] for k in ("state_lost", "node_died", "os_pid") if k in rv}))
            try:
                c = h.rpc("commit", vsn=vsn, timeout=60)
            except OpFailed as e:
                if not e.extra.get("rpc_transport"):
                    raise
                c = {"ok": False, "error": e.msg}
            if not c.get("ok"):
                rv = _revert_or_recover(h, old, a.timeout, f"make_permanent({vsn}) failed: {c.get('error')}")
                if rv.get("node_died"):
                    msg = rv["msg"]
                else:
                    msg = f"make_permanent({vsn}) failed: {c.get('error')}; reverted={rv.get('reverted')}"
                raise OpFailed(msg, stage="commit", reverted=bool(rv.get("reverted")), revert_mode=rv.get("mode"),
                               host_version=rv.get("host_version"), changed=True,
                               **dict(base, **{k: rv[k] for k in ("state_lost", "node_died", "os_pid") if k in rv}))
        h.set_installed_record(None)
        problems = _verify_committed(h, vsn)
        if problems:
            raise OpFailed(f"{vsn} runs but the files disagree: {'; '.join(problems)}", host_version=vsn, **base)
        boot_bin(h)
        res = dict(base, changed=True, host_version=vsn, permanent=vsn)
        new_pid = r.get("os_pid") or pid
        fault_point(h, "after_commit")
        if a.keep:
            try:
                res["removed"] = do_prune(h, a.keep)
            except OpFailed as e:
                # the deploy itself is done; a prune that fails is reported, and never leaves the node down
                res["prune_error"] = e.msg
                if not (_pid_alive(new_pid) and h.node_up()):
                    raise OpFailed(**_after_settle_failure(h, vsn, old, new_pid, f"pruning old releases failed: "
                                                           f"{e.msg}", a.timeout, dict(base, **res)))
        if a.settle and a.settle > 0:
            t_settle = now_ms()
            why = _settle(h, vsn, new_pid, a.settle, check, a.timeout)
            res["settle_ms"] = round(now_ms() - t_settle, 1)
            if why:
                raise OpFailed(**_after_settle_failure(h, vsn, old, new_pid, why, a.timeout, dict(base, **res)))
        return res


def _settle(h, vsn, pid, seconds, check, timeout, what="committed"):
    """Watch the node for ``seconds`` after its commit: its OS process must stay alive, and at the end it
    must still answer and pass the health check.  None when it did, else what went wrong."""
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        if pid and not _pid_alive(pid):
            return f"the node died {round((time.monotonic() - t0) * 1000)} ms after {vsn} was {what}"
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    if not h.node_up() or (pid and not _pid_alive(pid)):
        return f"the node went down within {seconds:g} s after {vsn} was {what}"
    ok, why = run_health(h, vsn, check, timeout)
    return None if ok else f"health check ({check[0]}) failed {seconds:g} s after {vsn} was {what}: {why}"


def _after_settle_failure(h, vsn, old, pid, why, timeout, base, stage="settle"):
    """The node failed its settle window (or the upgrade failed with the node in an unknown state): bring the
    host back to ``old`` (hot over the relup while the node still runs, else OLD made permanent again and
    started cold) and say what happened."""
    if pid and _pid_alive(pid) and h.node_up():
        rv = _revert_or_recover(h, old, timeout, f"hot upgrade to {vsn}: {why}")
    else:
        if h.node_up():        # something (a service manager) started it again on the new release
            stop_node(h, timeout)
        rv = _recover_dead_node(h, old, f"hot upgrade to {vsn}: {why}", timeout=max(30, timeout),
                                when=(f"after the commit, so {old} was made permanent again" if stage == "settle"
                                      else f"during the upgrade; {old} is permanent again"))
    reverted = bool(rv.get("reverted"))
    outcome = f"reverted to {old} ({rv.get('mode')})" if reverted else f"node runs {rv.get('host_version')}"
    msg = rv.get("msg") or f"hot upgrade to {vsn}: {why}; {outcome}"
    out = dict(base, **{k: v for k, v in rv.items() if k != "msg"})
    out.update(msg=msg, stage=stage, reverted=reverted, host_version=rv.get("host_version"), changed=True)
    out.pop("permanent", None)
    return out


def already_there(h, vsn, a, recorded):
    """A rerun of a deploy the host already runs (hot or cold): refused if the package is not the one ``vsn``
    was installed from (``recorded``) or does not match its sha256; else nothing to do but prune."""
    if recorded not in (None, a.sha256):
        raise OpFailed(f"{vsn} already runs from another package (sha256 {recorded}); publish a new version",
                       host_version=vsn)
    got = sha256_file(a.package) if os.path.isfile(a.package) else None
    if got != a.sha256:
        raise OpFailed(f"package {a.package} refused: sha256 is {got}, expected {a.sha256}; nothing changed",
                       host_version=vsn)
    res = {"changed": False, "version": vsn, "host_version": vsn, "from": vsn}
    if a.keep:
        res["removed"] = do_prune(h, a.keep)
    return res


# ==================================================================================================
# full.py
# Full releases: first install, the cold switch with its revert, and rollback to a release the host
# holds (hot over the relup's down edge when it exists, cold otherwise).
# ==================================================================================================

def stage_full(h, package, sha, vsn, owner):
    """Verify the sha256 FIRST, check every entry, extract into a private staging dir.
    Returns {"staging", "rel", "members"}; the caller removes the staging dir."""
    tf, members = open_verified(package, sha, lambda m: check_full_member(m, h.app, vsn))
    with tf:
        names = {rel for _ign, rel in members}
        rel_name = f"releases/{vsn}/{h.app}.rel"
        for need in (rel_name, f"bin/{h.app}"):
            if need not in names:
                raise PackageRefused(f"package refused: {need} missing (not a full `mix release` tarball of "
                                     f"{h.app} {vsn}); nothing changed")
        rel = package_rel(tf, members, rel_name, h.app, vsn)
        pkg_libs = {r.split("/")[1] for r in names if r.startswith("lib/")}
        h.ensure_hs()
        drop_stale_staging(h)
        need, free = _space_needed(members), _space_free(h)
        if free is not None and need > free:
            raise OpFailed(f"no space left on device for {h.app} {vsn} in {h.hs} / {h.root}: the full release needs "
                           f"about {need // 1024} KB, {free // 1024} KB are free; nothing changed",
                           space_needed_kb=need // 1024, space_free_kb=free // 1024, changed=False)
        staging = os.path.join(h.hs, f"staging-{os.getpid()}")
        rmtree(staging)
        os.makedirs(staging, mode=0o700)
        try:
            safe_extract(tf, members, staging)
            # the staged entries become the node user's (lchown, no link followed); staging itself stays root's 0700
            lchown_tree_at(h.hs, os.path.basename(staging), *owner, top=False)
        except BaseException:
            rmtree(staging)
            raise
    return {"staging": staging, "rel": rel, "pkg_libs": sorted(pkg_libs),
            "erts_dirs": sorted({r.split("/")[0] for r in names if r.startswith("erts-")})}


def install_cookie(h, owner):
    """The agent's cookie (written by the module) -> releases/COOKIE, 0400, owned by the node's user; without
    one, the packaged releases/COOKIE is kept but made 0400 too (read no-follow, rewritten through a fresh
    file).  Never printed or journalled.  Returns True when the file changed."""
    src = os.path.join(h.hs, "cookie")
    data = None
    if os.path.isfile(src):
        with open(src, "rb") as fh:
            data = fh.read().strip()
    if not data:
        packaged = safe_read(h.root, "releases/COOKIE", limit=1 << 16)
        if not packaged or not packaged.strip():
            return False
        return _write_private(h.root, "releases/COOKIE", packaged, 0o400, owner)
    return _write_private(h.root, "releases/COOKIE", data, 0o400, owner, strip=True)


def place_release(h, stage, vsn, rels, owner):
    """Move what the root lacks from the staged full release: new erts-*, new lib dirs,
    releases/VSN/ (bin/ is swapped later, when the node is down).  A lib dir that a release
    in RELEASES uses is never touched.  Returns the list of paths placed."""
    st = os.path.basename(stage["staging"])
    referenced = _referenced_libs(rels)
    placed = []
    for e in stage["erts_dirs"]:
        if _lstat_at(h.root, e) is None:
            move_in(h.hs, f"{st}/{e}", h.root, e, owner)
            placed.append(e)
    for d in ("lib", "releases"):
        os.close(safe_open_dir(h.root, d, create=True, mode=0o755, owner=owner))
    for ln in stage["pkg_libs"]:
        dst = f"lib/{ln}"
        if _lstat_at(h.root, dst) is not None:
            if ln in referenced:
                continue
            safe_rmtree(h.root, dst)  # left over from an unregistered attempt
        move_in(h.hs, f"{st}/{dst}", h.root, dst, owner)
        placed.append(dst)
    rdir = f"releases/{vsn}"
    registered = any(r["version"] == vsn for r in rels or [])
    have = _lstat_at(h.root, rdir)
    if have is not None and stat.S_ISDIR(have.st_mode) and registered:
        # keep what release_handler unpacked (relup...), add what the full release has on top
        placed += copy_tree_nofollow(h.hs, f"{st}/{rdir}", h.root, rdir, owner=owner, only_missing=True)
    else:
        safe_rmtree(h.root, rdir)
        move_in(h.hs, f"{st}/{rdir}", h.root, rdir, owner)
        placed.append(rdir)
    missing = [ln for ln in _rel_libs(stage["rel"]) if not os.path.isdir(h.p("lib", ln))]
    if missing:
        raise OpFailed(f"the release needs lib dirs that are neither on the host nor in the package: "
                       f"{', '.join(missing)}")
    if not os.path.isdir(h.p(f"erts-{stage['rel']['erts']}")) and stage["erts_dirs"]:
        raise OpFailed(f"the release needs erts-{stage['rel']['erts']}, which the package does not hold")
    return placed


def cmd_first_install(h, a):
    """first-install --package P --sha256 S --version V: place a full release into a new or empty root, write
    its boot files and the service, start it and health-check it; a failed first install leaves nothing
    running and can be retried."""
    vsn = a.version
    check = parse_check(a.check)
    with Lock(h, "first-install"):
        h.ensure_hs()
        pending = os.path.join(h.hs, "first-install.json")
        retry = os.path.exists(pending)
        rels = h.releases() if os.path.isdir(h.root) and not os.path.islink(h.root) else None
        perm = permanent_version(rels)
        installed = installed_by_agent(h) or rels is not None or os.path.lexists(h.p("bin", h.app))
        if installed and not retry:
            raise OpFailed(f"{h.app} is already installed in {h.root} ({perm or 'recorded by the agent in ' + h.hs}): "
                           f"use hot/cold", host_version=perm)
        if h.node_up():
            raise OpFailed(f"a node named {h.node_name()} is already running: stop it before a first install",
                           host_version=perm)
        owner = h.tree_owner()
        check_first_install_root(h, owner, retry)
        t0 = now_ms()
        stage = stage_full(h, a.package, a.sha256, vsn, owner)
        try:
            check_first_install_root(h, owner, retry, create=True)
            safe_write(h.hs, "first-install.json", json.dumps({"version": vsn, "sha256": a.sha256, "root": h.root}),
                       mode=0o600)
            st = os.path.basename(stage["staging"])
            for name in sorted(os.listdir(stage["staging"])):  # bin, erts-*, lib, releases
                _merge_move(h, st, name, owner)
        finally:
            rmtree(stage["staging"])
        rel = stage["rel"]
        # RELEASES before the node ever starts (relocatable, as create_RELEASES("", ...) writes it)
        h.write_releases([_releases_entry(h, rel, "permanent")])
        h.write_owned(os.path.join(h.rel_dir, "start_erl.data"), f"{rel['erts']} {vsn}\n")
        install_cookie(h, owner)
        os.close(safe_open_dir(h.root, "tmp", create=True, mode=0o750, owner=owner))
        save_bin(h, vsn)
        h.set_full_sha(vsn, a.sha256)
        place_ms = round(now_ms() - t0, 1)
        t_start = now_ms()
        stage_name = "start"
        try:
            started = start_node(h, start_timeout(a.timeout))
            stage_name = "health"
            ok, why = _gate(h, vsn, check, a.timeout, started)
            if not ok:
                raise OpFailed(f"health check ({check[0]}) failed: {why}")
        except OpFailed as e:
            try:
                stop_node(h, a.timeout)
            except OpFailed as e2:
                raise OpFailed(f"first install of {vsn} failed at {stage_name}: {e.msg}; and the node did not "
                               f"stop: {e2.msg}", stage=stage_name, changed=True, node_up=h.node_up())
            raise OpFailed(f"first install of {vsn} failed at {stage_name}: {e.msg}; node stopped, files left "
                           f"in {h.root} (re-run first-install or fix and `start`)",
                           stage=stage_name, changed=True, node_up=False, host_version=None)
        os.unlink(pending)
        return {"changed": True, "version": vsn, "from": None, "host_version": started.get("running"),
                "permanent": vsn, "start_ms": round(now_ms() - t_start, 1), "place_ms": place_ms,
                "os_pid": started.get("os_pid"), "service_manager": h.service_manager,
                "retried": retry}


def _merge_move(h, st, rel, owner=None):
    """Move the staged STAGING/rel (st: the staging dir's name in the agent's directory) to ROOT/rel through
    no-follow dir fds; directories on both sides are merged, anything else at ROOT/rel is replaced (a planted
    link is removed, never followed)."""
    src = os.lstat(os.path.join(h.hs, st, rel))
    dst = _lstat_at(h.root, rel)
    if stat.S_ISDIR(src.st_mode) and dst is not None and stat.S_ISDIR(dst.st_mode):
        for name in os.listdir(os.path.join(h.hs, st, rel)):
            _merge_move(h, st, f"{rel}/{name}", owner)
        return
    if dst is not None:
        safe_rmtree(h.root, rel)
    move_in(h.hs, f"{st}/{rel}", h.root, rel, owner)


def _restore_files(h, backup):
    for name in ("RELEASES", "start_erl.data"):
        b = os.path.join(backup, name)
        if os.path.exists(b):
            with open(b, encoding="utf-8") as fh:
                h.write_owned(os.path.join(h.rel_dir, name), fh.read())


def cold_switch(h, target, prev, check, timeout, owner, new_bin=None, was_up=None, settle=0):
    """Stop the node, make `target` the release that boots (RELEASES permanent + start_erl.data,
    bin/), start, health-gate, then watch it for ``settle`` seconds (alive, and healthy at the end).
    On failure: stop, restore RELEASES/start_erl.data/bin and start `prev` again (when the node was
    up before).  Returns the result dict or raises OpFailed."""
    rels = h.releases()
    entry = next((r for r in rels or [] if r["version"] == target), None)
    if entry is None:
        raise OpFailed(f"{target} is not registered in RELEASES")
    up = h.node_up() if was_up is None else was_up
    backup = os.path.join(h.hs, "cold-backup")
    rmtree(backup)
    os.makedirs(backup, mode=0o700)
    for name in ("RELEASES", "start_erl.data"):
        data = safe_read(h.root, f"releases/{name}", limit=16 << 20)  # never through a planted link
        if data is not None:
            safe_write(backup, name, data, mode=0o600)
    prev_bin = save_bin(h, prev)
    bin_src = new_bin or os.path.join(h.hs, "bin", target)
    t_down = now_ms()
    stopped = stop_node(h, timeout) if up else {"changed": False}
    stage = "switch"
    bin_swapped = False
    try:
        _make_permanent_offline(h, target)
        bin_swapped = swap_bin(h, bin_src, owner)
        if new_bin:
            save_bin(h, target, force=True)
        install_cookie(h, owner)
        stage = "start"
        started = start_node(h, start_timeout(timeout))
        stage = "health"
        ok, why = _gate(h, target, check, timeout, started)
        if not ok:
            raise OpFailed(f"health check ({check[0]}) failed: {why}")
        if settle and settle > 0:
            stage = "settle"
            fault_point(h, "after_start")
            why = _settle(h, target, started.get("os_pid"), settle, check, timeout, what="started")
            if why:
                raise OpFailed(why)
    except OpFailed as e:
        err = f"cold switch to {target} failed at {stage}: {e.msg}"
        info = {"stage": stage, "changed": True, "from": prev, "bin_swapped": bin_swapped}
        try:
            stop_node(h, timeout)
            _restore_files(h, backup)
            if bin_swapped and prev_bin:
                swap_bin(h, prev_bin, owner)
            if not up or prev == target:
                raise OpFailed(f"{err}; files restored ({prev} permanent), node left down",
                               reverted=True, host_version=prev, node_up=False, **info)
            back = start_node(h, start_timeout(timeout))
            ok = back.get("running") == prev
        except OpFailed as e2:
            if e2.extra.get("reverted"):
                raise
            raise OpFailed(f"{err}; RESTORING {prev} FAILED: {e2.msg}", reverted=False,
                           host_version=None, node_up=h.node_up(), **info)
        raise OpFailed(f"{err}; " + (f"reverted to {prev} (cold, state lost)" if ok
                                     else f"restarted but the node runs {back.get('running')}"),
                       reverted=ok, host_version=back.get("running"), os_pid=back.get("os_pid"),
                       downtime_ms=round(now_ms() - t_down, 1), **info)
    return {"changed": True, "from": prev, "version": target, "host_version": started.get("running"),
            "permanent": target, "mode": "cold", "downtime_ms": round(now_ms() - t_down, 1) if up else None,
            "start_ms": started.get("boot_ms"), "stop_ms": stopped.get("stop_ms"),
            "os_pid": started.get("os_pid"), "bin_swapped": bin_swapped, "state_lost": bool(up),
            "service_manager": h.service_manager}


def cmd_cold(h, a):
    """cold --package P --sha256 S --version V: stop the node, switch the root to V from its full tarball,
    start it and health-check it; on failure switch back to the release it had and start that."""
    vsn = a.version
    check = parse_check(a.check)
    with Lock(h, "cold"):
        rels = h.releases()
        if rels is None:
            raise OpFailed(f"no release is installed in {h.root} (releases/RELEASES is missing): use first-install")
        running, perm, up, _pid = running_and_permanent(h, rels)
        if up and running != perm:
            raise OpFailed(f"{running} runs but {perm} is permanent (an uncommitted hot install): "
                           f"commit or revert it first", host_version=running)
        if up and perm == vsn:
            return already_there(h, vsn, a, h.full_sha(vsn))
        owner = h.tree_owner()
        t0 = now_ms()
        stage = stage_full(h, a.package, a.sha256, vsn, owner)
        try:
            entry = next((r for r in rels if r["version"] == vsn), None)
            if entry is not None and entry["status"] in ("permanent", "current") and perm != vsn:
                raise OpFailed(f"{vsn} is {entry['status']} in RELEASES but {perm} is permanent")
            placed = place_release(h, stage, vsn, rels, owner)
            if entry is None:
                relative = all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"])
                rels.insert(0, _releases_entry(h, stage["rel"], "unpacked", relative))
                h.write_releases(rels)
            h.set_full_sha(vsn, a.sha256)
            prep_ms = round(now_ms() - t0, 1)
            res = cold_switch(h, vsn, perm, check, a.timeout, owner, settle=a.settle,
                              new_bin=os.path.join(stage["staging"], "bin"), was_up=up)
        except OpFailed as e:
            e.extra.setdefault("version", vsn)
            e.extra.setdefault("from", perm)
            e.extra.setdefault("host_version", perm if not e.extra.get("changed") else None)
            raise
        finally:
            rmtree(stage["staging"])
        res.update(prep_ms=prep_ms, placed=placed)
        if a.keep:
            res["removed"] = do_prune(h, a.keep)
        return res


def _register_from_disk(h, vsn, rels):
    """A release whose files are on disk (releases/VSN/APP.rel + its lib dirs) but that RELEASES
    no longer lists: add it back as `old` so it can be booted."""
    raw = safe_read(h.root, f"releases/{vsn}/{h.app}.rel", limit=1 << 20)
    try:
        rel = parse_rel(raw.decode("utf-8")) if raw is not None else None
    except (TermError, ValueError, UnicodeDecodeError):
        rel = None
    if rel is None:
        return None
    if rel["version"] != vsn or rel["name"] != h.app:
        return None
    if any(not os.path.isdir(h.p("lib", ln)) for ln in _rel_libs(rel)) or not os.path.isdir(h.p(f"erts-{rel['erts']}")):
        return None
    relative = all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"])
    entry = _releases_entry(h, rel, "old", relative)
    rels.append(entry)
    h.write_releases(rels)
    return entry


def cmd_rollback(h, a):
    """rollback --mode hot: over the relup's down edge (cold if that attempt fails, as revert does);
    refused, with nothing changed, when the relup has no down edge to OLD or the node is down (the plan
    decided hot; the agent does not quietly go cold instead).  rollback --mode cold: a cold switch to OLD
    using only what is on disk, ending with OLD running, healthy and permanent."""
    target = a.version
    with Lock(h, "rollback"):
        rels = h.releases()
        if rels is None:
            raise OpFailed(f"no release is installed in {h.root}")
        running, perm, up, _pid = running_and_permanent(h, rels)
        down = []
        if up:
            try:
                with open(h.p("releases", running, "relup"), encoding="utf-8") as fh:
                    down = relup_edges(fh.read())[1]
            except (OSError, TermError, ValueError, UnicodeDecodeError):
                down = []
        if a.mode == "hot" and up and target in down:
            res = do_revert(h, target, a.timeout, "hot", old_code=a)
            res.setdefault("from", running)
            if not res.get("reverted"):
                raise OpFailed(f"rollback to {target} failed; node runs {res.get('host_version')}", **res)
            return dict(res, version=target)
        if up and running != perm:
            # an uncommitted hot install: the permanent release is what a restart boots anyway
            perm = perm or running
        if up and running == target and perm == target:
            return {"changed": False, "version": target, "host_version": target, "mode": "cold", "reverted": True}
        if a.mode == "hot":
            why = f"the relup of {running} has no down edge to {target}" if up else "the node is down"
            raise OpFailed(f"a hot rollback to {target} is not possible: {why}; nothing changed (roll back with "
                           f"hotswap_mode=cold or auto)", changed=False, host_version=running if up else perm)
        if not any(r["version"] == target for r in rels) and _register_from_disk(h, target, rels) is None:
            raise OpFailed(f"{target} is not on this host (RELEASES lists {', '.join(r['version'] for r in rels)}, "
                           f"and releases/{target}/ is incomplete or missing)")
        res = cold_switch(h, target, perm, parse_check(a.check), a.timeout, h.tree_owner(), was_up=up,
                          settle=a.settle)
        return dict(res, reverted=True, node_was_up=up)


# ==================================================================================================
# cli.py
# The command line: one JSON object on stdout, exit 0 (ok), 1 (operation failed), 2 (bad input); `run`
# is the same entry point for callers in the same process.
# ==================================================================================================

DESCRIPTION = "beam.hotswap host agent: moves one mix release root from one state to another."


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BadInput(message)

    def exit(self, status=0, message=None):
        if status:
            raise BadInput(message or "bad arguments")
        raise SystemExit(status)


def build_parser():
    p = Parser(prog="agent.py", description=DESCRIPTION)
    p.add_argument("--root", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--user")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name, fn, *opts):
        s = sub.add_parser(name)
        s.set_defaults(fn=fn)
        for o in opts:
            if o == "version":
                s.add_argument("--version", required=True)
            elif o == "version?":
                s.add_argument("--version")
            elif o == "package":
                s.add_argument("--package", required=True)
                s.add_argument("--sha256", required=True)
        # options common to every command (the Ansible module passes them uniformly;
        # commands that have no use for one ignore it)
        s.add_argument("--store-package", dest="store_package", metavar="FILE_NAME",
                       help="keep --package in .hotswap/packages/SHA256-FILE_NAME (moved there once verified)")
        s.add_argument("--expect-state", dest="expect_state", metavar="STATE",
                       help="refuse (stale_facts) unless the host is in this state (as `facts` reports it)")
        s.add_argument("--settings-stdin", dest="settings_stdin", action="store_true",
                       help="read {\"env\": {...}, \"cookie\": \"...\"} as JSON from stdin and write them first")
        s.add_argument("--expect-agent", dest="expect_agent", metavar="NAME=SHA256,...",
                       help="facts: report whether the installed agent files have these checksums")
        add_agent_options(s)
        return s

    add("status", cmd_status)
    add("facts", cmd_facts)
    add("unpack", cmd_unpack, "package", "version")
    add("install", cmd_install, "version")
    add("health", cmd_health, "version")
    add("commit", cmd_commit, "version")
    add("revert", cmd_revert, "version")
    add("rollback", cmd_rollback, "version").add_argument("--mode", choices=["hot", "cold"], default="hot")
    add("hot", cmd_hot, "package", "version")
    add("cold", cmd_cold, "package", "version")
    add("first-install", cmd_first_install, "package", "version")
    add("prune", cmd_prune)
    add("start", cmd_start, "version?")
    add("stop", cmd_stop)
    return p


READ_OPS = ("status", "facts")


def run(argv, settings=None):
    """Run one agent command in this process; returns (exit code, result dict).  Never raises:
    the collection's modules call this directly (no second Python start-up per command).

    ``settings`` ({"env": {...}, "cookie": "..."}; the CLI reads it from stdin with --settings-stdin)
    is written to .hotswap/ before the command runs."""
    t0 = now_ms()
    out = {"op": None, "agent_version": AGENT_VERSION}
    code = 0
    h = None
    try:
        a = build_parser().parse_args(argv)
        out["op"] = a.command
        check_app(a.app)
        if a.user is not None and not USER_RE.fullmatch(a.user):
            raise BadInput(f"invalid user {a.user!r}: give the node's own user (hotswap_user), a system user name")
        if a.user == "root":
            raise BadInput("the node may not run as root: give it a user of its own (hotswap_user)")
        if getattr(a, "version", None) is not None:
            check_vsn(a.version)
            out["version"] = a.version
        if getattr(a, "sha256", None) is not None:
            a.sha256 = check_sha(a.sha256)
        if getattr(a, "package", None) is not None:
            a.package = os.path.abspath(a.package)
        if getattr(a, "keep", None) is not None and a.keep < 1:
            raise BadInput("--keep must be >= 1")
        if not (0 < a.timeout <= 3600):
            raise BadInput("--timeout must be in (0, 3600]")
        if (not os.path.isabs(a.root) or os.path.normpath(a.root) in ("/", "//") or ".." in a.root.split("/")
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in a.root)):
            raise BadInput(f"--root must be an absolute path below / without '..' (got {a.root!r})")
        if a.settings_stdin and settings is None:
            try:
                settings = json.loads(sys.stdin.read() or "{}")
            except ValueError as e:
                raise BadInput(f"--settings-stdin: not JSON ({e})")
        settings = dict(settings or {})
        if settings.get("check"):
            a.check = settings["check"]
        settings.pop("check", None)
        if getattr(a, "check", None) is not None:
            parse_check(a.check)
        if a.command == "first-install" and a.user and ensure_user(a.user):
            out["user_created"] = a.user
        h = Host(a.root, a.app, a.user)
        if is_system_dir(h.root):
            raise BadInput(f"hotswap_root {h.root} is a system directory: a release root is a directory of its own "
                           f"(for example /opt/{a.app}); nothing was changed")
        h.check_parents()
        h.service_manager = resolve_service_manager(a.service_manager)
        if a.command == "first-install" and not os.path.lexists(h.root):
            # a new release root: the node user's, 0750 (its parents are root's: check_parents)
            pw = h.run_pw()
            os.mkdir(h.root, 0o750)
            os.lchown(h.root, pw.pw_uid, pw.pw_gid)
        if a.command not in READ_OPS and not os.path.isdir(h.root):
            raise OpFailed(f"release root {h.root} does not exist")
        if a.expect_state is not None:
            now = state_key(h)
            if now != a.expect_state:
                raise OpFailed(f"the host changed since its facts were read ({a.expect_state} -> {now}); "
                               "nothing was done", stale_facts=True, changed=False)
        # the settings and the package are written under the root's lock, which the command then keeps
        # (a second agent, refused by the lock, writes nothing)
        # (a noop deploy is `status` with settings: it writes them too, under the lock)
        writes = a.command not in READ_OPS or any(settings.values())
        with (Lock(h, a.command) if writes else contextlib.nullcontext()):
            if any(settings.values()):
                out["settings_changed"] = apply_settings(h, settings)
            if a.command not in READ_OPS and h.service_manager == "systemd" and \
                    os.path.exists(os.path.join(SYSTEMD_UNIT_DIR, unit_name(h.app))) and ensure_unit(h):
                # a unit written by an earlier agent (its EnvironmentFile in ROOT/.hotswap, ExecStop): the node
                # keeps running; its next start uses this one
                h.repaired.append(f"rewrote {unit_name(h.app)} (daemon-reload, no restart)")
            if a.store_package:
                if not getattr(a, "package", None):
                    raise BadInput("--store-package needs --package")
                a.package = store_package(h, a.package, a.sha256, a.store_package)
            res = a.fn(h, a)
        out.update(res)
        out.setdefault("changed", False)
        out["failed"] = False
    except BadInput as e:
        code = 2
        out.update(failed=True, changed=False, msg=f"bad input: {e}")
    except OpFailed as e:
        code = 1
        out.update(e.extra)
        out.update(failed=True, msg=e.msg)
        out.setdefault("changed", False)
    except Exception as e:  # no tracebacks to the user
        code = 1
        out.update(failed=True, changed=out.get("changed", False),
                   msg=f"internal error: {type(e).__name__}: {e}")
    if h is not None:
        if h.repaired:
            out.setdefault("repaired", h.repaired)
        out["rpc_calls"] = h.rpc_calls
        out["rpc_ms"] = round(h.rpc_ms, 1)
    out["total_ms"] = round(now_ms() - t0, 1)
    if "host_version" not in out and h is not None and out.get("op") not in READ_OPS and code != 2:
        try:
            rels = h.releases() or []
            out["host_version"] = permanent_version(rels)
        except Exception:
            pass
    if h is not None and code != 2 and "env_pending_restart" not in out:
        try:
            out["env_pending_restart"] = h.env_pending()
        except Exception:
            pass
    out["result"] = "bad_input" if code == 2 else ("failed" if code else ("ok" if out.get("changed") else "noop"))
    # the journal records operations on the release root; a read (status) changes nothing and is not one
    if h is not None and code != 2 and out.get("op") not in READ_OPS and not out.get("stale_facts"):
        journal(h, out)
    return code, out


def main(argv=None):
    code, out = run(argv)
    sys.stdout.write(json.dumps(out, sort_keys=True, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
