#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: facts
short_description: What a target runs, holds and is (OS fingerprint), for planning a rollout
version_added: 0.1.0
description:
  - Reads the status of one release root (running, permanent, unpacked and old releases, node up, OS pid,
    packages held) and the host's OS fingerprint. Without O(install_agent) it writes nothing on the host, not
    even a directory; the module runs the collection's own agent code in its process, so a host without the
    agent (or with another version of it) is read the same way and nothing is left behind when the run stops
    later (a failed build, a wrong C(hotswap_app)).
  - C(hotswap_host.agent_current) says whether the agent installed in C(PARENT/.hotswap/NAME/) is the one this
    collection ships; the action of M(beam.hotswap.release) installs it (this module with O(install_agent=true))
    only when it is not, before anything else (the action plugin sends checksums first and the files only when
    needed, or at once when the facts already say the host's copy differs).
  - When the installed agent is the expected one, the action plugin reads the same facts by running it
    directly (one ssh command, no module payload); this module runs when the agent is missing, of another
    version, must be installed, or cannot answer.
  - Sets the fact C(hotswap_host).
author:
  - beam.hotswap developers (@beam-hotswap)
extends_documentation_fragment:
  - beam.hotswap.release_root
attributes:
  check_mode:
    support: full
    description: Only reads; reports whether the agent would be installed.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: Running it again with the same input changes nothing.
  facts:
    support: full
    description: Sets C(hotswap_host).
options:
  install_agent:
    description:
      - Install or update the reload agent first (only the files that differ). The only way this module writes
        on a host; role C(beam.hotswap.upgrade) does it right before the release task.
    type: bool
    default: false
  agent_files:
    description:
      - Set by the action plugin. The agent's files by name, with C(sha256), C(mode) and, when they must travel,
        C(content) (base64). Without O(install_agent) only the checksums, for C(hotswap_host.agent_current).
    type: dict
"""

EXAMPLES = r"""
- name: Gather what the host runs
  beam.hotswap.facts:
    app: sample
    root: /opt/sample

- name: Show it
  ansible.builtin.debug:
    var: ansible_facts.hotswap_host.running
"""

RETURN = r"""
agent_installed:
  description: Files of the agent that were (or in check mode would be) written.
  returned: when O(install_agent=true)
  type: list
  elements: str
ansible_facts:
  description: Facts about the release root.
  returned: always
  type: dict
  contains:
    hotswap_host:
      description:
        - The agent's status (C(installed), C(node_up), C(os_pid), C(running), C(permanent), C(current),
          C(previous), C(unpacked), C(old), C(releases), C(relup_down), C(packages), C(agent_version)) plus
          C(fingerprint) (the OS fingerprint), C(versions) (every version the host runs or holds),
          C(agent_installed) (an agent is in C(PARENT/.hotswap/NAME/)), C(agent_current) (it is the one this
          collection ships; absent when the action plugin gave no checksums), and when the module read a host
          whose agent is not current, C(installed_agent_version) and C(agent_outdated) (older than this
          collection's).
      type: dict
"""

import base64
import hashlib
import json
import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.beam.hotswap.plugins.module_utils._agent import cli as _agent_cli
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._agent.layout import check_parents, mkdir_private
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import AGENT_VERSION, state_dir
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import (
    AgentClient, AgentError, _version_tuple, agent_argv, release_root_spec, status_facts)


def install_agent(module, root, files):
    """Write the agent's files that differ (temp file + atomic_move, root-owned). Returns their names,
    or None when content is needed first."""
    hs = state_dir(root)
    stale = [name for name, spec in sorted(files.items())
             if not os.path.isfile(os.path.join(hs, name)) or sha256_file(os.path.join(hs, name)) != spec["sha256"]]
    if not stale or module.check_mode:
        return stale
    if any("content" not in files[name] for name in stale):
        return None
    # the agent's directory beside the release root, root-only (0711: the node's user reaches only the
    # cookie file erl_call reads); the release root itself is made by the first install
    check_parents(root, os.path.basename(root))
    for d in (os.path.dirname(hs), hs):
        mkdir_private(d, 0o711)
    for name in stale:
        data = base64.b64decode(files[name]["content"])
        if hashlib.sha256(data).hexdigest() != files[name]["sha256"]:
            module.fail_json(msg="the agent file %s arrived damaged (sha256 mismatch); nothing was installed" % name)
        tmp = os.path.join(hs, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        mode = int(files[name].get("mode", "0640"), 8)
        os.chmod(tmp, mode)
        module.atomic_move(tmp, os.path.join(hs, name))
        # atomic_move gives a new file the default mode (0666 & ~umask) and an existing one its old mode
        os.chmod(os.path.join(hs, name), mode)
    # an agent before 1.3.0 ran node.exs (Elixir) in the node; its successor reads node.erl only
    if os.path.lexists(os.path.join(hs, "node.exs")):
        os.unlink(os.path.join(hs, "node.exs"))
    return stale


def agent_current(root, files):
    """Whether the agent files in the agent's directory have the checksums in ``files`` (reads only)."""
    hs = state_dir(root)
    return all(os.path.isfile(os.path.join(hs, name)) and sha256_file(os.path.join(hs, name)) == spec["sha256"]
               for name, spec in files.items())


def read_status(client):
    """The release root's status from the collection's own agent code, run in this process: the same
    answer the installed agent gives, and nothing written (a read makes no directory and no journal entry)."""
    rc, st = _agent_cli.run(agent_argv(client.root, client.app, None, "status", []))
    if rc != 0 or not isinstance(st, dict) or st.get("failed"):
        raise AgentError((st or {}).get("msg") or "could not read the release root %s (exit %s)" % (client.root, rc),
                         st)
    st = status_facts(json.loads(json.dumps(st, default=str)))
    st["agent_installed"] = client.installed()
    if st["agent_installed"]:
        # the installed agent's own version (the answer above is this collection's code): an older one is
        # named by status.yml and replaced by role beam.hotswap.upgrade before its release task
        try:
            with open(client.path, encoding="utf-8") as f:
                m = re.search(r'^AGENT_VERSION = "([^"]*)"', f.read(), re.M)
        except (OSError, UnicodeDecodeError):
            m = None
        st["installed_agent_version"] = m.group(1) if m else None
        st["agent_outdated"] = not m or _version_tuple(m.group(1)) < _version_tuple(AGENT_VERSION)
    return st


def main():
    module = AnsibleModule(
        argument_spec=dict(release_root_spec(), install_agent=dict(type="bool", default=False),
                           agent_files=dict(type="dict")),
        supports_check_mode=True,
    )
    p = module.params
    changed = False
    result = {}
    try:
        client = AgentClient(module, p["root"], p["app"])
        if p["install_agent"]:
            if not p["agent_files"]:
                module.fail_json(msg="install_agent needs the action plugin beam.hotswap.facts (agent_files is empty)")
            written = install_agent(module, client.root, p["agent_files"])
            if written is None:
                module.exit_json(changed=False, need_agent=True)
            changed = bool(written)
            result["agent_installed"] = written
        # status reads files and epmd; it needs no user (which may not exist before the first install)
        status = read_status(client)
        if p["agent_files"]:
            status["agent_current"] = agent_current(client.root, p["agent_files"])
            if p["install_agent"] and module.check_mode and changed:
                status["agent_pending"] = True
    except AgentError as e:
        module.fail_json(msg=str(e), agent=e.result)
    status["fingerprint"] = _fingerprint.gather_fingerprint()
    module.exit_json(changed=changed, ansible_facts=dict(hotswap_host=status), **result)


if __name__ == "__main__":
    main()
