# hotswap_node.exs -- evaluated INSIDE the running release node by ONE `bin/APP rpc` call.
#
# The agent (hotswap_agent.py) prepends one line `hs = %{...}` built from validated literals
# (op, app, versions, paths) and passes the whole text as the rpc expression.  Nothing here
# defines a module: everything is anonymous functions in the evaluation's binding.
# The result is one JSON text, `hs_out`: over `bin/APP rpc` the agent prints it as one line
# `HOTSWAP_RESULT <json>` on the caller's stdout; over erl_call it is the evaluation's value.
#
# ops (hs["op"]):
#   "install"  -> ensure RELEASES, [set_unpacked], merge runtime config, install_release, verify
#                 and (when hs["commit"]) make_permanent; revert to hs["old"] on failure
#                 (hs["revert_on_failure"]).  "hot" is the same op with everything switched on.
#   "unpack"   -> ensure RELEASES + set_unpacked(rel_file)
#   "verify"   -> default health check (+ optional rpc check expression)
#   "commit"   -> make_permanent
#   "revert"   -> install_release(old) (down edge) + make_permanent(old)
#   "remove"   -> remove_release for each of hs["remove"]
#   "info"     -> which_releases, app vsn, os pid
#   "ready"    -> wait until hs["app"] is started (used after a cold start)
#   "stop"     -> init:stop shortly after answering (the agent's stop without `bin/APP stop`)

hs_json = fn
  enc, v when is_map(v) and not is_struct(v) ->
    "{" <>
      (v
       |> Enum.map(fn {k, x} -> enc.(enc, to_string(k)) <> ":" <> enc.(enc, x) end)
       |> Enum.join(",")) <> "}"

  enc, v when is_list(v) ->
    "[" <> (v |> Enum.map(&enc.(enc, &1)) |> Enum.join(",")) <> "]"

  _enc, v when is_boolean(v) ->
    Atom.to_string(v)

  _enc, nil ->
    "null"

  _enc, v when is_integer(v) ->
    Integer.to_string(v)

  _enc, v when is_float(v) ->
    :erlang.float_to_binary(v, [:compact, decimals: 3])

  enc, v when is_atom(v) ->
    enc.(enc, Atom.to_string(v))

  enc, v when is_binary(v) ->
    if String.valid?(v) do
      esc =
        for <<c::utf8 <- v>>, into: "" do
          case c do
            ?" -> "\\\""
            ?\\ -> "\\\\"
            ?\n -> "\\n"
            ?\r -> "\\r"
            ?\t -> "\\t"
            c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
            c -> <<c::utf8>>
          end
        end

      "\"" <> esc <> "\""
    else
      enc.(enc, inspect(v))
    end

  enc, v ->
    enc.(enc, inspect(v, limit: 50, printable_limit: 500))
end

