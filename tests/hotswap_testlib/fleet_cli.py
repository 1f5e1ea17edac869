"""Bring a test fleet up (and leave it running) or down, for ``make demo``.

    python -m hotswap_testlib.fleet_cli up     --dir DIR [--targets N] [--no-build] [--prefix P]
    python -m hotswap_testlib.fleet_cli status --dir DIR [--prefix P]
    python -m hotswap_testlib.fleet_cli down   --dir DIR [--prefix P]

``down`` works from the state file in /run/hotswap-fleet (also after a crash).
"""

from __future__ import annotations

import argparse
import json
import sys

from hotswap_testlib.fleet import STATE_DIR, Fleet, FleetError, cleanup_prefix, _alive, _netns_list


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fleet_cli")
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--prefix", default="hsw")
    ap.add_argument("--subnet")
    a = ap.parse_args(argv)
    state_path = STATE_DIR / f"{a.prefix}.json"
    if a.command == "up":
        f = Fleet(a.dir, targets=a.targets, build=not a.no_build, prefix=a.prefix, subnet=a.subnet)
        try:
            f.up()
        except FleetError as e:
            print(f"fleet up failed: {e}", file=sys.stderr)
            return 1
        print(f.describe())
        print(f"up in {f.timings['up']:.2f}s; ansible env: "
              f"ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_PIPELINING=True "
              f"ANSIBLE_SSH_CONTROL_PATH_DIR={f.control_dir}")
        return 0
    if a.command == "down":
        cleanup_prefix(a.prefix)  # state file + anything named PREFIX-*
        f = Fleet(a.dir, prefix=a.prefix, targets=0, build=False)
        f._teardown(remove_files=True)  # generated files in --dir (nothing else is left)
        print("fleet down")
        return 0
    # status
    if not state_path.exists():
        print("no fleet")
        return 3
    st = json.loads(state_path.read_text())
    live = set(_netns_list())
    ok = True
    for name, info in sorted(st.get("pids", {}).items()):
        up = _alive(info["pid"])
        ok &= up
        print(f"{name:8} sshd pid {info['pid']} {'running' if up else 'DEAD'}")
    for ns in st.get("namespaces", []):
        ok &= ns in live
        if ns not in live:
            print(f"namespace {ns} missing")
    print(f"workdir {st['workdir']} subnet {st['subnet']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
