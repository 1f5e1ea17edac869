# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read what hot upgrades need to know from compiled ``.beam`` files, in pure Python.

A BEAM file is an IFF container. We read the atom table, the import and export tables and the
attributes (an Erlang external-term-format binary), and compute a digest over the chunks that
define what the code does (the same set ``beam_lib:md5/1`` uses), so "changed" is decided from the
compiled code and never from timestamps or source paths.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import hashlib
import os
import struct
import zlib

from ansible_collections.beam.hotswap.plugins.module_utils._agent.erlterms import Atom

# Chunks that define behaviour; debug info, docs, line tables and compile info are left out.
CODE_CHUNKS = ("Atom", "AtU8", "Code", "StrT", "ImpT", "ExpT", "FunT", "LitT", "Meth")

SUPERVISOR_BEHAVIOURS = frozenset(["supervisor", "Elixir.Supervisor"])


class BeamError(ValueError):
    """A file is not a readable BEAM module."""


def _chunks(data, path):
    if len(data) < 12 or data[0:4] != b"FOR1" or data[8:12] != b"BEAM":
        raise BeamError("%s is not a BEAM file (no FOR1/BEAM header)" % path)
    pos = 12
    chunks = {}
    while pos + 8 <= len(data):
        cid = data[pos:pos + 4].decode("latin-1")
        size = struct.unpack(">I", data[pos + 4:pos + 8])[0]
        chunks[cid] = data[pos + 8:pos + 8 + size]
        pos += 8 + ((size + 3) & ~3)
    return chunks


def _read_compact_len(buf, pos):
    """Decode the compact-term length used by OTP 26+ atom tables; returns (value, new_pos)."""
    b = buf[pos]
    if b & 0x08 == 0:
        return b >> 4, pos + 1
    if b & 0x10 == 0:
        return ((b & 0xE0) << 3) | buf[pos + 1], pos + 2
    raise BeamError("unsupported compact length in atom table")


def _atoms(chunks, path):
    raw = chunks.get("AtU8")
    enc = "utf-8"
    if raw is None:
        raw = chunks.get("Atom")
        enc = "latin-1"
    if raw is None:
        raise BeamError("%s has no atom table" % path)
    count = struct.unpack(">i", raw[0:4])[0]
    pos = 4
    atoms = [None]  # atom indices are 1-based
    if count >= 0:
        for _dummy in range(count):
            n = raw[pos]
            atoms.append(raw[pos + 1:pos + 1 + n].decode(enc))
            pos += 1 + n
    else:
        for _dummy in range(-count):
            n, pos = _read_compact_len(raw, pos)
            atoms.append(raw[pos:pos + n].decode(enc))
            pos += n
    return atoms


def _table(raw, width):
    if not raw:
        return []
    count = struct.unpack(">I", raw[0:4])[0]
    return [struct.unpack(">" + "I" * width, raw[4 + i * 4 * width:4 + (i + 1) * 4 * width]) for i in range(count)]


# --- external term format ---------------------------------------------------------------------

def decode_term(data):
    """Decode an Erlang external-term-format binary (the subset attributes use)."""
    if not data or data[0] != 131:
        raise BeamError("not an external term (missing version byte 131)")
    if data[1] == 80:  # compressed
        inner = zlib.decompress(data[6:])
        term, _end = _dec(inner, 0)
        return term
    term, _end = _dec(data, 1)
    return term