hs_result =
  try do
    app_s = hs["app"]
    app = String.to_atom(app_s)
    root = List.to_string(:code.root_dir())
    rel_dir = Path.join(root, "releases")
    t0 = System.monotonic_time(:microsecond)
    ms = fn t -> div(System.monotonic_time(:microsecond) - t, 100) / 10 end
    chars = fn v -> if is_list(v), do: List.to_string(v), else: to_string(v) end

    releases = fn ->
      for {_name, vsn, libs, st} <- :release_handler.which_releases() do
        %{"version" => chars.(vsn), "status" => Atom.to_string(st), "libs" => Enum.map(libs, chars)}
      end
    end

    running_of = fn rels ->
      cur = Enum.find(rels, &(&1["status"] == "current"))
      perm = Enum.find(rels, &(&1["status"] == "permanent"))
      {(cur || perm || %{})["version"], perm && perm["version"]}
    end

    app_vsn = fn -> chars.(Application.spec(app, :vsn) || "") end

    # RELEASES must exist (downgrades crash without it); release_handler reads it only at start.
    ensure_releases = fn ->
      f = Path.join(rel_dir, "RELEASES")

      if File.exists?(f) do
        false
      else
        {_, boot_vsn} = :init.script_id()
        rel_file = Path.join([rel_dir, chars.(boot_vsn), app_s <> ".rel"])

        :ok =
          :release_handler.create_RELEASES(~c"", String.to_charlist(rel_dir),
            String.to_charlist(rel_file), [])

        :ok = Supervisor.terminate_child(:sasl_sup, :release_handler)
        {:ok, _} = Supervisor.restart_child(:sasl_sup, :release_handler)
        true
      end
    end

    # install_release re-reads only releases/VSN/sys.config: evaluate the version's config
    # providers (runtime.exs) here, with the node's own OS env, and merge the result in.
    merge_runtime = fn vsn ->
      dir = Path.join(rel_dir, vsn)
      sys = Path.join(dir, "sys.config")
      orig = sys <> ".orig"
      runtime = Path.join(dir, "runtime.exs")

      if File.exists?(runtime) and File.exists?(sys) do
        unless File.exists?(orig), do: File.cp!(sys, orig)
        text = File.read!(orig)
        header = text |> String.split("\n") |> Enum.take_while(&String.starts_with?(&1, "%%"))
        {:ok, [base]} = :file.consult(String.to_charlist(orig))

        opts =
          with cp when is_map(cp) <- get_in(base, [:elixir, :config_provider_init]),
               {_, {_, o}} <- Enum.find(cp.providers, fn p -> elem(p, 0) == Config.Reader end) do
            o
          else
            _ -> [env: :prod, target: :host, imports: :disabled]
          end

        rt = Config.Reader.read!(runtime, opts)
        merged = Config.Reader.merge(base, rt)
        tmp = sys <> ".hotswap-tmp"

        File.write!(
          tmp,
          Enum.join(header, "\n") <> "\n" <> List.to_string(:io_lib.format(~c"~tp.~n", [merged]))
        )

        File.rename!(tmp, sys)
        Enum.map(rt, fn {a, _} -> Atom.to_string(a) end)
      else
        []
      end
    end

    # A new protocol implementation is unknown to the old consolidated dispatch module:
    # reload the target version's consolidated modules whose code differs.
    reload_consolidated = fn vsn ->
      dir = Path.join([rel_dir, vsn, "consolidated"])

      case File.ls(dir) do
        {:ok, files} ->
          files
          |> Enum.filter(&String.ends_with?(&1, ".beam"))
          |> Enum.flat_map(fn f ->
            path = Path.join(dir, f)
            mod = String.to_atom(Path.rootname(f))
            {:ok, {_, md5}} = :beam_lib.md5(String.to_charlist(path))

            same =
              :code.is_loaded(mod) != false and
                (try do
                   mod.module_info(:md5) == md5
                 rescue
                   _ -> false
                 end)

            if same do
              []
            else
              :code.purge(mod)
              {:module, _} = :code.load_abs(String.to_charlist(Path.rootname(path)))
              [Atom.to_string(mod)]
            end
          end)

        _ ->
          []
      end
    end

    # ---------------------------------------------------------------- code_change rehearsal
    # If code_change raises during install_release, release_handler is past the point of no
    # return and reboots the VM in place (init:restart): every process's state is lost.  So before
    # installing, run each {code_change, up|down, [{Mod, Extra}]} of the edge on a COPY of the
    # live state, with the target code, in a scratch peer node (not distributed: it talks to us
    # over its stdin/stdout only, holds no cookie, registers nowhere) and refuse when one raises.
    consult1 = fn path ->
      case :file.consult(String.to_charlist(path)) do
        {:ok, [t]} -> {:ok, t}
        other -> {:error, other}
      end
    end

    # as release_handler_1:get_vsn/1: a string vsn as is, [Term] -> Term
    norm_vsn = fn v ->
      cond do
        is_list(v) and v != [] and Enum.all?(v, &(is_integer(&1) and &1 >= ?\s and &1 <= 255)) -> v
        match?([_], v) -> hd(v)
        true -> v
      end
    end

    beam_vsn = fn path ->
      case :beam_lib.version(path) do
        {:ok, {_, v}} -> norm_vsn.(v)
        _ -> :undefined
      end
    end

    term_kinds = fn term ->
      walk = fn
        _w, _t, {acc, n} when n > 200_000 -> {acc, n}
        _w, t, {acc, n} when is_pid(t) -> {MapSet.put(acc, "a pid"), n + 1}
        _w, t, {acc, n} when is_port(t) -> {MapSet.put(acc, "a port"), n + 1}
        _w, t, {acc, n} when is_function(t) -> {MapSet.put(acc, "a fun"), n + 1}
        _w, t, {acc, n} when is_reference(t) ->
          is_ets =
            try do
              :ets.info(t, :id) not in [:undefined, nil]
            rescue
              _ -> false
            end

          {MapSet.put(acc, if(is_ets, do: "an ETS table id (a reference)", else: "a reference")), n + 1}

        w, t, {acc, n} when is_tuple(t) ->
          Enum.reduce(Tuple.to_list(t), {acc, n + 1}, fn x, st -> w.(w, x, st) end)

        w, t, {acc, n} when is_map(t) ->
          Enum.reduce(Map.to_list(t), {acc, n + 1}, fn {k, x}, st -> w.(w, x, w.(w, k, st)) end)

        w, [h | tl], {acc, n} ->
          w.(w, tl, w.(w, h, {acc, n + 1}))

        _w, _t, st ->
          st
      end

      {acc, _} = walk.(walk, term, {MapSet.new(), 0})
      Enum.sort(acc)
    end

    # The callback module sys:change_code will call for a gen_server: $initial_call can lie (Agent
    # overwrites it with its fun's module), so read it where gen_server keeps it: the Mod argument
    # of gen_server:loop/7 (y(2) of its frame while it waits in receive).  nil when not found.
    gen_server_cb = fn pid, beh ->
      with :gen_server <- beh,
           {:backtrace, bt} <- Process.info(pid, :backtrace),
           [_, a] <- Regex.run(~r/^Program counter: \S+ \(gen_server:loop\/7 \+ \d+\)\ny\(0\)[^\n]*\ny\(1\)[^\n]*\ny\(2\)\s+(\S+)\n/, bt),
           m when is_atom(m) <- (try do String.to_existing_atom(String.trim(a, "'")) rescue _ -> nil end),
           true <- :code.is_loaded(m) != false and function_exported?(m, :code_change, 3) do
        m
      else
        _ -> nil
      end
    end

    # {mode, instructions, target_app_dirs} of the relup edge running -> vsn, or nil
    find_edge = fn running, vsn ->
      up =
        with {:ok, {_, ups, _}} <- consult1.(Path.join([rel_dir, vsn, "relup"])),
             {_, _, instrs} <- List.keyfind(ups, String.to_charlist(running), 0) do
          {:up, instrs}
        else
          _ -> nil
        end

      up ||
        with {:ok, {_, _, downs}} <- consult1.(Path.join([rel_dir, running, "relup"])),
             {_, _, instrs} <- List.keyfind(downs, String.to_charlist(vsn), 0) do
          {:down, instrs}
        else
          _ -> nil
        end
    end

    # ---------------------------------------------------------------- processes in old code
    # A process still executing a module's code when the relup loads a new version of it runs
    # "old" code afterwards; the purge that follows (make_permanent, or the next load) KILLS it.
    # Before the point of no return: find the processes with a frame in a module the edge replaces
    # (or holding its already-old code), give them a bounded time to leave, then refuse -- or, when
    # the user opted in (old_code = "kill"), go on and let the purge kill them after a second wait.
    edge_modules = fn running, vsn ->
      case if(running && running != vsn, do: find_edge.(running, vsn)) do
        {_mode, instrs} ->
          for i <- instrs,
              m <- (case i do
                      {:load, {m, _, _}} -> [m]
                      {:remove, {m, _, _}} -> [m]
                      _ -> []
                    end),
              uniq: true,
              do: m

        nil ->
          []
      end
    end

    frame_re = ~r/\(('(?:[^'\\]|\\.)*'|[a-z][A-Za-z0-9_@]*):('(?:[^'\\]|\\.)*'|[^\/\s]+)\/(\d+) \+ \d+\)/

    # [{module, "Mod.fun/arity"}] of pid's stack frames, innermost first
    frames_of = fn pid ->
      case Process.info(pid, :backtrace) do
        {:backtrace, bt} ->
          for [_, m, f, a] <- Regex.scan(frame_re, bt) do
            m = String.trim(m, "'")
            {m, "#{inspect(String.to_atom(m))}.#{String.trim(f, "'")}/#{a}"}
          end

        _ ->
          []
      end
    end

    # the modules of `mods` that pid executes (a frame in its stack) or holds old code of
    held_by = fn pid, mods, olds ->
      names = frames_of.(pid) |> Enum.map(&elem(&1, 0)) |> MapSet.new()

      for m <- mods,
          MapSet.member?(names, Atom.to_string(m)) or
            (m in olds and :erlang.check_process_code(pid, m) == true),
          do: m
    end

    describe_proc = fn pid, held ->
      held_s = Enum.map(held, &Atom.to_string/1)
      where = Enum.find_value(frames_of.(pid), fn {m, mfa} -> if m in held_s, do: mfa end)
      info = Process.info(pid, [:registered_name, :current_function, :initial_call, :dictionary]) || []
      name = case info[:registered_name] do
        n when is_atom(n) and n not in [nil, []] -> inspect(n)
        _ -> inspect(pid)
      end
      init = (info[:dictionary] || []) |> Keyword.get(:"$initial_call", info[:initial_call])
      fmt = fn
        {m, f, a} -> Exception.format_mfa(m, f, a)
        other -> inspect(other)
      end
      %{"pid" => inspect(pid), "name" => name, "initial_call" => fmt.(init),
        "current_function" => fmt.(info[:current_function]), "in" => where,
        "modules" => Enum.map(held, &inspect/1)}
    end

    # [{pid, [mods]}] of processes in `pids` (all when nil) that hold code of `mods`: before the load, by
    # their stack frames (a frame names a module, not a version of it); after it, old code only
    holders = fn mods, pids, after_load ->
      olds = Enum.filter(mods, &:erlang.check_old_code/1)
      me = self()

      held_of = fn pid ->
        if after_load,
          do: Enum.filter(olds, &(:erlang.check_process_code(pid, &1) == true)),
          else: held_by.(pid, mods, olds)
      end

      for pid <- pids || Process.list(), pid != me, held = held_of.(pid), held != [], do: {pid, held}
    end

    # wait up to wait_ms for the holders to leave; returns those still there
    wait_out = fn mods, found, wait_ms ->
      deadline = System.monotonic_time(:millisecond) + wait_ms

      Enum.reduce_while(Stream.repeatedly(fn -> nil end), found, fn _, left ->
        left = holders.(mods, Enum.map(left, &elem(&1, 0)), true)

        cond do
          left == [] -> {:halt, []}
          System.monotonic_time(:millisecond) >= deadline -> {:halt, left}
          true -> Process.sleep(100) && {:cont, left}
        end
      end)
    end

    # Before the load, "leaving" the code means finishing what it does (a request mid-flight) -- or
    # re-entering it through a fully qualified call (Mod.loop/1, __MODULE__.loop/1): such a call goes
    # to the NEW code once it is loaded, so a process seen making one moves over by itself.  Watch the
    # holders' global calls into the modules for up to wait_ms (call trace on those pids only,
    # removed at the end); returns {still holding and never seen re-entering, seen re-entering}.
    watch_out = fn mods, found, wait_ms ->
      me = self()
      deadline = System.monotonic_time(:millisecond) + wait_ms
      pids = Enum.map(found, &elem(&1, 0))
      mod_names = MapSet.new(mods, &Atom.to_string/1)

      # per process, the functions of the replaced modules on its stack: only a qualified call to one of
      # those re-enters what it runs (a call to another function of the module returns to the old frame)
      on_stack =
        Map.new(pids, fn p ->
          {p, for({m, mfa} <- frames_of.(p), MapSet.member?(mod_names, m), into: MapSet.new(), do: mfa)}
        end)

      for m <- mods do
        try do
          :erlang.trace_pattern({m, :_, :_}, true, [:global])
        rescue
          _ -> :ok
        end
      end

      traced =
        for p <- pids, (try do :erlang.trace(p, true, [:call, {:tracer, me}]) == 1 rescue _ -> false end), do: p

      try do
        # the clock is read on every turn: a steady stream of trace messages must not keep it waiting
        loop = fn loop, left, movers, next_check ->
          now = System.monotonic_time(:millisecond)

          if now >= next_check do
            left = holders.(mods, Enum.map(left, &elem(&1, 0)), false)
            stuck = Enum.reject(left, fn {p, _} -> MapSet.member?(movers, p) end)

            if stuck == [] or now >= deadline,
              do: {stuck, Enum.filter(left, fn {p, _} -> MapSet.member?(movers, p) end)},
              else: loop.(loop, left, movers, now + 100)
          else
            receive do
              {:trace, pid, :call, {m, f, args}} ->
                mfa = "#{inspect(m)}.#{f}/#{length(args)}"
                re_enters = MapSet.member?(Map.get(on_stack, pid, MapSet.new()), mfa)
                loop.(loop, left, if(re_enters, do: MapSet.put(movers, pid), else: movers), next_check)
            after
              next_check - now -> loop.(loop, left, movers, next_check)
            end
          end
        end

        loop.(loop, found, MapSet.new(), System.monotonic_time(:millisecond) + 100)
      after
        for p <- traced, do: (try do :erlang.trace(p, false, [:call]) rescue _ -> 0 end)

        for m <- mods do
          try do
            :erlang.trace_pattern({m, :_, :_}, false, [:global])
          rescue
            _ -> :ok
          end
        end

        flush = fn f ->
          receive do
            {:trace, _, _, _} -> f.(f)
          after
            0 -> :ok
          end
        end

        flush.(flush)
      end
    end

    # "N process(es) ...: NAME in Mod.fun/arity, ..." for a message
    procs_line = fn procs, what ->
      "#{length(procs)} process(es) #{what}: " <>
        Enum.map_join(Enum.take(procs, 5), ", ", &"#{&1["name"]} in #{&1["in"] || &1["current_function"]}")
    end

    # ---------------------------------------------------------------- network-facing processes
    # The processes of Ranch listeners (Cowboy, Plug.Cowboy, Phoenix): acceptors, and below each
    # connection supervisor one process per client connection plus Cowboy's request processes.  A
    # connection process cannot move to a new version of its protocol's code (its state is a record of
    # the old version), but it ENDS: when its client closes, its keep-alive limit or idle timeout is
    # reached, its request is answered.  Such "finishers" run on the code they started with; the
    # relup's post-purge is soft, so the old code goes when the last of them ends.  While the relup
    # loads, all listener processes are suspended: no request ever runs against half-loaded code.
    dict_of = fn pid ->
      case Process.info(pid, :dictionary) do
        {:dictionary, d} -> d
        _ -> []
      end
    end

    initial_of = fn pid, d ->
      case List.keyfind(d, :"$initial_call", 0) do
        {_, mfa} -> mfa
        nil -> elem(Process.info(pid, :initial_call) || {:initial_call, nil}, 1)
      end
    end

    # %{listener_sups: MapSet, conns_sups: MapSet} of the Ranch listeners running now
    listeners = fn ->
      Enum.reduce(Process.list(), %{listener_sups: MapSet.new(), conns_sups: MapSet.new()}, fn p, acc ->
        case initial_of.(p, dict_of.(p)) do
          {:supervisor, :ranch_listener_sup, _} -> %{acc | listener_sups: MapSet.put(acc.listener_sups, p)}
          {:ranch_conns_sup, _, _} -> %{acc | conns_sups: MapSet.put(acc.conns_sups, p)}
          _ -> acc
        end
      end)
    end

    # the parent (OTP 25+) -- acceptors are plain spawn_links without $ancestors
    parent_of = fn pid ->
      try do
        case Process.info(pid, :parent) do
          {:parent, q} when is_pid(q) -> q
          _ -> nil
        end
      rescue
        _ -> nil
      end
    end

    below = fn pid, d, set ->
      Enum.any?(Keyword.get(d, :"$ancestors", []), &(is_pid(&1) and MapSet.member?(set, &1))) or
        Enum.reduce_while(1..8, pid, fn _, q ->
          case parent_of.(q) do
            nil -> {:halt, false}
            up -> if MapSet.member?(set, up), do: {:halt, true}, else: {:cont, up}
          end
        end) == true
    end

    finisher? = fn pid, ls -> MapSet.size(ls.conns_sups) > 0 and below.(pid, dict_of.(pid), ls.conns_sups) end

    # the listener processes that may run during the load (never a supervisor: release_handler asks them)
    serving = fn ls ->
      me = self()

      for p <- Process.list(), p != me, d = dict_of.(p), below.(p, d, ls.listener_sups),
          not match?({:supervisor, _, _}, initial_of.(p, d)),
          not match?({:ranch_conns_sup, _, _}, initial_of.(p, d)),
          do: p
    end

    suspend_all = fn pids ->
      for p <- pids, (try do :erlang.suspend_process(p) rescue _ -> false end), do: p
    end

    resume_all = fn pids ->
      Enum.each(pids, fn p -> try do :erlang.resume_process(p) rescue _ -> :ok end end)
    end

    # before install, for the modules the edge replaces: %{"ok" => true, ...} or a refusal naming the processes
    old_code_check = fn mods ->
      t_o = System.monotonic_time(:microsecond)
      ls = listeners.()
      {finishing, found} =
        if mods == [], do: {[], []}, else: Enum.split_with(holders.(mods, nil, false), fn {p, _} -> finisher?.(p, ls) end)

      {left, movers} =
        if found == [], do: {[], []}, else: watch_out.(mods, found, hs["old_code_wait_ms"] || 5000)

      policy = hs["old_code"] || "refuse"

      %{"ok" => left == [] or policy == "kill", "old_code_ms" => div(System.monotonic_time(:microsecond) - t_o, 100) / 10,
        "old_code_waited" => length(found) - length(left), "old_code_movers" => length(movers),
        "old_code_procs" => Enum.map(Enum.take(left, 20), fn {p, h} -> describe_proc.(p, h) end),
        "old_code_count" => length(left), "old_code_finishing" => length(finishing),
        seen: MapSet.new(found, &elem(&1, 0))}
    end

    # after install_release: processes still on the old code of the edge's modules get a second
    # bounded wait (a fully qualified call moves them to the new code), then soft purge; what is
    # left is purged brutally only under old_code = "kill" (their supervisors restart them).
    # Connection processes (finishers) are not waited for: they end on the old code, which
    # release_handler soft-purges then (the relup's post-purge is soft).
    old_code_after = fn mods ->
      olds = Enum.filter(mods, &:erlang.check_old_code/1)
      ls = listeners.()
      {finishing, found} =
        if olds == [], do: {[], []}, else: Enum.split_with(holders.(olds, nil, true), fn {p, _} -> finisher?.(p, ls) end)
      left = if found == [], do: [], else: wait_out.(olds, found, hs["old_code_wait_ms"] || 5000)
      Enum.each(olds, &:code.soft_purge/1)
      fin = %{"old_code_finishing" => Enum.map(Enum.take(finishing, 20), fn {p, h} -> describe_proc.(p, h) end),
              "old_code_finishing_count" => length(finishing)}

      cond do
        left == [] ->
          Map.put(fin, "ok", true)

        hs["old_code"] == "kill" ->
          procs = Enum.map(left ++ finishing, fn {p, h} -> describe_proc.(p, h) end)
          Enum.each(olds, &:code.purge/1)
          %{"ok" => true, "old_code_killed" => procs}

        true ->
          %{"ok" => false, "old_code_procs" => Enum.map(left, fn {p, h} -> describe_proc.(p, h) end)}
      end
    end

    rehearse = fn vsn ->
      t_r = System.monotonic_time(:microsecond)
      {running, _} = running_of.(releases.())

      edge = if running && running != vsn, do: find_edge.(running, vsn)

      changes =
        case edge do
          {mode, instrs} ->
            for i <- instrs,
                {m, mods} <-
                  (case i do
                     {:code_change, m, mods} -> [{m, mods}]
                     {:code_change, mods} -> [{:up, mods}]
                     _ -> []
                   end),
                {mod, extra} <- mods,
                do: {m || mode, mod, extra}

          nil ->
            []
        end

      done = fn res -> Map.put(res, "rehearse_ms", div(System.monotonic_time(:microsecond) - t_r, 100) / 10) end

      if changes == [] do
        done.(%{"ok" => true, "rehearsed" => [], "warnings" => [], "peer" => false})
      else
        {mode, instrs} = edge
        # where the target code of each module lives: {load_object_code, {App, AppVsn, Mods}}
        target_dirs =
          for {:load_object_code, {a, av, _}} <- instrs, into: %{},
              do: {a, Path.join([root, "lib", "#{a}-#{av}", "ebin"])}

        procs =
          try do
            :release_handler_1.get_supervised_procs()
          rescue
            _ -> []
          catch
            _, _ -> []
          end

        # the peer's code path: the target's ebin dirs first (up), then our path without the
        # dirs of the apps that change and with the target's consolidated protocols
        cur_path = Enum.map(:code.get_path(), &List.to_string/1)
        changed_apps = Map.keys(target_dirs) |> Enum.map(&Atom.to_string/1)

        app_of = fn d ->
          case Path.split(Path.relative_to(d, Path.join(root, "lib"))) do
            [lib, "ebin"] -> lib |> String.split("-") |> Enum.drop(-1) |> Enum.join("-")
            _ -> nil
          end
        end

        new_cons = Path.join([rel_dir, if(mode == :up, do: vsn, else: running), "consolidated"])

        peer_path =
          if mode == :up do
            Map.values(target_dirs) ++
              (if File.dir?(new_cons), do: [new_cons], else: []) ++
              Enum.reject(cur_path, fn d ->
                app_of.(d) in changed_apps or
                  (String.starts_with?(d, rel_dir <> "/") and String.ends_with?(d, "/consolidated"))
              end)
          else
            # down: code_change runs in the CURRENT module, before the old code is loaded
            cur_path
          end

        warnings = :ets.new(:hs_warn, [:bag, :public])
        warn = fn w -> :ets.insert(warnings, {w}) end

        jobs =
          for {m, mod, extra} <- changes,
              {_sup, _name, pid, mods} <- procs,
              is_list(mods) and mod in mods,
              do: {m, mod, extra, pid}

        {_, boot_vsn} = :init.script_id()
        clean = Path.join([rel_dir, vsn, "start_clean.boot"])

        boot =
          if File.exists?(clean),
            do: Path.rootname(clean),
            else: Path.join([rel_dir, chars.(boot_vsn), "start_clean"])

        erl = Path.join([root, "erts-" <> chars.(:erlang.system_info(:version)), "bin", "erl"])

        res =
          if jobs == [] do
            %{"ok" => true, "rehearsed" => [], "peer" => false}
          else
            args =
              # one scheduler, no async threads: a scratch VM for a few calls, as light on the host's CPU as it gets
              ["+S", "1:1", "+SDcpu", "1:1", "+SDio", "1", "+A", "0",
               "-boot", boot, "-boot_var", "RELEASE_LIB", Path.join(root, "lib"), "-kernel", "logger_level", "critical",
               "-eval", "spawn(fun() -> timer:sleep(120000), erlang:halt(3) end)", "-pa" | peer_path]
              |> Enum.map(&String.to_charlist/1)

            peer_opts = %{exec: String.to_charlist(erl), args: args, connection: :standard_io, wait_boot: 30_000,
                          env: [{~c"ERL_FLAGS", false}, {~c"ERL_AFLAGS", false}, {~c"ERL_ZFLAGS", false}]}

            started =
              try do
                :peer.start(peer_opts)
              rescue
                e -> {:error, Exception.message(e)}
              catch
                k, r -> {:error, inspect({k, r})}
              end

            case started do
              {:ok, peer, _} ->
                try do
                  failures =
                    Enum.flat_map(jobs, fn {m, mod, extra, pid} ->
                      name = inspect(mod)

                      {beh, cb} =
                        try do
                          {:status, _, {:module, beh}, _} = :sys.get_status(pid, 5000)
                          {:dictionary, d} = Process.info(pid, :dictionary)

                          cb =
                            case List.keyfind(d, :"$initial_call", 0) do
                              {_, {:supervisor, _, _}} -> :supervisor
                              ic -> gen_server_cb.(pid, beh) || (match?({_, {_, :init, 1}}, ic) && elem(elem(ic, 1), 0)) || mod
                            end

                          {beh, cb}
                        rescue
                          _ -> {nil, nil}
                        catch
                          _, _ -> {nil, nil}
                        end

                      old_vsn =
                        case m do
                          :up ->
                            case :code.which(mod) do
                              f when is_list(f) -> beam_vsn.(f)
                              _ -> :undefined
                            end

                          :down ->
                            tgt =
                              Enum.find_value(instrs, fn
                                {:load_object_code, {a, av, ms}} ->
                                  if mod in ms, do: Path.join([root, "lib", "#{a}-#{av}", "ebin", "#{mod}.beam"])

                                _ ->
                                  nil
                              end)

                            {:down, if(tgt, do: beam_vsn.(String.to_charlist(tgt)), else: :undefined)}
                        end

                      state =
                        try do
                          {:ok, :sys.get_state(pid, 5000)}
                        rescue
                          e -> {:error, Exception.message(e)}
                        catch
                          k, r -> {:error, inspect({k, r})}
                        end

                      case {beh, state} do
                        {_, {:error, why}} ->
                          warn.("#{name} (#{inspect(pid)}): could not read its state (#{why}); not rehearsed")
                          []

                        {b, {:ok, st}} when b in [:gen_server, :gen_statem] ->
                          if cb != :supervisor do
                            kinds = term_kinds.(st)

                            if kinds != [],
                              do: warn.("#{name} state holds #{Enum.join(kinds, ", ")}: the rehearsal ran on a copy")
                          end

                          {call_args, want} =
                            if b == :gen_statem do
                              {s, d} = st
                              {[old_vsn, s, d, extra], 3}
                            else
                              {[old_vsn, st, extra], 2}
                            end

                          outcome =
                            try do
                              {:ok, :peer.call(peer, cb, :code_change, call_args, 10_000)}
                            rescue
                              e -> {:raised, "raised " <> String.replace_prefix(Exception.format_banner(:error, e), "** ", "")}
                            catch
                              :exit, {:timeout, _} -> {:raised, "gave no answer within 10 s"}
                              :exit, :timeout -> {:raised, "gave no answer within 10 s"}
                              k, r -> {:raised, "raised " <> String.replace_prefix(Exception.format_banner(k, r), "** ", "")}
                            end

                          case outcome do
                            {:ok, r} when is_tuple(r) and tuple_size(r) == want and elem(r, 0) == :ok ->
                              []

                            {:ok, r} ->
                              [%{"module" => name, "pid" => inspect(pid), "callback" => inspect(cb),
                                 "old_vsn" => inspect(old_vsn),
                                 "error" => "returned #{inspect(r, limit: 10, printable_limit: 200)}"}]

                            {:raised, why} ->
                              [%{"module" => name, "pid" => inspect(pid), "callback" => inspect(cb),
                                 "old_vsn" => inspect(old_vsn), "error" => String.slice(why, 0, 600)}]
                          end

                        {b, _} ->
                          warn.("#{name} (#{inspect(pid)}) is a #{inspect(b)} process: its code_change was not rehearsed")
                          []
                      end
                    end)

                  %{"ok" => failures == [], "failures" => failures, "peer" => true,
                    "rehearsed" => Enum.map(jobs, fn {_, mod, _, pid} -> "#{inspect(mod)} #{inspect(pid)}" end)}
                after
                  try do
                    :peer.stop(peer)
                  catch
                    _, _ -> :ok
                  end
                end

              other ->
                warn.("the rehearsal could not run (scratch node did not start: " <>
                        "#{inspect(other, limit: 8, printable_limit: 200)}); installing unrehearsed")

                %{"ok" => true, "rehearsed" => [], "peer" => false}
            end
          end

        ws = :ets.tab2list(warnings) |> Enum.map(&elem(&1, 0)) |> Enum.uniq()
        :ets.delete(warnings)
        done.(Map.merge(res, %{"warnings" => ws, "mode" => Atom.to_string(mode)}))
      end
    end

    # held: the modules the edge replaces, for the last look (empty: no look); seen: the processes the
    # check already judged (movers, and under kill the ones let through)
    do_install = fn vsn, held, seen ->
      keys = merge_runtime.(vsn)
      :persistent_term.erase({:beam_hotswap, :kept_supervisors})
      :persistent_term.erase({:beam_hotswap, :children_changed})
      ls = listeners.()
      # never hold a process the relup itself suspends for its code_change (release_handler's
      # sys:suspend would time out on it and skip its code_change)
      {running_now, _} = running_of.(releases.())
      updated =
        case if(running_now && running_now != vsn, do: find_edge.(running_now, vsn)) do
          {_, instrs} -> for {:suspend, ms} <- instrs, m <- ms, into: MapSet.new(), do: (if is_tuple(m), do: elem(m, 0), else: m)
          nil -> MapSet.new()
        end
      paused =
        suspend_all.(
          for p <- serving.(ls), not (case initial_of.(p, dict_of.(p)) do
                                       {m, _, _} -> MapSet.member?(updated, m)
                                       _ -> false
                                     end), do: p)

      # the last look, with the listeners held: a process that entered the replaced code since the
      # check (a connection opened meanwhile is a finisher; anything else is refused) stops the install
      late =
        if held == [] or hs["old_code"] == "kill",
          do: [],
          else: Enum.reject(holders.(held, nil, false), fn {p, _} -> MapSet.member?(seen, p) or finisher?.(p, ls) end)

      {us, r} =
        try do
          if late == [],
            do: :timer.tc(fn -> :release_handler.install_release(String.to_charlist(vsn)) end),
            else: {0, {:late_old_code, late}}
        after
          resume_all.(paused)
        end

      kept = :persistent_term.get({:beam_hotswap, :kept_supervisors}, [])
      :persistent_term.erase({:beam_hotswap, :kept_supervisors})
      kids = :persistent_term.get({:beam_hotswap, :children_changed}, [])
      :persistent_term.erase({:beam_hotswap, :children_changed})

      case r do
        {:ok, from, _descr} ->
          {:ok,
           %{"from" => chars.(from), "install_ms" => div(us, 100) / 10, "runtime_keys" => keys,
             "consolidated_reloaded" => reload_consolidated.(vsn), "paused" => length(paused),
             "supervisors_kept" => kept, "children_changed" => kids}}

        {:late_old_code, late} ->
          {:late, Enum.map(Enum.take(late, 20), fn {p, h} -> describe_proc.(p, h) end)}

        other ->
          {:error, %{"install_ms" => div(us, 100) / 10, "error" => inspect(other, limit: 12, printable_limit: 200)}}
      end
    end

    check_rpc = fn expr, deadline ->
      run = fn ->
        try do
          {v, _} = Code.eval_string(expr, [], file: "hotswap-check")
          {v == true, inspect(v, limit: 20)}
        rescue
          e -> {false, Exception.message(e)}
        catch
          k, r -> {false, inspect({k, r})}
        end
      end

      Stream.repeatedly(fn -> run.() end)
      |> Enum.reduce_while(nil, fn {ok, why}, _ ->
        cond do
          ok -> {:halt, {true, why}}
          System.monotonic_time(:millisecond) >= deadline -> {:halt, {false, why}}
          true -> Process.sleep(200) && {:cont, nil}
        end
      end)
    end

    verify = fn vsn ->
      deadline = System.monotonic_time(:millisecond) + (hs["timeout_ms"] || 10_000)
      rels = releases.()
      {running, _perm} = running_of.(rels)
      entry = Enum.find(rels, &(&1["version"] == vsn)) || %{"libs" => []}

      want_app =
        Enum.find_value(entry["libs"], fn l ->
          if String.starts_with?(l, app_s <> "-"), do: String.replace_prefix(l, app_s <> "-", "")
        end)

      have_app = app_vsn.()

      started = Enum.any?(Application.started_applications(), fn {a, _, _} -> a == app end)

      base_ok = running == vsn and (want_app == nil or want_app == have_app) and started

      why =
        cond do
          running != vsn -> "release_handler runs #{inspect(running)}, not #{vsn}"
          want_app != nil and want_app != have_app -> "#{app_s} vsn is #{have_app}, release wants #{want_app}"
          not started -> "#{app_s} is not started"
          true -> "ok"
        end

      case {base_ok, hs["check_rpc"]} do
        {false, _} -> {false, why}
        {true, nil} -> {true, why}
        {true, expr} ->
          {ok, w} = check_rpc.(expr, deadline)
          {ok, if(ok, do: "ok", else: "rpc check #{inspect(expr)} returned #{w}")}
      end
    end

    commit = fn vsn ->
      {us, r} = :timer.tc(fn -> :release_handler.make_permanent(String.to_charlist(vsn)) end)
      {r, div(us, 100) / 10}
    end

    revert = fn old ->
      {running, perm} = running_of.(releases.())

      if running == old do
        r = if perm != old, do: elem(commit.(old), 0), else: :ok
        %{"reverted" => r == :ok, "revert_error" => if(r != :ok, do: inspect(r)), "revert_noop" => true}
      else
        rh = if hs["rehearse"], do: rehearse.(old), else: %{"ok" => true}
        # an explicit rollback honours old_code like a deploy (a revert after a failure does not ask)
        oc =
          if rh["ok"] && hs["op"] == "revert" && hs["old_code"],
            do: old_code_check.(edge_modules.(running, old)),
            else: %{"ok" => true}

        cond do
          not rh["ok"] ->
            f = hd(rh["failures"])
            %{"reverted" => false, "revert_rehearsal_failures" => rh["failures"],
              "revert_error" => "code_change rehearsal of the down edge failed: #{f["module"]}: #{f["error"]}"}

          not oc["ok"] ->
            %{"reverted" => false, "old_code_procs" => oc["old_code_procs"], "old_code_count" => oc["old_code_count"],
              "revert_error" => procs_line.(oc["old_code_procs"], "execute code the rollback replaces")}

          true ->
            case do_install.(old, [], MapSet.new()) do
              {:ok, info} ->
                {r, _} = commit.(old)

                %{"reverted" => r == :ok, "revert_install_ms" => info["install_ms"],
                  "revert_error" => if(r != :ok, do: inspect(r))}

              {:error, info} ->
                %{"reverted" => false, "revert_error" => info["error"]}
            end
        end
      end
    end

    state = fn extra ->
      rels = releases.()
      {running, perm} = running_of.(rels)

      Map.merge(
        %{"ok" => true, "running" => running, "permanent" => perm, "app_vsn" => app_vsn.(),
          "os_pid" => String.to_integer(System.pid()),
          "rh_pid" => inspect(Process.whereis(:release_handler)),
          "releases" => Enum.map(rels, &Map.take(&1, ["version", "status"])),
          "node_ms" => ms.(t0)},
        extra
      )
    end

    case hs["op"] do
      "info" ->
        state.(%{})

      "stop" ->
        # what `bin/APP stop` does, without a VM whose command line shows the cookie: an orderly
        # init:stop once this answer is on its way
        spawn(fn -> Process.sleep(100) && :init.stop() end)
        %{"ok" => true}

      "ready" ->
        deadline = System.monotonic_time(:millisecond) + (hs["timeout_ms"] || 30_000)

        ok =
          Enum.reduce_while(Stream.repeatedly(fn -> nil end), false, fn _, _ ->
            cond do
              match?({:started, _}, :init.get_status()) and
                  Enum.any?(Application.started_applications(), fn {a, _, _} -> a == app end) ->
                {:halt, true}
              System.monotonic_time(:millisecond) >= deadline -> {:halt, false}
              true -> Process.sleep(50) && {:cont, false}
            end
          end)

        state.(%{"ok" => ok, "error" => if(!ok, do: "#{app_s} did not start in time")})

      "unpack" ->
        vsn = hs["vsn"]
        created = ensure_releases.()

        r =
          if Enum.find(releases.(), &(&1["version"] == vsn)),
            do: :present,
            else: :release_handler.set_unpacked(String.to_charlist(hs["rel_file"]), [])

        state.(%{"ok" => not match?({:error, _}, r), "changed" => match?({:ok, _}, r),
                 "created_releases" => created, "error" => if(match?({:error, _}, r), do: inspect(r))})

      "install" ->
        vsn = hs["vsn"]
        created = ensure_releases.()
        rh0 = inspect(Process.whereis(:release_handler))
        state = fn extra -> state.(Map.put(extra, "rh_pid_before", rh0)) end
        rels0 = releases.()
        {running0, perm0} = running_of.(rels0)
        old = hs["old"] || running0

        # rehearse BEFORE registering the release: a refusal leaves release_handler untouched
        rh =
          if hs["rehearse"] && running0 != vsn do
            rehearse.(vsn)
          else
            %{"ok" => true, "warnings" => [], "rehearsed" => []}
          end

        # processes that a purge of the replaced modules would kill: refused before anything is
        # registered (or, under old_code = "kill", let through and counted)
        # the modules the edge loads or removes, read once for the checks before and after the load
        mods = if hs["old_code"], do: edge_modules.(running0, vsn), else: []
        oc = if rh["ok"] && hs["old_code"], do: old_code_check.(mods), else: %{"ok" => true}

        unpack =
          case {rh["ok"] && oc["ok"] && hs["rel_file"], Enum.find(rels0, &(&1["version"] == vsn))} do
            {false, _} -> :refused
            {nil, _} -> :skipped
            {_, %{}} -> :present
            {rf, nil} -> :release_handler.set_unpacked(String.to_charlist(rf), [])
          end

        rinfo = %{"rehearse_ms" => rh["rehearse_ms"], "rehearsal_warnings" => rh["warnings"],
                  "rehearsed" => rh["rehearsed"], "rehearsal_peer" => rh["peer"],
                  "old_code_ms" => oc["old_code_ms"], "old_code_waited" => oc["old_code_waited"],
                  "old_code_count" => oc["old_code_count"],
                  "old_code_procs" => oc["old_code_procs"]}

        state = fn extra -> state.(Map.merge(rinfo, extra)) end

        cond do
          not rh["ok"] ->
            state.(%{"ok" => false, "stage" => "rehearse", "rehearsal_failures" => rh["failures"],
                     "error" => "code_change rehearsal failed", "created_releases" => created, "old" => old,
                     "unpack" => inspect(unpack)})

          not oc["ok"] ->
            state.(%{"ok" => false, "stage" => "old_code", "old_code_phase" => "before",
                     "created_releases" => created, "old" => old,
                     "error" => "processes execute code this upgrade replaces"})

          match?({:error, _}, unpack) ->
            state.(%{"ok" => false, "stage" => "unpack", "error" => inspect(unpack),
                     "created_releases" => created, "old" => old})

          running0 == vsn and (!hs["commit"] or perm0 == vsn) ->
            state.(%{"changed" => false, "stage" => "done", "old" => old, "created_releases" => created})

          true ->
            inst =
              if running0 == vsn,
                do: {:ok, %{"install_ms" => 0, "already_running" => true}},
                else: do_install.(vsn, mods, oc[:seen] || MapSet.new())

            case inst do
              {:late, procs} ->
                # refused before install_release ran: unregister what set_unpacked registered
                if match?({:ok, _}, unpack), do: :release_handler.remove_release(String.to_charlist(vsn))

                state.(%{"ok" => false, "stage" => "old_code", "old_code_phase" => "before",
                         "old_code_procs" => procs, "old_code_count" => length(procs), "old_code_late" => true,
                         "created_releases" => created, "old" => old,
                         "error" => "processes execute code this upgrade replaces"})

              {:error, info} ->
                state.(Map.merge(info, %{"ok" => false, "stage" => "install", "old" => old,
                                        "created_releases" => created, "unpack" => inspect(unpack)}))

              {:ok, info} ->
                after_oc = if hs["old_code"], do: old_code_after.(mods), else: %{"ok" => true}
                info = Map.merge(info, Map.take(after_oc, ["old_code_killed", "old_code_finishing",
                                                           "old_code_finishing_count"]))

                {vok, why} =
                  cond do
                    not after_oc["ok"] ->
                      {false, procs_line.(after_oc["old_code_procs"], "still ran the replaced code after the install")}

                    hs["verify"] ->
                      verify.(vsn)

                    true ->
                      {true, "not checked"}
                  end

                cond do
                  not vok ->
                    rv = if hs["revert_on_failure"], do: revert.(old), else: %{"reverted" => false}
                    {stage, err} = if after_oc["ok"], do: {"health", "health check failed: " <> why}, else: {"old_code", why}
                    state.(Map.merge(Map.merge(info, rv), %{"ok" => false, "stage" => stage,
                                     "error" => err, "old" => old, "old_code_procs" => after_oc["old_code_procs"],
                                     "created_releases" => created}))

                  hs["commit"] ->
                    {r, cms} = commit.(vsn)

                    if r == :ok do
                      state.(Map.merge(info, %{"changed" => true, "stage" => "done", "commit_ms" => cms,
                                               "old" => old, "created_releases" => created}))
                    else
                      rv = if hs["revert_on_failure"], do: revert.(old), else: %{"reverted" => false}
                      state.(Map.merge(Map.merge(info, rv), %{"ok" => false, "stage" => "commit",
                                       "error" => inspect(r), "old" => old, "created_releases" => created}))
                    end

                  true ->
                    state.(Map.merge(info, %{"changed" => true, "stage" => "installed", "old" => old,
                                             "created_releases" => created}))
                end
            end
        end

      "dump_releases" ->
        # release_handler's in-memory list (#state.releases): what it writes to RELEASES itself
        st = :sys.get_state(:release_handler, 10_000)

        rels =
          for {:release, name, vsn, erts, libs, status} <- elem(st, 4) do
            %{"name" => chars.(name), "version" => chars.(vsn),
              "erts" => if(is_list(erts), do: chars.(erts), else: nil), "status" => Atom.to_string(status),
              "libs" => for({a, v, d} <- libs, do: [Atom.to_string(a), chars.(v), chars.(d)])}
          end

        state.(%{"releases" => rels})

      "verify" ->
        {ok, why} = verify.(hs["vsn"])
        state.(%{"ok" => ok, "healthy" => ok, "error" => if(!ok, do: why)})

      "commit" ->
        vsn = hs["vsn"]
        {running0, perm0} = running_of.(releases.())

        cond do
          perm0 == vsn and running0 == vsn ->
            state.(%{"changed" => false})

          running0 != vsn ->
            state.(%{"ok" => false, "error" => "node runs #{inspect(running0)}, not #{vsn}: install it first"})

          true ->
            {r, cms} = commit.(vsn)
            state.(%{"ok" => r == :ok, "changed" => r == :ok, "commit_ms" => cms,
                     "error" => if(r != :ok, do: inspect(r))})
        end

      "revert" ->
        old = hs["vsn"]
        {running0, perm0} = running_of.(releases.())

        if running0 == old and perm0 == old do
          state.(%{"changed" => false, "reverted" => true})
        else
          rv = revert.(old)
          state.(Map.merge(rv, %{"ok" => rv["reverted"], "changed" => true, "from" => running0,
                                 "error" => rv["revert_error"]}))
        end

      "remove" ->
        res =
          for v <- hs["remove"] do
            {v, inspect(:release_handler.remove_release(String.to_charlist(v)))}
          end

        bad = for {v, r} <- res, r != ":ok", do: "#{v}: #{r}"
        state.(%{"ok" => bad == [], "removed" => for({v, ":ok"} <- res, do: v),
                 "error" => if(bad != [], do: Enum.join(bad, "; "))})

      other ->
        %{"ok" => false, "error" => "unknown op #{inspect(other)}"}
    end
  rescue
    e -> %{"ok" => false, "error" => Exception.format(:error, e, __STACKTRACE__)}
  catch
    k, r -> %{"ok" => false, "error" => Exception.format(k, r, __STACKTRACE__)}
  end

# the evaluation's value; the agent appends how it travels back (printed for `bin/APP rpc`,
# returned for erl_call)
hs_out = hs_json.(hs_json, hs_result)
