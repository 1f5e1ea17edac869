"""Test fleet: network-namespace "hosts", each with its own sshd, /opt, /etc/hosts and hostname.

Stdlib only.  Needs root and ``ip netns``.  Layout (prefix ``hsw``, subnet 10.213.X.0/24)::

    root namespace:  bridge  hsw-br   10.213.X.1/24  (the controller)
                     veths   hsw-t1 .. hsw-tN, hsw-b1   (ports of the bridge)
    namespaces:      hsw-target1 .. hsw-targetN, hsw-build1
                     eth0 = 10.213.X.{11..}/24 (targets), 10.213.X.10 (build1), lo up

In each namespace ``sshd -D`` runs inside ``unshare --mount --uts`` after setting the hostname and
bind-mounting ``WORKDIR/hosts/NAME/opt`` over ``/opt`` and ``WORKDIR/hosts/NAME/etc_hosts`` over
``/etc/hosts``, so an SSH session (and ``Fleet.exec_in``) sees that host's network, /opt and name.

Kernel objects, pids and the subnet are recorded in ``/run/hotswap-fleet/PREFIX.json``; ``up()``
first tears down whatever a crashed earlier run with the same prefix left behind.

    with Fleet("/tmp/x", targets=3) as fleet:
        fleet.run("target1", ["hostname"])
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = Path("/run/hotswap-fleet")
SSHD = "/usr/sbin/sshd"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class FleetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Host:
    name: str        # target1, build1
    address: str     # 10.213.X.Y
    netns: str       # hsw-target1
    veth: str        # root-side veth, hsw-t1
    group: str       # hotswap_targets / hotswap_build

    def __str__(self) -> str:
        return self.name


def _run(argv, check=True, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    p = subprocess.run(argv, check=False, **kw)
    if check and p.returncode != 0:
        raise FleetError(f"{shlex.join(map(str, argv))} exited {p.returncode}: {p.stderr.strip()}")
    return p


def usable() -> tuple[bool, str]:
    """(True, "") if a fleet can be built here, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "the test fleet needs root (network namespaces)"
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            return False, f"{tool} not found"
    if not os.access(SSHD, os.X_OK):
        return False, f"{SSHD} not found (apt-get install openssh-server)"
    probe = f"hswprobe{os.getpid() % 100000}"
    p = _run(["ip", "netns", "add", probe], check=False)
    if p.returncode != 0:
        return False, f"ip netns unusable: {p.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return True, ""