def _dec(b, p):
    tag = b[p]
    p += 1
    if tag == 97:  # SMALL_INTEGER
        return b[p], p + 1
    if tag == 98:  # INTEGER
        return struct.unpack(">i", b[p:p + 4])[0], p + 4
    if tag in (100, 118):  # ATOM_EXT, ATOM_UTF8_EXT
        n = struct.unpack(">H", b[p:p + 2])[0]
        return Atom(b[p + 2:p + 2 + n].decode("utf-8" if tag == 118 else "latin-1")), p + 2 + n
    if tag in (115, 119):  # SMALL_ATOM(_UTF8)
        n = b[p]
        return Atom(b[p + 1:p + 1 + n].decode("utf-8" if tag == 119 else "latin-1")), p + 1 + n
    if tag in (104, 105):  # SMALL/LARGE_TUPLE
        if tag == 104:
            n, p = b[p], p + 1
        else:
            n, p = struct.unpack(">I", b[p:p + 4])[0], p + 4
        items = []
        for _dummy in range(n):
            item, p = _dec(b, p)
            items.append(item)
        return tuple(items), p
    if tag == 106:  # NIL
        return [], p
    if tag == 107:  # STRING_EXT: a list of bytes
        n = struct.unpack(">H", b[p:p + 2])[0]
        return list(b[p + 2:p + 2 + n]), p + 2 + n
    if tag == 108:  # LIST
        n = struct.unpack(">I", b[p:p + 4])[0]
        p += 4
        items = []
        for _dummy in range(n):
            item, p = _dec(b, p)
            items.append(item)
        tail, p = _dec(b, p)
        if tail != []:
            items.append(tail)  # improper list: keep the tail as the last element
        return items, p
    if tag == 109:  # BINARY
        n = struct.unpack(">I", b[p:p + 4])[0]
        return bytes(b[p + 4:p + 4 + n]), p + 4 + n
    if tag == 77:  # BIT_BINARY
        n = struct.unpack(">I", b[p:p + 4])[0]
        return bytes(b[p + 5:p + 5 + n]), p + 5 + n
    if tag in (110, 111):  # SMALL/LARGE_BIG
        if tag == 110:
            n, p = b[p], p + 1
        else:
            n, p = struct.unpack(">I", b[p:p + 4])[0], p + 4
        sign = b[p]
        value = int.from_bytes(b[p + 1:p + 1 + n], "little")
        return (-value if sign else value), p + 1 + n
    if tag == 70:  # NEW_FLOAT
        return struct.unpack(">d", b[p:p + 8])[0], p + 8
    if tag == 116:  # MAP
        n = struct.unpack(">I", b[p:p + 4])[0]
        p += 4
        out = {}
        for _dummy in range(n):
            k, p = _dec(b, p)
            v, p = _dec(b, p)
            try:
                out[k] = v
            except TypeError:
                out[repr(k)] = v
        return out, p
    if tag == 113:  # EXPORT_EXT fun M:F/A
        m, p = _dec(b, p)
        f, p = _dec(b, p)
        a, p = _dec(b, p)
        return ("fun", m, f, a), p
    raise BeamError("unsupported external term tag %d" % tag)


# --- modules ----------------------------------------------------------------------------------

class BeamInfo(object):
    """What one compiled module tells us."""

    __slots__ = ("name", "path", "digest", "exports", "imports", "behaviours", "vsn")

    def __init__(self, name, path, digest, exports, imports, behaviours, vsn):
        self.name = name
        self.path = path
        self.digest = digest
        self.exports = exports
        self.imports = imports
        self.behaviours = behaviours
        self.vsn = vsn

    @property
    def is_supervisor(self):
        return bool(self.behaviours & SUPERVISOR_BEHAVIOURS)

    @property
    def has_code_change(self):
        """gen_server/gen_event/Elixir behaviours export code_change/3, gen_statem code_change/4."""
        return ("code_change", 3) in self.exports or ("code_change", 4) in self.exports

    @property
    def is_protocol(self):
        return ("__protocol__", 1) in self.exports

    def __repr__(self):
        return "BeamInfo(%s)" % self.name


