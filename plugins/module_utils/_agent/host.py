"""One release root on one host (`Host`): its paths and records (RELEASES, start_erl.data, releases/),
the run user, and the node transport: erl_call (or the `bin/APP rpc` fallback) running node.exs
phases on the live node, with values passed as Elixir literals.
"""

import base64
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile

from .errors import BadInput, now_ms, OpFailed
from .names import vsn_key
from .erlterms import format_releases, parse_releases, TermError
from .files import epmd_names, parse_env


def ex_lit(v):
    """Python value -> Elixir literal (str/int/bool/None/list/dict with str keys)."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            o = ord(ch)
            if ch in '"\\#':
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif o < 0x20 or o == 0x7F or 0xD800 <= o <= 0xDFFF:
                out.append("\\u{%x}" % (o if not 0xD800 <= o <= 0xDFFF else 0xFFFD))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(ex_lit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "%{" + ", ".join(ex_lit(str(k)) + " => " + ex_lit(x) for k, x in v.items()) + "}"
    raise BadInput(f"cannot pass {type(v).__name__} to the node")


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
        self.hs = os.path.join(self.root, ".hotswap")
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

    def ensure_hs(self):
        os.makedirs(self.hs, mode=0o750, exist_ok=True)
        for d in ("packages", "unpacked"):
            os.makedirs(os.path.join(self.hs, d), mode=0o750, exist_ok=True)

    def env_file(self):
        f = os.path.join(self.hs, "env")
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

    def node_name(self):
        return self.env_file().get("RELEASE_NODE") or self.app

    def releases(self):
        f = os.path.join(self.rel_dir, "RELEASES")
        if not os.path.exists(f):
            return None
        try:
            with open(f, encoding="utf-8") as fh:
                return parse_releases(fh.read())
        except (OSError, TermError, ValueError) as e:
            raise OpFailed(f"cannot parse {f}: {e}")

    def owner(self):
        st = os.stat(self.rel_dir)
        return st.st_uid, st.st_gid

    def tree_owner(self):
        """(uid, gid) the release tree belongs to: --user's, else the releases dir's, else ours."""
        if self._pw:
            return self._pw.pw_uid, self._pw.pw_gid
        if os.path.isdir(self.rel_dir):
            return self.owner()
        return os.geteuid(), os.getegid()

    def _read_record(self, vsn, suffix):
        """The package checksum recorded for ``vsn`` in ``.hotswap/unpacked/VSN<suffix>``, or None."""
        try:
            with open(os.path.join(self.hs, "unpacked", vsn + suffix)) as fh:
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
        tmp = path + ".hotswap-tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if os.geteuid() == 0:
            os.chown(tmp, *self.owner())
        os.replace(tmp, path)

    def write_releases(self, rels):
        self.write_owned(os.path.join(self.rel_dir, "RELEASES"), format_releases(rels))

    def start_erl(self):
        f = os.path.join(self.rel_dir, "start_erl.data")
        try:
            with open(f) as fh:
                parts = fh.read().split()
            return {"erts": parts[0], "version": parts[1]} if len(parts) >= 2 else None
        except OSError:
            return None

    def sha_record(self, vsn):
        return self._read_record(vsn, ".sha256")

    def set_sha_record(self, vsn, sha):
        self._write_record(vsn, ".sha256", sha)

    def installed_record(self):
        try:
            with open(os.path.join(self.hs, "installed.json")) as fh:
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
        if as_user and self._pw and os.geteuid() == 0 and self._pw.pw_uid != 0:
            kw.update(user=self._pw.pw_uid, group=self._pw.pw_gid, extra_groups=[])
            env.update(HOME=self._pw.pw_dir, USER=self._pw.pw_name, LOGNAME=self._pw.pw_name)
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
            if args and os.path.basename(args[0]).startswith("beam") and self._beam_matches(args, int(d)):
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
        pf = os.path.join(self.hs, "pid")
        cands = []
        try:
            with open(pf) as fh:
                pid = int(fh.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
            if args and os.path.basename(args[0]).startswith("beam") and self._beam_matches(args, pid):
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
                boot = m.group(1) if m else None
        return pid, boot

    def node_exs(self):
        here = os.path.dirname(os.path.abspath(__file__))
        for n in ("node.exs", "hotswap_node.exs"):
            f = os.path.join(here, n)
            if os.path.exists(f):
                with open(f, encoding="utf-8") as fh:
                    return fh.read()
        raise OpFailed(f"node.exs is missing next to {__file__}: reinstall the agent (role beam.hotswap.agent)")

    def _erl_call_target(self):
        """(erl_call, name flag, node, cookie) to reach the running node directly, or None.

        erl_call ships in every ERTS (the release's erts-*/bin, or the system's); it joins the node's
        distribution in a few ms where `bin/APP rpc` boots a whole VM (~0.25 s of CPU).  The node name
        and cookie come from the live VM's own command line (what it really uses), then from
        .hotswap/env and releases/COOKIE like bin/APP."""
        found = sorted(glob.glob(self.p("erts-*", "bin", "erl_call")),
                       key=lambda f: vsn_key(os.path.basename(os.path.dirname(os.path.dirname(f)))[5:]))
        erl_call = found[-1] if found else shutil.which("erl_call")
        env = self.env_file()
        if not erl_call or env.get("RELEASE_DISTRIBUTION", "sname") == "none":
            return None
        flag, node, cookie = ("-name" if env.get("RELEASE_DISTRIBUTION") == "name" else "-sname"), \
            self.node_name(), env.get("RELEASE_COOKIE")
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
                with open(self.p("releases", "COOKIE"), encoding="utf-8") as fh:
                    cookie = fh.read().strip()
            except OSError:
                return None
        return (erl_call, flag, node, cookie) if cookie else None

    def _run_erl_call(self, target, code, timeout):
        """Evaluate Elixir `code` in the node through erl_call; None when it could not connect.
        The cookie goes in a private ~/.erlang.cookie, never on a command line."""
        erl_call, flag, node, cookie = target
        home = tempfile.mkdtemp(prefix="hotswap-erlcall-")
        try:
            fd = os.open(os.path.join(home, ".erlang.cookie"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as fh:
                fh.write(cookie)
            # the JSON comes back base64-encoded as a charlist: plain ASCII whatever erl_call's term printer does
            expr = ("{R, _} = 'Elixir.Code':eval_string(base64:decode(<<\"%s\">>)), "
                    "binary_to_list(base64:encode(R)).\n"
                    % base64.b64encode((code + "\nhs_out\n").encode("utf-8")).decode("ascii"))
            # a client node name of our own: two erl_calls on one host must not collide
            p = subprocess.run([erl_call, flag, node, "-h", f"hotswap_{os.getpid()}_{os.urandom(3).hex()}",
                                "-e", "-timeout", str(int(timeout))],
                               input=expr, capture_output=True, text=True,
                               timeout=timeout + 10, env={"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                               cwd=home, check=False)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if p.returncode != 0 and "failed to connect" in p.stderr:
            return None
        m = re.fullmatch(r'\{ok, *(?:"([A-Za-z0-9+/=]*)"|\[([0-9,\s]*)\])\}\s*', p.stdout)
        if m and p.returncode == 0:
            try:
                b64 = m.group(1) if m.group(1) is not None else bytes(int(x) for x in m.group(2).split(",") if x.strip())
                p.stdout = "HOTSWAP_RESULT " + base64.b64decode(b64).decode("utf-8") + "\n"
            except ValueError:
                pass
        return p

    def rpc(self, op, timeout=120, **args):
        """Evaluate node.exs with hs = args inside the running node; returns the node's result map.

        Transport: erl_call when it can reach the node (milliseconds), else one `bin/APP rpc`."""
        args = dict(args, op=op, app=self.app)
        code = "hs = " + ex_lit(args) + "\n" + self.node_exs()
        t0 = now_ms()
        self.rpc_calls += 1
        try:
            target = self._erl_call_target()
            p = self._run_erl_call(target, code, timeout) if target else None
            if p is None:
                code += '\nIO.puts("HOTSWAP_RESULT " <> hs_out)\n'
                p = subprocess.run([self.bin(), "rpc", code], capture_output=True, text=True,
                                   timeout=timeout, **self.run_kwargs(), check=False)
        except subprocess.TimeoutExpired:
            raise OpFailed(f"bin/{self.app} rpc ({op}) timed out after {timeout}s", rpc_transport=True)
        finally:
            self.rpc_ms += now_ms() - t0
        for line in reversed(p.stdout.splitlines()):
            if line.startswith("HOTSWAP_RESULT "):
                try:
                    return json.loads(line[len("HOTSWAP_RESULT "):])
                except ValueError:
                    break
        # what the call printed, without the node script it may echo back (one long base64 line)
        said = [re.sub(r"[A-Za-z0-9+/=]{40,}", "...", x) for x in (p.stdout + "\n" + p.stderr).splitlines()
                if x.strip() and not re.fullmatch(r"[A-Za-z0-9+/=]{40,}", x.strip())]
        tail = "\n".join(said).strip()[-600:] or "no output"
        via = "erl_call" if p.args[0] != self.p("bin", self.app) else f"bin/{self.app} rpc"
        raise OpFailed(f"{via} ({op}) gave no result (exit {p.returncode}): {tail}",
                       rpc_transport=True)
