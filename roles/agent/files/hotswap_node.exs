# hotswap_node.exs -- evaluated INSIDE the running release node by ONE `bin/APP rpc` call.
#
# The agent (hotswap_agent.py) prepends one line `hs = %{...}` built from validated literals
# (op, app, versions, paths) and passes the whole text as the rpc expression.  Nothing here
# defines a module: everything is anonymous functions in the evaluation's binding.
# The result is printed as one line `HOTSWAP_RESULT <json>` on the caller's stdout.
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

    do_install = fn vsn ->
      keys = merge_runtime.(vsn)
      {us, r} = :timer.tc(fn -> :release_handler.install_release(String.to_charlist(vsn)) end)

      case r do
        {:ok, from, _descr} ->
          {:ok,
           %{"from" => chars.(from), "install_ms" => div(us, 100) / 10, "runtime_keys" => keys,
             "consolidated_reloaded" => reload_consolidated.(vsn)}}

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
        case do_install.(old) do
          {:ok, info} ->
            {r, _} = commit.(old)

            %{"reverted" => r == :ok, "revert_install_ms" => info["install_ms"],
              "revert_error" => if(r != :ok, do: inspect(r))}

          {:error, info} ->
            %{"reverted" => false, "revert_error" => info["error"]}
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

        unpack =
          case {hs["rel_file"], Enum.find(rels0, &(&1["version"] == vsn))} do
            {nil, _} -> :skipped
            {_, %{}} -> :present
            {rf, nil} -> :release_handler.set_unpacked(String.to_charlist(rf), [])
          end

        cond do
          match?({:error, _}, unpack) ->
            state.(%{"ok" => false, "stage" => "unpack", "error" => inspect(unpack),
                     "created_releases" => created, "old" => old})

          running0 == vsn and (!hs["commit"] or perm0 == vsn) ->
            state.(%{"changed" => false, "stage" => "done", "old" => old, "created_releases" => created})

          true ->
            inst =
              if running0 == vsn,
                do: {:ok, %{"install_ms" => 0, "already_running" => true}},
                else: do_install.(vsn)

            case inst do
              {:error, info} ->
                state.(Map.merge(info, %{"ok" => false, "stage" => "install", "old" => old,
                                        "created_releases" => created, "unpack" => inspect(unpack)}))

              {:ok, info} ->
                {vok, why} = if hs["verify"], do: verify.(vsn), else: {true, "not checked"}

                cond do
                  not vok ->
                    rv = if hs["revert_on_failure"], do: revert.(old), else: %{"reverted" => false}
                    state.(Map.merge(Map.merge(info, rv), %{"ok" => false, "stage" => "health",
                                     "error" => "health check failed: " <> why, "old" => old,
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

IO.puts("HOTSWAP_RESULT " <> hs_json.(hs_json, hs_result))