def read_beam(path):
    """Read one ``.beam`` file into a :class:`BeamInfo`."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":   # a compressed module (relx's prod mode, erlc +compressed): the loader takes it
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise BeamError("%s is a damaged compressed BEAM file: %s" % (path, e))
    chunks = _chunks(data, path)
    atoms = _atoms(chunks, path)
    try:
        name = atoms[1]
        exports = frozenset((atoms[f], a) for f, a, _label in _table(chunks.get("ExpT"), 3))
        imports = frozenset(atoms[m] for m, _f, _a in _table(chunks.get("ImpT"), 3))
    except (IndexError, struct.error) as e:
        raise BeamError("%s has a malformed import/export table: %s" % (path, e))
    attrs = []
    if chunks.get("Attr"):
        attrs = decode_term(chunks["Attr"])
    behaviours = set()
    vsn = None
    for item in attrs if isinstance(attrs, list) else []:
        if not (isinstance(item, tuple) and len(item) == 2):
            continue
        key, value = item
        if key in ("behaviour", "behavior") and isinstance(value, list):
            behaviours.update(str(v) for v in value if isinstance(v, str))
        elif key == "vsn":
            vsn = repr(value)
    h = hashlib.sha256()
    for cid in CODE_CHUNKS:
        if cid in chunks:
            h.update(cid.encode("ascii"))
            h.update(struct.pack(">I", len(chunks[cid])))
            h.update(chunks[cid])
    return BeamInfo(name, path, h.hexdigest(), exports, imports - {name}, frozenset(behaviours), vsn)


def read_ebin(ebin_dir):
    """Read every ``.beam`` in a directory; returns ``{module_name: BeamInfo}``."""
    out = {}
    if not os.path.isdir(ebin_dir):
        return out
    for fn in sorted(os.listdir(ebin_dir)):
        if fn.endswith(".beam"):
            info = read_beam(os.path.join(ebin_dir, fn))
            out[info.name] = info
    return out


# --- what a process module's debug info tells about its state ------------------------------------

PROCESS_BEHAVIOURS = frozenset(["gen_server", "gen_statem", "gen_event", "Elixir.GenServer"])


class StateInfo(object):
    """What the debug info of a process module says about the state its processes hold.

    ``init``: a digest of ``init/1`` with line numbers and other metadata left out (None: no init/1);
    ``code_change``: ``"absent"``, ``"passthrough"`` (every clause returns the state it was given, as the default
    of ``use GenServer`` does) or ``"custom"``; ``shapes``: the state shapes ``init/1`` returns literally
    (``{ok, #{k => ...}}``, ``{ok, #rec{}}``, ``{:ok, %{k: ...}}``, ``{:ok, %Struct{}}``), as readable strings."""

    __slots__ = ("init", "code_change", "shapes")

    def __init__(self, init, code_change, shapes):
        self.init, self.code_change, self.shapes = init, code_change, frozenset(shapes)

    def to_json(self):
        return {"init": self.init, "code_change": self.code_change, "shapes": sorted(self.shapes)}

    @classmethod
    def from_json(cls, d):
        return cls(d.get("init"), d.get("code_change"), d.get("shapes") or ())


def state_infos(ebin_dir):
    """{module: :class:`StateInfo`} of the process modules (gen_server, gen_statem, gen_event, GenServer) compiled
    into ``ebin_dir`` with debug info (a release's own copies are stripped of it: read the build's)."""
    out = {}
    for name, info in read_ebin(ebin_dir).items():
        if info.behaviours & PROCESS_BEHAVIOURS and not info.is_supervisor:
            st = read_state_info(info.path)
            if st is not None:
                out[name] = st
    return out


def _is_anno(x):
    return isinstance(x, int) or (isinstance(x, tuple) and len(x) == 2 and all(isinstance(i, int) for i in x)) or (
        isinstance(x, list) and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], Atom) for i in x))


def _strip(t):
    """A term without its metadata (Erlang annotations, Elixir AST metadata), so that two compilations of the same
    code compare equal."""
    if isinstance(t, tuple):
        if len(t) >= 3 and isinstance(t[0], Atom) and _is_anno(t[1]):
            return (t[0], None) + tuple(_strip(x) for x in t[2:])          # an Erlang form {Tag, Anno, ...}
        if len(t) == 3 and isinstance(t[1], list) and _is_anno(t[1]):
            return (_strip(t[0]), None, _strip(t[2]))                     # Elixir AST {Form, Meta, Args}
        if len(t) == 4 and isinstance(t[0], list) and _is_anno(t[0]):
            return (None,) + tuple(_strip(x) for x in t[1:])              # an Elixir clause {Meta, Args, Guards, Body}
        return tuple(_strip(x) for x in t)
    if isinstance(t, list):
        return [_strip(x) for x in t]
    if isinstance(t, dict):
        return sorted((repr(k), _strip(v)) for k, v in t.items())
    return t


def _walk(t):
    yield t
    if isinstance(t, (tuple, list)):
        for x in t:
            yield from _walk(x)


def _erl_state(forms):
    funs = dict(((f[2], f[3]), f[4]) for f in forms
                if isinstance(f, tuple) and len(f) == 5 and f[0] == "function")
    records = dict((f[3][0], [_erl_field(x) for x in f[3][1]]) for f in forms
                   if isinstance(f, tuple) and len(f) == 4 and f[0] == "attribute" and f[2] == "record"
                   and isinstance(f[3], tuple) and len(f[3]) == 2)
    init = funs.get(("init", 1))
    shapes = set()
    for node in _walk(init or []):
        if isinstance(node, tuple) and len(node) == 3 and node[0] == "tuple" and isinstance(node[2], list) \
                and len(node[2]) >= 2 and node[2][0][:1] == ("atom",) and node[2][0][2] == "ok":
            st = node[2][1]
            if isinstance(st, tuple) and st[:1] == ("record",) and len(st) == 4:
                shapes.add("#%s{%s}" % (st[2], ", ".join(records.get(st[2], ["?"]))))
            elif isinstance(st, tuple) and st[:1] == ("map",) and len(st) == 3:
                keys = [f[2][2] for f in st[2] if isinstance(f, tuple) and len(f) == 4 and f[2][:1] == ("atom",)]
                if len(keys) == len(st[2]):
                    shapes.add("#{%s}" % ", ".join(sorted(keys)))
    cc = funs.get(("code_change", 3)) or funs.get(("code_change", 4))
    return (_digest(init), _erl_code_change(cc), shapes)


