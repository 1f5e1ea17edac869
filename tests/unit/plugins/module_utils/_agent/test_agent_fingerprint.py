"""The OS fingerprint: gathering it, comparing build host and targets, refusing a package built for another OS."""
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms
from ansible_collections.beam.hotswap.plugins.module_utils._agent import (
    fingerprint as _fingerprint,
)

A = erlterms.Atom


# --------------------------------------------------------------------------- OS fingerprints

BUILD_FP = {"distro": "debian", "distro_version": "12", "arch": "x86_64", "glibc": "2.36",
            "openssl": "3.0.17", "otp": "25"}


def test_fingerprint_compare_names_host_and_field():
    t1 = dict(BUILD_FP)
    t2 = dict(BUILD_FP, glibc="2.35")
    t3 = dict(BUILD_FP, arch="aarch64", otp="26")
    diffs = _fingerprint.compare(BUILD_FP, {"target1": t1, "target2": t2, "target3": t3})
    assert diffs == [("target2", "glibc", "2.36", "2.35"), ("target3", "arch", "x86_64", "aarch64")]
    msg = _fingerprint.describe_mismatch("build1", diffs)
    assert "target2" in msg and "glibc" in msg and "2.35" in msg and "2.36" in msg
    assert "target3" in msg and "arch" in msg and "build1" in msg
    # otp matters only when ERTS is not bundled
    assert ("target3", "otp", "25", "26") in _fingerprint.compare(BUILD_FP, {"target3": t3}, include_erts=False)
    assert _fingerprint.compare(BUILD_FP, {"target1": t1}) == []
    assert _fingerprint.compare(BUILD_FP, {}) == []
    # an empty (ungathered) fingerprint is a mismatch on every field, not a silent pass
    assert {f for _h, f, _b, _t in _fingerprint.compare(BUILD_FP, {"t": {}})} == \
        set(_fingerprint.FIELDS) - {"otp"}


def test_fingerprint_gather_has_all_fields():
    fp = _fingerprint.gather_fingerprint()
    assert set(fp) == set(_fingerprint.FIELDS)
    assert fp["arch"]


# --- a package built for another OS is refused at install time ------------------------------------

def test_package_for_another_os_fingerprint_is_refused_naming_the_field():
    from ansible_collections.beam.hotswap.plugins.module_utils._agent import (
        fingerprint as _fingerprint,
    )
    host = {"distro": "debian", "distro_version": "12", "arch": "x86_64", "glibc": "2.36", "openssl": "3.0.17",
            "otp": "25"}
    manifest = {"app": "sample", "version": "2.0.0", "os": dict(host, glibc="2.31"), "runtime": {"include_erts": True}}
    why = _fingerprint.package_mismatch(manifest, host)
    assert why and "glibc 2.31 (this host 2.36)" in why and "sample 2.0.0" in why
    assert _fingerprint.package_mismatch(dict(manifest, os=host), host) is None
    # OTP counts only when the release does not bundle ERTS
    other_otp = dict(host, otp="26")
    assert _fingerprint.package_mismatch(dict(manifest, os=other_otp), host) is None
    assert "otp" in _fingerprint.package_mismatch(dict(manifest, os=other_otp, runtime={"include_erts": False}), host)
