"""Erlang terms, for the agent and the controller alike: a reader for the files release_handler, mix and
relx write (RELEASES, .rel, .appup, relup, start_erl.data, sys.config; maps, `base#`, `$c` included) and a
writer whose output `file:consult` reads back.

Atoms are :class:`Atom` (a ``str`` subclass); Erlang strings are ``str``; binaries are ``bytes``; tuples
are ``tuple``; lists are ``list``; maps are ``dict``.

Versions and lib dir names read from RELEASES and .rel files become paths on the host: ``parse_releases`` and
``parse_rel`` refuse (ValueError naming the entry) a release or ERTS version that is not a valid version and a
lib dir that is not a plain NAME-VSN name, so nothing like ``1.0.0/../../x`` ever reaches a path.
"""

import re

from .names import valid_version


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
