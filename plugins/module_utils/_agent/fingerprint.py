"""The OS fingerprint a release depends on (distro and version, architecture, glibc, OpenSSL, OTP when ERTS
is not bundled), gathered on the build host and on every target, and the comparison between them that
refuses a release built for another OS.
"""

import os
import platform
import re
import subprocess

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
