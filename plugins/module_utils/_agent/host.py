"""One release root on one host (`Host`): its paths and records (RELEASES, start_erl.data, releases/),
the run user, and the node transport: erl_call running node.erl (an erl_eval expression sequence) on
the live node, with values passed as Erlang literals.
"""

import base64
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess

from .errors import BadInput, now_ms, OpFailed
from .names import legacy_state_dir, state_dir, valid_version
from .erlterms import format_releases, parse_releases, TermError
from .files import epmd_names, parse_env, safe_read, safe_write
from .layout import check_parents, legacy_file, migrate_legacy, mkdir_private
from .nodecall import erl_call_expr, erl_lit, NEED_SCRIPT
from .relx import is_relx, vm_args


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