def python_interpreter() -> str:
    """A real interpreter path usable inside the hosts (pyenv shims need HOME/PYENV state)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    found = shutil.which("python3")
    if not found:
        raise FleetError("no python3")
    return os.path.realpath(found)


def _default_subnet(prefix: str) -> str:
    return f"10.213.{zlib.crc32(prefix.encode()) % 200 + 20}.0/24"


class Fleet:
    def __init__(self, workdir, targets: int = 3, build: bool = True, prefix: str = "hsw",
                 subnet: str | None = None):
        if not _PREFIX_RE.match(prefix):
            raise ValueError("prefix: 1-8 chars [a-z0-9], starting with a letter")
        if targets < 0 or targets > 50:
            raise ValueError("targets: 0..50")
        self.workdir = Path(workdir).resolve()
        self.prefix = prefix
        self.net = ipaddress.ip_network(subnet or _default_subnet(prefix))
        self.state_path = STATE_DIR / f"{prefix}.json"
        self.bridge = f"{prefix}-br"
        self.controller_address = str(self.net[1])
        hosts = []
        if build:
            hosts.append(Host("build1", str(self.net[10]), f"{prefix}-build1", f"{prefix}-b1",
                              "hotswap_build"))
        for i in range(1, targets + 1):
            hosts.append(Host(f"target{i}", str(self.net[10 + i]), f"{prefix}-target{i}",
                              f"{prefix}-t{i}", "hotswap_targets"))
        self.hosts: list[Host] = hosts
        self._by_name = {h.name: h for h in hosts}
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._cut: set[str] = set()
        self.is_up = False
        self.timings: dict[str, float] = {}
        # paths
        self.key_path = self.workdir / "id_ed25519"
        self.ssh_config_path = self.workdir / "ssh_config"
        self.inventory_path = self.workdir / "inventory.ini"
        cm = self.workdir / "cm"
        if len(str(cm)) > 60:  # unix socket paths are limited to 107 bytes; %C adds 40
            cm = Path("/run/hotswap-fleet") / f"{prefix}-cm"
        self.control_dir = cm

    # ------------------------------------------------------------------ lookup
    def host(self, host) -> Host:
        if isinstance(host, Host):
            return host
        try:
            return self._by_name[host]
        except KeyError:
            raise KeyError(f"no host {host!r} in fleet {self.prefix}") from None

    @property
    def targets(self) -> list[Host]:
        return [h for h in self.hosts if h.group == "hotswap_targets"]

    @property
    def build_host(self) -> Host | None:
        return next((h for h in self.hosts if h.group == "hotswap_build"), None)

    def host_dir(self, host) -> Path:
        return self.workdir / "hosts" / self.host(host).name

    def opt_dir(self, host) -> Path:
        """The directory mounted as /opt on that host (inspectable from the controller)."""
        return self.host_dir(host) / "opt"

    # ------------------------------------------------------------------ context manager
    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc):
        self.down()

    # ------------------------------------------------------------------ state file
    @contextlib.contextmanager
    def _lock(self):
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(STATE_DIR / f"{self.prefix}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _state(self) -> dict:
        return {
            "prefix": self.prefix, "workdir": str(self.workdir), "subnet": str(self.net),
            "bridge": self.bridge, "namespaces": [h.netns for h in self.hosts],
            "links": [self.bridge] + [h.veth for h in self.hosts],
            "routes": [f"unreachable {self.host(n).address}/32" for n in sorted(self._cut)],
            "pids": {n: {"pid": p, "config": str(self.host_dir(n) / "sshd_config")}
                     for n, p in self.pids.items()},
            "control_dir": str(self.control_dir),
        }

    def _save_state(self):
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state(), indent=1))
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------------ up
    def up(self) -> "Fleet":
        ok, why = usable()
        if not ok:
            raise FleetError(why)
        t0 = time.monotonic()
        with self._lock():
            cleanup_prefix(self.prefix)
            self.timings["cleanup"] = time.monotonic() - t0
            self._check_subnet_free()
            try:
                self._save_state()  # before creating anything: a crash mid-up is still cleaned
                self._write_files()
                self._make_network()
                self._start_sshds()
                self._save_state()
            except BaseException:
                self._teardown()
                raise
        self.is_up = True
        self.timings["up"] = time.monotonic() - t0
        return self

    def _check_subnet_free(self):
        out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        for line in out.splitlines():
            m = re.search(r"^\d+:\s+(\S+)\s+inet\s+(\S+)", line)
            if m and ipaddress.ip_interface(m.group(2)).network.overlaps(self.net):
                raise FleetError(f"subnet {self.net} already used by {m.group(1)} ({m.group(2)}); "
                                 f"pass Fleet(subnet=...) or another prefix")

    def _write_files(self):
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        self.control_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.control_dir, 0o700)
        for f in (self.key_path, self.key_path.with_suffix(".pub")):
            f.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hotswap-fleet-{self.prefix}",
              "-f", str(self.key_path)])
        shutil.copyfile(self.key_path.with_suffix(".pub"), w / "authorized_keys")
        os.chmod(w / "authorized_keys", 0o600)
        hosts_lines = [f"{h.address}\t{h.name}" for h in self.hosts]
        hosts_lines.append(f"{self.controller_address}\tcontroller")
        ssh_cfg = []
        for h in self.hosts:
            d = self.host_dir(h)
            (d / "opt").mkdir(parents=True, exist_ok=True)
            (d / "etc_hosts").write_text(
                # Debian's layout.  NOT "127.0.0.1 localhost NAME": erl -sname takes the canonical
                # name of the hostname, which would then be "localhost" (nodes named x@localhost).
                f"127.0.0.1\tlocalhost\n127.0.1.1\t{h.name}\n"
                f"::1\tlocalhost ip6-localhost ip6-loopback\n"
                + "\n".join(hosts_lines) + "\n")
            hk = d / "ssh_host_ed25519_key"
            if not hk.exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", str(hk)])
            (d / "sshd_config").write_text(f"""\
