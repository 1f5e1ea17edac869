#!/usr/bin/env bash
# make fresh-check: prove the README's install steps on a pristine Debian 12 root.
#
#   debootstrap --variant=minbase bookworm (cached as a tarball after the first run)
#   -> git clone of the repo's committed HEAD into ROOT/root/beam.hotswap
#   -> inside the root, as root, with a clean environment:
#        apt-get update && apt-get install -y make git       (network)
#        make setup                                          (network: apt packages, .venv from PyPI)
#        make unit                                           (own network namespace: lo only)
#        .venv/bin/pytest <one real-node test>               (own network namespace: lo only)
#        make demo                                           (own network namespace: lo only)
#   -> unmount everything, remove the root.
#
# Everything runs inside `unshare --mount --pid --fork` (mounts are private to the check, every process
# started dies with it).  The test phases each get a new network, mount and pid namespace, so the demo's
# bridge, veths, named netns and sshds cannot meet test fleets running in the host's namespaces.
#
# Outside the repo:  /var/cache/beam-hotswap/fresh-check/   bookworm-minbase.tar.gz (the untouched
#                    debootstrap output), debs/ (apt's downloaded .debs, bind-mounted as the root's
#                    /var/cache/apt/archives; apt still installs every package inside the root)
#                    /var/tmp/beam-hotswap-fresh-check/     root/ (removed at the end), logs/ (kept)
# A cold run:        rm -rf /var/cache/beam-hotswap/fresh-check && make fresh-check
set -euo pipefail

readonly SUITE=bookworm
readonly MIRROR=http://deb.debian.org/debian
readonly CACHE_DIR=/var/cache/beam-hotswap/fresh-check
readonly LOCK_FILE=/var/cache/beam-hotswap/fresh-check.lock
readonly BASE_TAR=$CACHE_DIR/$SUITE-minbase.tar.gz
readonly DEB_CACHE=$CACHE_DIR/debs
readonly WORK=/var/tmp/beam-hotswap-fresh-check
readonly ROOT=$WORK/root
readonly BOOTSTRAP=$WORK/bootstrap
readonly LOGS=$WORK/logs
readonly PHASES=$WORK/phases.tsv
readonly CLONE=/root/beam.hotswap             # the clone, as seen inside the root
readonly REAL_NODE_FILE=tests/integration/test_agent_local.py
readonly REAL_NODE_TEST=test_hot_keeps_state_then_revert
# The only environment the root sees (env -i): what a root login shell on a pristine Debian has.
readonly -a CLEAN_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                       HOME=/root LANG=C.UTF-8 TERM=dumb)
SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF

CHILD=""        # the long-running child of this shell (killed by the exit trap)
T_START=$SECONDS

say() { printf 'fresh-check: [%(%H:%M:%S)T] %s\n' -1 "$*"; }