def _erl_field(f):
    if isinstance(f, tuple) and f[:1] == ("typed_record_field",):
        f = f[1]
    return str(f[2][2]) if isinstance(f, tuple) and len(f) >= 3 and isinstance(f[2], tuple) else "?"


def _erl_code_change(clauses):
    if clauses is None:
        return "absent"
    for c in clauses:
        pats, body = c[2], c[4]
        if len(body) != 1 or not isinstance(body[0], tuple) or body[0][:1] != ("tuple",):
            return "custom"
        want = [("atom", "ok")] + [("var", p[2]) for p in pats[1:len(pats) - 1]
                                   if isinstance(p, tuple) and p[:1] == ("var",)]
        got = [(e[0], e[2]) for e in body[0][2] if isinstance(e, tuple) and len(e) == 3]
        if len(want) != len(pats) - 1 or got != want:
            return "custom"
    return "passthrough"


def _ex_state(defs, module, struct):
    fns = dict((d[0], d[3]) for d in defs if isinstance(d, tuple) and len(d) == 4 and isinstance(d[0], tuple))
    init = fns.get(("init", 1))
    shapes = set()
    for node in _walk(init or []):
        st = None
        if isinstance(node, tuple) and len(node) == 2 and node[0] == "ok":
            st = node[1]
        elif isinstance(node, tuple) and len(node) == 3 and node[0] == "{}" and isinstance(node[2], list) \
                and len(node[2]) >= 2 and node[2][0] == "ok":
            st = node[2][1]
        if not isinstance(st, tuple) or len(st) != 3:
            continue
        pairs = st[2] if isinstance(st[2], list) else []
        if st[0] == "%{}" and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], Atom) for p in pairs):
            shapes.add("%%{%s}" % ", ".join(sorted(str(p[0]) for p in st[2])))
        elif st[0] == "%" and isinstance(st[2], list) and len(st[2]) == 2 and isinstance(st[2][0], Atom):
            fields = [str(f.get("field")) for f in struct or [] if isinstance(f, dict)] if st[2][0] == module else ["..."]
            shapes.add("%%%s{%s}" % (str(st[2][0]).replace("Elixir.", ""), ", ".join(sorted(fields))))
    cc = fns.get(("code_change", 3))
    return (_digest(init), _ex_code_change(cc), shapes)


def _ex_code_change(clauses):
    if clauses is None:
        return "absent"
    for c in clauses:
        if not (isinstance(c, tuple) and len(c) == 4 and isinstance(c[1], list) and len(c[1]) == 3):
            return "custom"
        var, body = c[1][1], c[3]
        if not (isinstance(var, tuple) and len(var) == 3 and isinstance(body, tuple) and len(body) == 2
                and body[0] == "ok" and isinstance(body[1], tuple) and len(body[1]) == 3
                and (body[1][0], body[1][2]) == (var[0], var[2])):
            return "custom"
    return "passthrough"


def _digest(code):
    if code is None:
        return None
    return hashlib.sha256(repr(_strip(code)).encode("utf-8")).hexdigest()


def read_state_info(path):
    """:class:`StateInfo` of the module in ``path`` from its debug info (Erlang abstract code or Elixir's), or None
    when it has none this reader understands (then nothing is claimed about it)."""
    try:
        with open(path, "rb") as f:
            chunks = _chunks(f.read(), path)
        if "Dbgi" not in chunks:
            return None
        dbgi = decode_term(chunks["Dbgi"])
        if not (isinstance(dbgi, tuple) and len(dbgi) == 3 and dbgi[0] == "debug_info_v1"):
            return None
        if dbgi[1] == "erl_abstract_code" and isinstance(dbgi[2], tuple) and isinstance(dbgi[2][0], list):
            return StateInfo(*_erl_state(dbgi[2][0]))
        if dbgi[1] == "elixir_erl" and isinstance(dbgi[2], tuple) and len(dbgi[2]) >= 2 and isinstance(dbgi[2][1], dict):
            meta = dbgi[2][1]
            return StateInfo(*_ex_state(meta.get(Atom("definitions")) or [], meta.get(Atom("module")),
                                        meta.get(Atom("struct"))))
    except (BeamError, IndexError, TypeError, ValueError, KeyError, OSError, zlib.error, struct.error, RecursionError):
        return None
    return None
