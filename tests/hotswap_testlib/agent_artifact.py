"""The host agent as a host receives it (roles/agent/files/hotswap_agent.py, loaded as the module ``ag``),
and the roots, packages and CLI runs that the agent's unit tests build on."""
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

AGENT_PATH = Path(__file__).resolve().parents[2] / "roles" / "agent" / "files" / "hotswap_agent.py"


def _load():
    spec = importlib.util.spec_from_file_location("hotswap_agent", AGENT_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ag = _load()


RELEASES = """%% coding: utf-8
[{release,"demo","2.0.0","13.1.5",
          [{kernel,"8.5.3","/opt/demo/lib/kernel-8.5.3"},
           {demo,"2.0.0","/opt/demo/lib/demo-2.0.0"}],
          unpacked},
 {release,"demo","1.0.0","13.1.5",
          [{kernel,"8.5.3","lib/kernel-8.5.3"},
           {'my app',"1.0.0","lib/my app-1.0.0"}],
          permanent}].
"""


REL = """%% coding: utf-8
{release,{"demo","2.0.0"},
         {erts,"13.1.5"},
         [{kernel,"8.5.3"},
          {stdlib,"4.2"},
          {demo,"2.0.0",permanent},
          {iex,"1.14.0",load}]}.
"""


def _member(name, kind=tarfile.REGTYPE, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    return ti


def _host(tmp_path):
    (tmp_path / "releases").mkdir(exist_ok=True)
    return ag.Host(str(tmp_path), "demo")


def _cli(tmp_path, *args):
    p = subprocess.run([sys.executable, str(AGENT_PATH), "--root", str(tmp_path), "--app", "demo", *args],
                       capture_output=True, text=True, timeout=30, check=False)
    return p.returncode, json.loads(p.stdout), p.stderr


def _full_tarball(path, vsn="1.0.0", extra=()):
    rel = ('{release,{"demo","%s"},{erts,"13.1.5"},[{kernel,"8.5.3"},{demo,"%s",permanent}]}.\n' % (vsn, vsn))
    files = {"bin/demo": b"#!/bin/sh\n", f"releases/{vsn}/demo.rel": rel.encode(), f"releases/{vsn}/vm.args": b"",
             "releases/COOKIE": b"PACKAGED", "releases/start_erl.data": f"13.1.5 {vsn}".encode(),
             "lib/kernel-8.5.3/ebin/kernel.app": b"", f"lib/demo-{vsn}/ebin/demo.app": b"",
             "erts-13.1.5/bin/erl": b""}
    with tarfile.open(path, "w:gz") as tf:
        for name, data in list(files.items()) + list(extra):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o755
            tf.addfile(ti, io.BytesIO(data))
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


RELUP = r'''%% coding: utf-8
{"2.0.0",
 [{"1.0.0",[],
   [{load_object_code,{sample,"2.0.0",['Elixir.Sample.Audit']}},
    point_of_no_return,
    {apply,{'Elixir.Code',eval_string,
                          [<<"\ntry do\n  x = :\"a}b]\"\n  y = ?\\\"\n"
                             "end\n">>]}}]},
  {"1.5.0",[],[]}],
 [{"1.0.0",[],
   [{apply,{'Elixir.Code',eval_string,[<<"{[\"}">>]}},
    {purge,['Elixir.Sample.Audit']}]}]}.
'''


def _journal(tmp_path, entries):
    h = _host(tmp_path)
    h.ensure_hs()
    for e in entries:
        ag.journal(h, e)
    return h


def _rels(*pairs):
    return [{"version": v, "status": s} for v, s in pairs]


def _disk_release(root, vsn, erts="13.1.5", complete=True):
    rel = ('{release,{"demo","%s"},{erts,"%s"},[{kernel,"8.5.3"},{demo,"%s"}]}.\n' % (vsn, erts, vsn))
    d = root / "releases" / vsn
    d.mkdir(parents=True, exist_ok=True)
    (d / "demo.rel").write_text(rel)
    (d / "start.boot").write_bytes(b"boot")
    (root / "lib" / "kernel-8.5.3").mkdir(parents=True, exist_ok=True)
    (root / f"erts-{erts}").mkdir(exist_ok=True)
    if complete:
        (root / "lib" / f"demo-{vsn}").mkdir(parents=True, exist_ok=True)


def _upgrade_pkg(path, vsn="2.0.0", payload=b"x" * 5000, extra=()):
    rel = ('{release,{"demo","%s"},{erts,"13.1.5"},[{kernel,"8.5.3"},{demo,"%s"}]}.\n' % (vsn, vsn)).encode()
    with tarfile.open(path, "w:gz") as tf:
        for name, data in ((f"releases/demo-{vsn}.rel", rel), (f"releases/{vsn}/demo.rel", rel),
                           (f"lib/demo-{vsn}/ebin/demo.app", payload)) + tuple(extra):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _root_v1(tmp_path):
    root = tmp_path / "root"
    _disk_release(root, "1.0.0")
    h = ag.Host(str(root), "demo")
    h.write_releases([ag._releases_entry(h, ag.parse_rel((root / "releases/1.0.0/demo.rel").read_text()),
                                         "permanent")])
    h.ensure_hs()
    return root, h
