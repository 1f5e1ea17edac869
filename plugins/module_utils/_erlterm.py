# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write and read Erlang terms as text (``.appup``, ``.rel``, ``RELEASES``), in pure Python.

Atoms are :class:`Atom` (a ``str`` subclass); Erlang strings are ``str``; binaries are ``bytes``;
tuples are ``tuple``; lists are ``list``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.beam.hotswap.plugins.module_utils._beam import Atom


class TermError(ValueError):
    """Text that is not a term we can read."""


def _quote(s, q):
    out = []
    for ch in s:
        if ch == "\\" or ch == q:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32:
            out.append("\\%03o" % ord(ch))
        else:
            out.append(ch)
    return q + "".join(out) + q


def to_erl(term):
    """Render a Python value as Erlang term text."""
    if isinstance(term, Atom):
        return _quote(term, "'")
    if isinstance(term, bool):
        return "true" if term else "false"
    if isinstance(term, str):
        return _quote(term, '"')
    if isinstance(term, bytes):
        return "<<" + _quote(term.decode("utf-8"), '"') + ">>"
    if isinstance(term, int):
        return str(term)
    if isinstance(term, tuple):
        return "{" + ",".join(to_erl(t) for t in term) + "}"
    if isinstance(term, list):
        return "[" + ",".join(to_erl(t) for t in term) + "]"
    raise TypeError("cannot render %r as an Erlang term" % (term,))


_TOKEN = re.compile(r"""
    (?P<ws>\s+|%[^\n]*)
  | (?P<punct>[{}\[\],|]|<<|>>)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<qatom>'(?:[^'\\]|\\.)*')
  | (?P<num>-?\d+(?:\.\d+(?:[eE][-+]?\d+)?)?)
  | (?P<atom>[a-z][A-Za-z0-9_@]*)
  | (?P<end>\.(?=\s|%|$))
""", re.VERBOSE)

_ESC = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "\\": "\\", "'": "'", '"': '"'}


def _unquote(s):
    out = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt in "01234567":
                m = re.match(r"[0-7]{1,3}", s[i + 1:])
                out.append(chr(int(m.group(0), 8)))
                i += 1 + len(m.group(0))
                continue
            out.append(_ESC.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _tokens(text):
    pos = 0
    toks = []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise TermError("unexpected text at offset %d: %r" % (pos, text[pos:pos + 20]))
        pos = m.end()
        kind = m.lastgroup
        if kind != "ws":
            toks.append((kind, m.group(kind)))
    return toks


def parse_terms(text):
    """Parse ``Term1. Term2. ...`` (as ``file:consult/1`` reads) into a list of Python values."""
    toks = _tokens(text)
    pos = 0
    out = []

    def value(p):
        kind, tok = toks[p]
        if kind == "punct" and tok in ("{", "["):
            close = "}" if tok == "{" else "]"
            items = []
            p += 1
            if toks[p] == ("punct", close):
                return (tuple(items) if close == "}" else items), p + 1
            while True:
                item, p = value(p)
                items.append(item)
                k, t = toks[p]
                if t == ",":
                    p += 1
                    continue
                if t == "|" and close == "]":
                    tail, p = value(p + 1)
                    items.extend(tail if isinstance(tail, list) else [tail])
                    k, t = toks[p]
                if t == close:
                    return (tuple(items) if close == "}" else items), p + 1
                raise TermError("expected , or %s, got %r" % (close, t))
        if kind == "punct" and tok == "<<":
            k, t = toks[p + 1]
            if t == ">>":
                return b"", p + 2
            if k != "str" or toks[p + 2][1] != ">>":
                raise TermError("only <<\"text\">> binaries are supported")
            return _unquote(t[1:-1]).encode("utf-8"), p + 3
        if kind == "str":
            s = _unquote(tok[1:-1])
            # adjacent string literals concatenate
            while p + 1 < len(toks) and toks[p + 1][0] == "str":
                p += 1
                s += _unquote(toks[p][1][1:-1])
            return s, p + 1
        if kind == "qatom":
            return Atom(_unquote(tok[1:-1])), p + 1
        if kind == "atom":
            return Atom(tok), p + 1
        if kind == "num":
            return (float(tok) if "." in tok else int(tok)), p + 1
        raise TermError("unexpected %r" % tok)

    try:
        while pos < len(toks):
            term, pos = value(pos)
            if pos >= len(toks) or toks[pos][0] != "end":
                raise TermError("a term must end with a full stop")
            pos += 1
            out.append(term)
    except IndexError:
        raise TermError("the text ends in the middle of a term")
    return out