# run_killable CMD...: run CMD in the background, in its own session and process group, and wait for
# it, so that a signal to this shell runs its trap at once (stop_child: kills that process group;
# an `unshare --kill-child` in it takes its whole pid namespace along).
run_killable() {
    setsid "$@" </dev/null &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

# phase NAME LOG TIMEOUT CMD...: run CMD (output to $LOGS/LOG.log), print and record its duration;
# on failure print the log's last 60 lines.
phase() {
    local name=$1 log=$LOGS/$2.log limit=$3 t0=$SECONDS rc=0 dt
    shift 3
    say "$name ...  (log: $log)"
    echo "$name" >"$WORK/running"
    run_killable timeout --kill-after=20 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    dt=$((SECONDS - t0))
    printf '%s\t%s\t%s\t%s\n' "$name" "$dt" "$rc" "$log" >>"$PHASES"
    rm -f "$WORK/running"
    if ((rc == 0)); then
        say "$(printf '%-26s %5d s  ok' "$name" "$dt")"
    else
        ((rc == 124)) && echo "(timed out after $limit s)" >>"$log"
        say "$(printf '%-26s %5d s  FAILED (exit %d)' "$name" "$dt" "$rc")"
        echo "----- last 60 lines of $log -----"
        tail -n 60 "$log"
        echo "-----"
    fi
    return "$rc"
}

# ====================================================================================== host side

main() {
    if ((EUID != 0)); then
        echo "fresh-check: needs root (debootstrap, chroot, namespaces)" >&2
        exit 1
    fi
    for tool in unshare chroot mount umount findmnt flock timeout tar gzip ip git; do
        command -v "$tool" >/dev/null || { echo "fresh-check: $tool not found on this host" >&2; exit 1; }
    done
    mkdir -p "$CACHE_DIR" "$DEB_CACHE" "$WORK"
    exec 9>>"$LOCK_FILE"
    if ! flock -n 9; then
        echo "fresh-check: another fresh-check is running (lock $LOCK_FILE held)" >&2
        exit 1
    fi
    # From here on the work dir is ours: clean up on every exit path.
    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    if [[ -e $ROOT || -e $BOOTSTRAP ]]; then
        say "removing the root a previous run left behind"
        if ! { remove_tree "$ROOT" && remove_tree "$BOOTSTRAP"; }; then
            echo "fresh-check: cannot remove what a previous run left in $WORK" >&2
            exit 1
        fi
    fi
    rm -rf "$LOGS"
    rm -f "$WORK/running" "$BASE_TAR".tmp.*
    mkdir -p "$LOGS"
    : >"$PHASES"

    local repo sha
    repo=$(git -C "$(dirname "$SELF")" rev-parse --show-toplevel)
    sha=$(git -C "$repo" rev-parse HEAD)
    say "repo $repo, HEAD $sha ($(git -C "$repo" log -1 --format=%s HEAD))"
    if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
        say "note: the working tree has uncommitted changes; only the committed HEAD is checked"
    fi
    say "work dir $WORK, cache $CACHE_DIR"

    # 1. the pristine root
    if [[ -s $BASE_TAR ]]; then
        phase "debootstrap (cached)" 01-rootfs 600 bash "$SELF" __unpack
    else
        phase "debootstrap" 01-rootfs 1800 \
            unshare --mount --pid --fork --kill-child --mount-proc -- bash "$SELF" __debootstrap
    fi

    # 2. a clean clone of the committed HEAD
    phase "clone HEAD" 02-clone 300 bash "$SELF" __clone "$repo" "$sha"

    # 3. the README's steps inside the root (one private mount + pid namespace for all of them)
    say "entering the root: unshare --mount --pid --fork, chroot $ROOT"
    local rc=0
    run_killable unshare --mount --pid --fork --kill-child --mount-proc -- bash "$SELF" __inside || rc=$?
    if ((rc != 0)); then
        if [[ ! -s $WORK/running ]] && ! awk -F'\t' '$3 != 0 {f = 1} END {exit !f}' "$PHASES"; then
            printf '%s\t%s\t%s\t%s\n' "namespace (exit $rc)" 0 "$rc" "-" >>"$PHASES"
        fi
        exit 1
    fi
    awk -F'\t' '$3 != 0 {f = 1} END {exit f}' "$PHASES"
}

on_exit() {
    local rc=$? t0=$SECONDS dt failed running=""
    trap - EXIT INT TERM HUP
    set +e
    stop_child
    # A phase cut short by a signal (or whose namespace died) has not recorded itself: name it.
    if [[ -s $WORK/running ]]; then
        running=$(<"$WORK/running")
        rm -f "$WORK/running"
        printf '%s\t%s\t%s\t%s\n' "$running (interrupted)" "?" "$((rc == 0 ? 1 : rc))" - >>"$PHASES"
    fi
    say "cleanup: stop what the check started, unmount, remove $ROOT"
    if remove_tree "$ROOT" && remove_tree "$BOOTSTRAP"; then
        dt=$((SECONDS - t0))
        printf '%s\t%s\t%s\t%s\n' cleanup "$dt" 0 - >>"$PHASES"
        say "$(printf '%-26s %5d s  ok' cleanup "$dt")"
    else
        dt=$((SECONDS - t0))
        printf '%s\t%s\t%s\t%s\n' cleanup "$dt" 1 - >>"$PHASES"
        say "$(printf '%-26s %5d s  FAILED: %s is still there (see above)' cleanup "$dt" "$ROOT")"
        rc=1
    fi
    failed=$(awk -F'\t' '$3 != 0 {print $1; exit}' "$PHASES" 2>/dev/null)
    if [[ -z $failed && $rc != 0 ]]; then
        failed="(interrupted, exit $rc)"
    fi
    local summary
    summary=$(awk -F'\t' '{printf "%s%s %s s", (NR > 1 ? " | " : ""), $1, $2}' "$PHASES" 2>/dev/null)
    say "logs: $LOGS"
    if [[ -z $failed ]]; then
        echo "fresh-check: PASSED | $summary | total $((SECONDS - T_START)) s"
        exit 0
    fi
    echo "fresh-check: FAILED in $failed | $summary | total $((SECONDS - T_START)) s"
    ((rc != 0)) || rc=1
    exit "$rc"
}

# The running phase's process group (setsid in run_killable: its pgid is its pid): TERM, then KILL.
# (unshare --fork ignores TERM while it waits; KILL makes --kill-child end its pid namespace.)
stop_child() {
    [[ -n $CHILD ]] || return 0
    kill -TERM -- "-$CHILD" 2>/dev/null
    local i
    for ((i = 0; i < 20; i++)); do
        kill -0 "$CHILD" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
    CHILD=""
}

# Processes whose root or cwd is under $1 (left by a killed namespace that is still dying).
procs_under() {
    local d=$1 p link
    for p in /proc/[0-9]*; do
        for link in "$p/root" "$p/cwd"; do
            link=$(readlink "$link" 2>/dev/null) || continue
            if [[ $link == "$d" || $link == "$d"/* ]]; then
                echo "${p#/proc/}"
                break
            fi
        done
    done
}

# Mount points (in this mount namespace) at or under $1, deepest first.
mounts_under() {
    findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1' | sort -r
}

# remove_tree DIR: wait for its processes to go, unmount what is mounted under it (lazily if need be),
# then remove it.  Refuses to remove anything while a mount is left.
remove_tree() {
    local d=$1 i m
    [[ -n $d && $d == "$WORK"/* ]] || return 1
    [[ -e $d ]] || return 0
    for ((i = 0; i < 100; i++)); do
        [[ -z $(procs_under "$d") ]] && break
        ((i == 20)) && procs_under "$d" | xargs -r kill -KILL 2>/dev/null
        sleep 0.1
    done
    while read -r m; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done < <(mounts_under "$d")
    if [[ -n $(mounts_under "$d") ]]; then
        echo "fresh-check: still mounted under $d:" >&2
        mounts_under "$d" >&2
        return 1
    fi
    rm -rf --one-file-system "$d"
    [[ ! -e $d ]]
}

# __debootstrap (in its own mount + pid namespace): the untouched base, cached as a tarball.
do_debootstrap() {
    set -x
    if ! command -v debootstrap >/dev/null; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
    fi
    rm -rf "$BOOTSTRAP"
    debootstrap --variant=minbase "$SUITE" "$BOOTSTRAP" "$MIRROR"
    if [[ -n $(mounts_under "$BOOTSTRAP") ]]; then
        echo "debootstrap left mounts behind" >&2
        exit 1
    fi
    tar --numeric-owner --xattrs --xattrs-include='*' -czf "$BASE_TAR.tmp.$$" -C "$BOOTSTRAP" .
    mv "$BASE_TAR.tmp.$$" "$BASE_TAR"
    ls -l "$BASE_TAR"
    mv "$BOOTSTRAP" "$ROOT"
}

# __unpack: the cached debootstrap output.
do_unpack() {
    ls -l "$BASE_TAR"
    mkdir "$ROOT"
    tar --numeric-owner --xattrs --xattrs-include='*' -xpzf "$BASE_TAR" -C "$ROOT"
    du -sh "$ROOT"
}

# __clone REPO SHA: a clean clone of the committed HEAD at ROOT/root/beam.hotswap.
do_clone() {
    local repo=$1 sha=$2 dest=$ROOT$CLONE
    set -x
    git clone -q --no-hardlinks "$repo" "$dest"
    if [[ $(git -C "$dest" rev-parse HEAD) != "$sha" ]]; then
        git -C "$dest" fetch -q origin "$sha"
        git -C "$dest" checkout -q --detach "$sha"
    fi
    git -C "$dest" log -1 --format='%H %s'
    git -C "$dest" status --short | head
}

# ===================================================================== inside the check's namespace

# __inside: pid 1 of a new pid + mount namespace (host tools, host view of the filesystem).
do_inside() {
    phase "prepare root" 03-prepare 60 bash "$SELF" __prepare || exit 1

    # The README's prerequisite: a pristine Debian has neither make nor git.
    if ! grep -q 'apt-get install -y make git' "$ROOT$CLONE/README.md"; then
        say "note: README.md (HEAD) does not give this step; a pristine Debian 12 needs it for make setup"
    fi
    phase "apt-get install make git" 04-prereq 900 \
        bash "$SELF" __in_root 'apt-get update && apt-get install -y make git' || exit 1

    # The README's setup; then show that erlang and elixir are installed inside the root.
    phase "make setup" 05-setup 1800 bash "$SELF" __in_root \
        'make setup && echo "--- installed inside the root:" && dpkg-query -W erlang-nox erlang-dev elixir rebar3 openssh-server python3-venv && .venv/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -Ei "^(ansible-core|pytest) "' ||
        exit 1
    grep -A8 -- '^--- installed inside the root:' "$LOGS/05-setup.log" | sed 's/^/    /'

    # Tests: no network (own netns with lo only), so `make setup` (a prerequisite of both make targets)
    # must find everything in place.
    phase "make unit" 06-unit 900 \
        unshare --net --mount --pid --fork --kill-child --mount-proc="$ROOT/proc" -- \
        bash "$SELF" __offline 'make unit' || exit 1

    phase "real-node test" 07-real-node 900 \
        unshare --net --mount --pid --fork --kill-child --mount-proc="$ROOT/proc" -- \
        bash "$SELF" __offline "
            grep -q 'def $REAL_NODE_TEST(' $REAL_NODE_FILE || { echo 'fresh-check: $REAL_NODE_FILE has no $REAL_NODE_TEST (renamed?)'; exit 2; }
            .venv/bin/pytest -rs -p no:cacheprovider '$REAL_NODE_FILE::$REAL_NODE_TEST' 2>&1 | tee /tmp/real-node.out
            rc=\${PIPESTATUS[0]}; [ \"\$rc\" = 0 ] || exit \"\$rc\"
            grep -Eq '(^|[^0-9])1 passed' /tmp/real-node.out && ! grep -q skipped /tmp/real-node.out ||
                { echo 'fresh-check: the real-node test did not run and pass (skipped?)'; exit 3; }" ||
        exit 1

    local rc=0
    phase "make demo" 08-demo 1200 \
        unshare --net --mount --pid --fork --kill-child --mount-proc="$ROOT/proc" -- \
        bash "$SELF" __offline 'make demo' || rc=$?
    if [[ -d $ROOT$CLONE/.hotswap-demo/logs ]]; then
        cp -a "$ROOT$CLONE/.hotswap-demo/logs" "$LOGS/08-demo-logs" || true
    fi
    exit "$rc"
}

# __prepare: everything the root needs, mounted in the check's private mount namespace; the host's
# network settings (resolv.conf, site CAs); no service starts from a postinst.
do_prepare() {
    set -x
    mount --make-rprivate /
    # The root must be a mount point: `ip netns exec` remounts / as a slave inside the chroot.
    mount --bind "$ROOT" "$ROOT"
    # /proc/sys and /sys read-only while the root shares the host's network namespace (downloads:
    # no postinst can change the host's sysctls); each test phase gets its own writable ones.
    mount -t proc -o nosuid,nodev,noexec proc "$ROOT/proc"
    mount --bind "$ROOT/proc/sys" "$ROOT/proc/sys"
    mount -o remount,bind,ro "$ROOT/proc/sys"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$ROOT/sys"
    # A minimal /dev: the usual character devices, its own devpts instance, its own /dev/shm.
    mount -t tmpfs -o nosuid,mode=0755,size=16m tmpfs "$ROOT/dev"
    local n
    for n in null zero full random urandom tty; do
        touch "$ROOT/dev/$n"
        mount --bind "/dev/$n" "$ROOT/dev/$n"
    done
    mkdir -m 0755 "$ROOT/dev/pts"
    mkdir -m 1777 "$ROOT/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$ROOT/dev/pts"
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$ROOT/dev/shm"
    ln -s pts/ptmx "$ROOT/dev/ptmx"
    ln -s /proc/self/fd "$ROOT/dev/fd"
    ln -s /proc/self/fd/0 "$ROOT/dev/stdin"
    ln -s /proc/self/fd/1 "$ROOT/dev/stdout"
    ln -s /proc/self/fd/2 "$ROOT/dev/stderr"
    mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs "$ROOT/run"
    mkdir -m 1777 "$ROOT/run/lock"
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$ROOT/tmp"
    # apt's download cache only (apt still unpacks and configures every package inside the root).
    mount --bind "$DEB_CACHE" "$ROOT/var/cache/apt/archives"
    # Name resolution for the download phases; no service starts from a postinst (standard for chroots).
    cp --remove-destination /etc/resolv.conf "$ROOT/etc/resolv.conf"
    printf '#!/bin/sh\n# fresh-check: no service starts inside this chroot\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    site_cas
    findmnt -R "$ROOT"
}

# The CAs this host trusts beyond Debian's ca-certificates set (this network's TLS-intercepting proxy),
# put where a Debian admin puts a site CA: /usr/local/share/ca-certificates, which ca-certificates'
# postinst (update-ca-certificates; the package comes in with git, or else with `make setup`) adds to
# the root's bundle.  Without them no HTTPS download (PyPI) works on this network, on any machine.
# pip and apt configuration are NOT copied: the root uses plain PyPI and deb.debian.org.
site_cas() {
    { set +x; } 2>/dev/null
    local dest=$ROOT/usr/local/share/ca-certificates bundle=/etc/ssl/certs/ca-certificates.crt f
    local -a debian=()
    for f in /usr/share/ca-certificates/*/*.crt; do
        [[ -f $f ]] && debian+=("$f")
    done
    [[ -f $bundle && ${#debian[@]} -gt 0 ]] || return 0
    mkdir -p "$dest"
    awk -v bundle="$bundle" -v dest="$dest" '
        { sub(/\r$/, "") }
        /-----BEGIN CERTIFICATE-----/ { pem = ""; inside = 1 }
        inside { pem = pem $0 "\n" }
        /-----END CERTIFICATE-----/ {
            inside = 0
            if (FILENAME != bundle) { known[pem] = 1 }
            else if (!(pem in known)) { n++; f = dest "/fresh-check-site-" n ".crt"; printf "%s", pem > f; close(f) }
        }' "${debian[@]}" "$bundle"
    for f in "$dest"/fresh-check-site-*.crt; do
        [[ -f $f ]] || continue
        echo "site CA: $f: $(openssl x509 -noout -subject -in "$f" 2>/dev/null || echo '?')"
    done
}

# __in_root CMD: run CMD inside the root, in the clone, as root, with a clean environment.
# Stays the parent of the chroot so that, as pid 1 of a test namespace, it reaps orphans.
do_in_root() {
    "${CLEAN_ENV[@]}" chroot "$ROOT" /bin/bash -c "cd $CLONE && $1" </dev/null &
    local rc=0
    wait "$!" || rc=$?
    return "$rc"
}

# __offline CMD (pid 1 of a new net + mount + pid namespace): lo only, a sysfs of this network
# namespace, then CMD in the root.
do_offline() {
    ip link set lo up
    mount -t sysfs -o nosuid,nodev,noexec sysfs "$ROOT/sys"
    echo "fresh-check: network namespace: $(ip -o link show | awk -F': ' '{printf "%s ", $2}')"
    do_in_root "$1"
}

case "${1:-}" in
    __debootstrap) do_debootstrap ;;
    __unpack) do_unpack ;;
    __clone) shift; do_clone "$@" ;;
    __inside) do_inside ;;
    __prepare) do_prepare ;;
    __in_root) shift; do_in_root "$@" ;;
    __offline) shift; do_offline "$@" ;;
    "") main ;;
    *) echo "usage: $0" >&2; exit 2 ;;
esac
