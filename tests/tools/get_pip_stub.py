"""Offline stand-in for get-pip.py used by ansible-test (its CI host is unreachable here).

ansible-test runs ``python get_pip.py --no-setuptools --no-wheel <packages>``; we bootstrap pip
with ensurepip in a subprocess (so this machine's pip config stays in effect) and install the rest.
"""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall"] + args)
