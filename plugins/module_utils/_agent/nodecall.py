"""What travels to the node: Python values as Erlang literals, and the expression erl_call evaluates there
(node.erl, kept parsed by the node, after the call's arguments)."""

import base64

from .errors import BadInput

NEED_SCRIPT = "hotswap:need-node-script"  # a node's answer when it does not hold this node.erl parsed


def erl_call_expr(head, key, script):
    """The expression erl_call evaluates in the node: ``head`` (``Hs = ARGS.``) followed by node.erl, which the
    node keeps parsed in a persistent term under ``key`` (its checksum). ``script`` None: send only the head; a
    node that does not hold that node.erl parsed yet answers NEED_SCRIPT.  The texts travel base64-encoded
    (plain ASCII in erl_call's input), and so does the JSON answer, as a charlist, whatever erl_call's term
    printer does; exprs/3 skips erl_eval's erl_lint pass over the whole script (most of the time of a short op)."""
    def b64(text):
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    parse = ("fun(HsB) -> {ok, HsT, _} = erl_scan:string(unicode:characters_to_list(base64:decode(HsB))), "
             "{ok, HsE} = erl_parse:parse_exprs(HsT), HsE end")
    load = ("need" if script is None else
            "begin HsE1 = HsParse(<<\"%s\">>), [persistent_term:erase(HsOK) || {{hotswap_node, _} = HsOK, _} "
            "<- persistent_term:get(), HsOK =/= HsK], persistent_term:put(HsK, HsE1), HsE1 end" % b64(script))
    return ("HsParse = %s, HsK = {hotswap_node, <<\"%s\">>}, "
            "HsN = case persistent_term:get(HsK, nil) of nil -> %s; HsE0 -> HsE0 end, "
            "case HsN of need -> \"%s\"; _ -> {value, HsR, _} = erl_eval:exprs(HsParse(<<\"%s\">>) ++ HsN, [], none), "
            "binary_to_list(base64:encode(HsR)) end.\n" % (parse, key, load, NEED_SCRIPT, b64(head)))


def erl_lit(v):
    """Python value -> Erlang literal: str as a UTF-8 binary (the text stays ASCII: every other character
    is escaped), None as the atom nil, bool, int, list, dict (keys as binaries)."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        out = ['<<"']
        for ch in v:
            o = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif 0x20 <= o < 0x7F:
                out.append(ch)
            else:
                out.append("\\x{%X}" % (0xFFFD if 0xD800 <= o <= 0xDFFF else o))
        out.append('"/utf8>>')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(erl_lit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "#{" + ", ".join(erl_lit(str(k)) + " => " + erl_lit(x) for k, x in v.items()) + "}"
    raise BadInput(f"cannot pass {type(v).__name__} to the node")