ListenAddress {h.address}:22
HostKey {hk}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {w / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 200:30:400
MaxSessions 100
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
""")
            (d / "start.sh").write_text(f"""\
set -e
hostname {h.name}
mount --bind {shlex.quote(str(d / 'opt'))} /opt
mount --bind {shlex.quote(str(d / 'etc_hosts'))} /etc/hosts
exec {SSHD} -D -e -f {shlex.quote(str(d / 'sshd_config'))}
""")
            ssh_cfg.append(f"Host {h.name}\n  HostName {h.address}\n")
        ssh_cfg.append(f"""\
Host *
  User root
  IdentityFile {self.key_path}
  IdentitiesOnly yes
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 5
  ServerAliveInterval 2
  ServerAliveCountMax 3
  ControlMaster auto
  ControlPersist 60s
  ControlPath {self.control_dir}/%C
""")
        self.ssh_config_path.write_text("\n".join(ssh_cfg))
        py = python_interpreter()
        inv = ["[hotswap_build]"]
        inv += [self._inv_line(h, py) for h in self.hosts if h.group == "hotswap_build"]
        inv += ["", "[hotswap_targets]"]
        inv += [self._inv_line(h, py) for h in self.targets]
        inv += ["", "[all:vars]", f"ansible_control_path_dir={self.control_dir}", ""]
        self.inventory_path.write_text("\n".join(inv))

    def _inv_line(self, h: Host, py: str) -> str:
        return (f"{h.name} ansible_host={h.address} ansible_user=root "
                f"ansible_ssh_private_key_file={self.key_path} "
                f"ansible_ssh_common_args='-F {self.ssh_config_path}' "
                f"ansible_python_interpreter={py}")

    def _make_network(self):
        prefixlen = self.net.prefixlen
        # ip -batch: one process for all root-namespace link work (fast)
        cmds = [f"link add {self.bridge} type bridge",
                f"addr add {self.controller_address}/{prefixlen} dev {self.bridge}",
                f"link set {self.bridge} up"]
        for h in self.hosts:
            _run(["ip", "netns", "add", h.netns])
            cmds += [f"link add {h.veth} type veth peer name {h.veth}p",
                     f"link set {h.veth}p netns {h.netns}",
                     f"link set {h.veth} master {self.bridge}",
                     f"link set {h.veth} up"]
        _run(["ip", "-batch", "-"], input="\n".join(cmds) + "\n")
        for h in self.hosts:
            _run(["ip", "-n", h.netns, "-batch", "-"], input=(
                f"link set lo up\n"
                f"link set {h.veth}p name eth0\n"
                f"addr add {h.address}/{prefixlen} dev eth0\n"
                f"link set eth0 up\n"))

    def _start_sshds(self):
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for h in self.hosts:
            d = self.host_dir(h)
            log = open(d / "sshd.log", "ab")
            # ip netns exec and unshare (without --fork) exec; start.sh execs sshd: same pid.
            p = subprocess.Popen(
                ["ip", "netns", "exec", h.netns, "unshare", "--mount", "--uts",
                 "--propagation", "private", "/bin/sh", str(d / "start.sh")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            self._procs[h.name] = p
            self.pids[h.name] = p.pid
        self._save_state()
        deadline = time.monotonic() + 15
        pending = list(self.hosts)
        while pending:
            for h in list(pending):
                p = self._procs[h.name]
                if p.poll() is not None:
                    raise FleetError(f"sshd for {h.name} exited {p.returncode}: "
                                     f"{(self.host_dir(h) / 'sshd.log').read_text()[-2000:]}")
                try:
                    with socket.create_connection((h.address, 22), timeout=0.5) as s:
                        s.settimeout(2)
                        if s.recv(4).startswith(b"SSH-"):
                            pending.remove(h)
                except OSError:
                    pass
            if pending:
                if time.monotonic() > deadline:
                    raise FleetError(f"sshd not ready on {[h.name for h in pending]}")
                time.sleep(0.02)

    # ------------------------------------------------------------------ down
    def down(self, remove_files: bool = True):
        t0 = time.monotonic()
        with self._lock():
            self._teardown(remove_files=remove_files)
        self.timings["down"] = time.monotonic() - t0

    def _teardown(self, remove_files: bool = True):
        close_control_masters(self.control_dir)
        state = self._state()
        _teardown_state(state)
        for p in self._procs.values():  # reap our children
            with contextlib.suppress(Exception):
                p.wait(timeout=2)
        self._procs.clear()
        self.pids.clear()
        self._cut.clear()
        self.state_path.unlink(missing_ok=True)
        if remove_files:
            shutil.rmtree(self.workdir / "hosts", ignore_errors=True)
            shutil.rmtree(self.control_dir, ignore_errors=True)
            for name in ("id_ed25519", "id_ed25519.pub", "authorized_keys", "ssh_config",
                         "inventory.ini"):
                (self.workdir / name).unlink(missing_ok=True)
        self.is_up = False

    # ------------------------------------------------------------------ helpers
    def ssh_argv(self, host, *extra: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config_path), *extra, self.host(host).name]

    def run(self, host, argv, check: bool = True, timeout: float | None = 60, input=None,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run argv (list, or a shell string) on host over SSH as root."""
        cmd = argv if isinstance(argv, str) else shlex.join(map(str, argv))
        return subprocess.run(self.ssh_argv(host, "--") + [cmd], check=check, timeout=timeout,
                              input=input, capture_output=True, text=text,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def exec_in(self, host, argv, check: bool = True, timeout: float | None = 60, input=None,
                text: bool = True) -> subprocess.CompletedProcess:
        """Run argv directly in host's net+mount+UTS namespaces (no SSH; for assertions)."""
        h = self.host(host)
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        return subprocess.run(["nsenter", "-t", str(self.pids[h.name]), "-n", "-m", "-u", "--",
                               *map(str, argv)], check=check, timeout=timeout, input=input,
                              capture_output=True, text=text,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def connect(self, host, port: int, timeout: float = 2.0) -> socket.socket:
        """A TCP connection from the controller (root namespace) to host:port."""
        return socket.create_connection((self.host(host).address, port), timeout=timeout)

    def netns_pids(self, host) -> list[int]:
        return _netns_pids(self.host(host).netns)

    def cut_link(self, host, fail_fast: bool = True, drop_ssh: bool = True):
        """Partition host: its veth goes down (no traffic to/from anyone).

        fail_fast: also an ``unreachable`` route in the controller namespace, so connections
        from the controller fail at once (EHOSTUNREACH) instead of timing out.
        drop_ssh: close SSH control masters to the host (else they linger until ServerAlive
        gives up, ~6 s, and new ssh/ansible sessions multiplexed on them hang that long).
        """
        h = self.host(host)
        _run(["ip", "link", "set", h.veth, "down"])
        if fail_fast:
            _run(["ip", "route", "replace", "unreachable", f"{h.address}/32"])
            self._cut.add(h.name)
            self._save_state()
        if drop_ssh:
            close_control_masters(self.control_dir, match=(h.address,))

    def restore_link(self, host):
        h = self.host(host)
        if h.name in self._cut:
            _run(["ip", "route", "del", "unreachable", f"{h.address}/32"], check=False)
            self._cut.discard(h.name)
            self._save_state()
        _run(["ip", "link", "set", h.veth, "up"])
        # wait until the host answers again (bridge port forwarding is immediate without STP)
        deadline = time.monotonic() + 5
        while True:
            try:
                self.connect(h, 22, timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def ansible_env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env.update({
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_INVENTORY": str(self.inventory_path),
            # the settings docs/ansible.cfg.example recommends: enough forks for a whole batch at once
            "ANSIBLE_FORKS": "20",
            "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=120s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key_path),
            "ANSIBLE_REMOTE_USER": "root",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        })
        return env

    def describe(self) -> str:
        rows = [f"{h.name:8} {h.address:15} netns={h.netns} sshd={self.pids.get(h.name)}"
                for h in self.hosts]
        return "\n".join(rows + [f"inventory: {self.inventory_path}",
                                 f"ssh: ssh -F {self.ssh_config_path} target1"])


# ---------------------------------------------------------------------- teardown machinery
def _netns_pids(netns: str) -> list[int]:
    p = _run(["ip", "netns", "pids", netns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _kill_and_wait(pids, timeout: float = 3.0):
    pids = {p for p in pids if p > 1 and p != os.getpid()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2.0)
        while pids and time.monotonic() < deadline:
            for p in list(pids):
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(p, os.WNOHANG)
                if not _alive(p):
                    pids.discard(p)
            if pids:
                time.sleep(0.02)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _teardown_state(state: dict):
    """Kill processes, delete namespaces, routes and links named in state (best effort)."""
    victims = set()
    for info in state.get("pids", {}).values():
        pid, cfg = info["pid"], info["config"]
        cl = _cmdline(pid)
        # a recorded pid is killed only if it still is our sshd (pids get reused)
        if cl and cl[0].endswith("sshd") and cfg in cl:
            victims.add(pid)
    namespaces = set(state.get("namespaces", []))
    for ns in namespaces:
        victims.update(_netns_pids(ns))  # sshd, its sessions, beam nodes, epmd ... all ours
    _kill_and_wait(victims)
    for ns in namespaces:  # anything started while we were killing
        _kill_and_wait(_netns_pids(ns), timeout=1.0)
    cmds = [f"route del {r}" for r in state.get("routes", [])]
    cmds += [f"netns del {ns}" for ns in namespaces]
    for c in cmds:
        _run(["ip"] + c.split(), check=False)
    existing = set(_links())
    for link in state.get("links", []):
        if link in existing:
            _run(["ip", "link", "del", link], check=False)


def _links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    return [m.group(1).split("@")[0] for m in re.finditer(r"^\d+:\s+(\S+):", out, re.M)]


def _netns_list() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_prefix(prefix: str):
    """Tear down what a (possibly crashed) earlier fleet with this prefix left behind."""
    state_path = STATE_DIR / f"{prefix}.json"
    state = {}
    if state_path.exists():
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(state_path.read_text())
        if state.get("control_dir"):
            close_control_masters(Path(state["control_dir"]))
    # also anything named with our prefix (state file lost, or crash before it was written)
    tag = f"{prefix}-"
    state.setdefault("namespaces", [])
    state["namespaces"] = sorted(set(state["namespaces"]) |
                                 {n for n in _netns_list() if n.startswith(tag)})
    state["links"] = sorted(set(state.get("links", [])) |
                            {link for link in _links() if link.startswith(tag)})
    net = state.get("subnet")
    if net:  # stray unreachable routes of cut links
        out = _run(["ip", "route", "show", "type", "unreachable"], check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and ipaddress.ip_network(parts[1], strict=False).subnet_of(
                    ipaddress.ip_network(net)):
                state.setdefault("routes", []).append(f"unreachable {parts[1]}")
    _teardown_state(state)
    state_path.unlink(missing_ok=True)


def _tcp_peers(pid: int) -> set[str]:
    """IPv4 addresses pid has TCP connections to."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
                if t.startswith("socket:["):
                    inodes.add(t[8:-1])
    peers = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[9] in inodes:
                peers.add(str(ipaddress.IPv4Address(int(f[2].split(":")[0], 16).to_bytes(4, "little"))))
    return peers


def close_control_masters(control_dir: Path, match=None):
    """Ask every SSH control master with a socket in control_dir to exit.

    match: only masters connected to one of these addresses.
    """
    control_dir = Path(control_dir)
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        if not sock.is_socket():
            continue
        if match is not None:
            chk = _run(["ssh", "-o", f"ControlPath={sock}", "-O", "check", "x"], check=False,
                       timeout=5)
            m = re.search(r"pid=(\d+)", chk.stderr + chk.stdout)
            # a master retitles itself ("ssh: PATH [mux]"): match on its TCP peer instead
            if not m or not set(match) & _tcp_peers(int(m.group(1))):
                continue
        _run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], check=False, timeout=5)
