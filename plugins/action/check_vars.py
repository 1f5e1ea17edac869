# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""beam.hotswap.check_vars runs on the controller only: every hotswap_* variable the play sees (and the
inventory gives the target hosts) against the roles' argument specs, before any host is touched."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.plugin_utils import _vars


class ActionModule(ActionBase):
    _requires_connection = False
    TRANSFERS_FILES = False

    def _value(self, templar, name, value):
        try:
            return templar.template(value), None
        except AnsibleError as e:
            return None, "%s could not be evaluated: %s" % (name, to_text(e).splitlines()[0] if to_text(e) else e)

    def _values(self, templar, raw):
        """{name: templated value} for the hotswap_* names in ``raw``, and the evaluation errors."""
        values, errors = {}, []
        for name in sorted(raw):
            if isinstance(name, str) and name.startswith(_vars.PREFIX):
                v, err = self._value(templar, name, raw[name])
                if err:
                    errors.append(err)
                else:
                    values[name] = v
        return values, errors

    def _host_values(self, task_vars, hosts, mine):
        """{host: {name: value}} for the hotswap_* variables a target's inventory sets differently."""
        out, hostvars = {}, task_vars.get("hostvars")
        if not hosts or hostvars is None:
            return out
        for host in hosts:
            try:
                raw = hostvars.raw_get(host)
                names = [n for n in raw if isinstance(n, str) and n.startswith(_vars.PREFIX)
                         and (n not in mine or raw[n] != mine[n])]
                if not names:
                    continue
                templar = self._templar.copy_with_new_env(available_variables=raw)
                vals = {}
                for n in names:
                    v, err = self._value(templar, n, raw[n])
                    if err is None:
                        vals[n] = v
                if vals:
                    out[host] = vals
            except Exception:  # pylint: disable=broad-except  # a host whose vars cannot be read here: its role reports it
                continue
        return out

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        hosts = self._task.args.get("hosts") or []
        try:
            specs, problems = _vars.load_specs()
            known = _vars.load_known()
            raw = dict((k, v) for k, v in task_vars.items() if isinstance(k, str) and k.startswith(_vars.PREFIX))
            values, errors = self._values(self._templar, raw)
            errs, warnings = _vars.check(values, specs, known)
            errors += errs
            for host, vals in sorted(self._host_values(task_vars, hosts, raw).items()):
                h_errs, h_warns = _vars.check(vals, specs, known)
                errors += ["%s: %s" % (host, e) for e in h_errs]
                warnings += ["%s: %s" % (host, w) for w in h_warns if w not in warnings]
        except Exception as e:  # pylint: disable=broad-except  # never a traceback: say what broke, run on
            problems, errors, warnings, values = ["the variable check itself failed: %s" % to_text(e)], [], [], {}
        result.update(changed=False, checked=sorted(values))
        if problems or warnings:
            result["warnings"] = problems + warnings
        if errors:
            result.update(failed=True, errors=errors,
                          msg="Bad input, nothing was changed. %s" % " ".join(errors))
        return result
