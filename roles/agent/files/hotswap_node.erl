%% hotswap_node.erl -- evaluated INSIDE the running release node by ONE erl_call.
%%
%% This is NOT a module: it is an Erlang expression sequence for erl_eval (erl_scan:string,
%% erl_parse:parse_exprs, erl_eval:exprs), so nothing is compiled and the node needs only kernel,
%% stdlib and sasl (release_handler): it runs the same in a mix release and in a rebar3/relx one.
%% Everything is funs bound in the evaluation (erl_eval has no records, no macros, no local
%% functions).  The agent (hotswap_agent.py) prepends one expression `Hs = #{...},` built from
%% validated literals (op, app, versions, paths; strings are UTF-8 binaries, None is the atom nil).
%% The value of the sequence is one JSON text (a binary); erl_call returns it base64-encoded.
%%
%% Elixir is used only where it is loaded (a mix release): Kernel.inspect and Exception for the texts
%% of values and errors, Config.Reader for runtime.exs, Code.eval_string for an `rpc:` health check
%% (an Erlang expression on a node without Elixir).
%%
%% ops (op in Hs):
%%   "install"  -> ensure RELEASES, [set_unpacked], merge runtime config, install_release, verify
%%                 and (when commit) make_permanent; revert to old on failure
%%                 (revert_on_failure).  "hot" is the same op with everything switched on.
%%   "unpack"   -> ensure RELEASES + set_unpacked(rel_file)
%%   "verify"   -> default health check (+ optional rpc check expression)
%%   "commit"   -> make_permanent
%%   "revert"   -> install_release(old) (down edge) + make_permanent(old)
%%   "remove"   -> remove_release for each of remove
%%   "info"     -> which_releases, app vsn, os pid
%%   "ready"    -> wait until app is started (used after a cold start)
%%   "stop"     -> init:stop shortly after answering (the agent's stop without `bin/APP stop`)
%%   "dump_releases" -> release_handler's in-memory list of releases

HsLoaded = fun(HsMod) -> code:ensure_loaded(HsMod) =:= {module, HsMod} end,
HsEx = HsLoaded('Elixir.Kernel') andalso HsLoaded('Elixir.Exception'),

%% a value as text: Elixir's inspect where Elixir runs, else the Erlang term on one line
HsInspect = fun(HsV, HsLimit, HsPLimit) ->
    case HsEx of
        true ->
            'Elixir.Kernel':inspect(HsV, [{limit, HsLimit}, {printable_limit, HsPLimit}]);
        false ->
            HsV1 = case is_binary(HsV) andalso unicode:characters_to_binary(HsV) =:= HsV of
                       true -> unicode:characters_to_list(HsV);
                       false -> HsV
                   end,
            unicode:characters_to_binary(io_lib:format("~0tp", [HsV1], [{chars_limit, HsPLimit + 40 * HsLimit}]))
    end
end,
Inspect = fun(HsV) -> HsInspect(HsV, 50, 4096) end,

HsKey = fun(K) when is_binary(K) -> K;
           (K) when is_atom(K) -> atom_to_binary(K, utf8);
           (K) when is_list(K) -> unicode:characters_to_binary(K);
           (K) -> Inspect(K)
        end,

HsJson = fun Enc(V) when is_map(V), not is_map_key('__struct__', V) ->
                 [${, lists:join($,, [[Enc(HsKey(K)), $:, Enc(X)] || {K, X} <- maps:to_list(V)]), $}];
             Enc(V) when is_list(V) ->
                 [$[, lists:join($,, [Enc(X) || X <- V]), $]];
             Enc(V) when is_boolean(V) ->
                 atom_to_binary(V, utf8);
             Enc(nil) ->
                 <<"null">>;
             Enc(V) when is_integer(V) ->
                 integer_to_binary(V);
             Enc(V) when is_float(V) ->
                 float_to_binary(V, [{decimals, 3}, compact]);
             Enc(V) when is_atom(V) ->
                 Enc(atom_to_binary(V, utf8));
             Enc(V) when is_binary(V) ->
                 case unicode:characters_to_binary(V) of
                     V ->
                         Esc = fun($") -> <<"\\\"">>;
                                  ($\\) -> <<"\\\\">>;
                                  ($\n) -> <<"\\n">>;
                                  ($\r) -> <<"\\r">>;
                                  ($\t) -> <<"\\t">>;
                                  (C) when C < 16#20 ->
                                      H = integer_to_binary(C, 16),
                                      <<"\\u", (binary:copy(<<"0">>, 4 - byte_size(H)))/binary, H/binary>>;
                                  (C) -> <<C/utf8>>
                               end,
                         [$", [Esc(C) || <<C/utf8>> <= V], $"];
                     _ ->
                         Enc(Inspect(V))
                 end;
             Enc(V) ->
                 Enc(HsInspect(V, 50, 500))
         end,

HsResult =
  try
    Get = fun(K) -> maps:get(K, Hs, nil) end,
    Truthy = fun(V) -> V =/= nil andalso V =/= false end,
    Or = fun(V, D) -> case V =:= nil orelse V =:= false of true -> D; false -> V end end,
    Fmt = fun(F, A) -> unicode:characters_to_binary(io_lib:format(F, A)) end,
    Chars = fun(V) when is_binary(V) -> V;
               (V) when is_list(V) -> unicode:characters_to_binary(V);
               (V) when is_atom(V) -> atom_to_binary(V, utf8);
               (V) when is_integer(V) -> integer_to_binary(V);
               (V) -> Inspect(V)
            end,
    Cat = fun(L) -> iolist_to_binary([Chars(X) || X <- L]) end,
    Join = fun(L, Sep) -> iolist_to_binary(lists:join(Sep, [Chars(X) || X <- L])) end,
    Str = fun(V) -> unicode:characters_to_list(Chars(V)) end,
    Path = fun(Parts) -> filename:join([Chars(P) || P <- Parts]) end,
    Now = fun(Unit) -> erlang:monotonic_time(Unit) end,
    Sleep = fun(N) -> timer:sleep(N) end,
    StartsWith = fun(S, Pre) -> byte_size(S) >= byte_size(Pre) andalso binary:part(S, 0, byte_size(Pre)) =:= Pre end,
    EndsWith = fun(S, Suf) -> byte_size(S) >= byte_size(Suf) andalso
                              binary:part(S, byte_size(S) - byte_size(Suf), byte_size(Suf)) =:= Suf end,
    KwGet = fun(L, K, D) -> case lists:keyfind(K, 1, L) of {_, KV} -> KV; false -> D end end,
    %% texts of errors: Elixir's Exception where Elixir runs
    ExMsg = fun(R, St) ->
        case HsEx of
            true -> 'Elixir.Exception':message('Elixir.Exception':normalize(error, R, St));
            false -> Inspect(R)
        end
    end,
    Banner = fun(K, R, St) ->
        case HsEx of
            true ->
                Bn = 'Elixir.Exception':format_banner(K, R, St),
                case StartsWith(Bn, <<"** ">>) of true -> binary:part(Bn, 3, byte_size(Bn) - 3); false -> Bn end;
            false ->
                Fmt("~0tp ~0tp", [K, R])
        end
    end,
    FormatMfa = fun(M, F, A) ->
        case HsEx of
            true -> 'Elixir.Exception':format_mfa(M, F, A);
            false -> Fmt("~tw:~tw/~tw", [M, F, A])
        end
    end,
    %% "Mod.fun/arity" of a frame or a traced call (the module as inspect shows it)
    MfaText = fun(M, F, A) ->
        case HsEx of
            true -> Cat([Inspect(M), ".", F, "/", A]);
            false -> Cat([Fmt("~tw", [M]), ":", F, "/", A])
        end
    end,

    AppS = Get(<<"app">>),
    App = binary_to_atom(AppS, utf8),
    Root = Chars(code:root_dir()),
    RelDir = Path([Root, "releases"]),
    T0 = Now(microsecond),
    Ms = fun(T) -> ((Now(microsecond) - T) div 100) / 10 end,

    Releases = fun() ->
        [#{<<"version">> => Chars(RVsn), <<"status">> => atom_to_binary(RSt, utf8), <<"libs">> => [Chars(L) || L <- RLibs]}
         || {_RName, RVsn, RLibs, RSt} <- release_handler:which_releases()]
    end,

    RunningOf = fun(Rels) ->
        Cur = [R || R <- Rels, maps:get(<<"status">>, R) =:= <<"current">>],
        Perm = [R || R <- Rels, maps:get(<<"status">>, R) =:= <<"permanent">>],
        Running = case Cur ++ Perm of [R1 | _] -> maps:get(<<"version">>, R1); [] -> nil end,
        PermV = case Perm of [P1 | _] -> maps:get(<<"version">>, P1); [] -> nil end,
        {Running, PermV}
    end,

    AppVsn = fun() ->
        case application:get_key(App, vsn) of
            {ok, AV} -> Chars(AV);
            _ -> <<>>
        end
    end,

    %% RELEASES must exist (downgrades crash without it); release_handler reads it only at start.
    EnsureReleases = fun() ->
        case filelib:is_file(Path([RelDir, "RELEASES"])) of
            true ->
                false;
            false ->
                {_, BootVsn} = init:script_id(),
                RelFile = Path([RelDir, Chars(BootVsn), <<AppS/binary, ".rel">>]),
                ok = release_handler:create_RELEASES("", Str(RelDir), Str(RelFile), []),
                ok = supervisor:terminate_child(sasl_sup, release_handler),
                {ok, _} = supervisor:restart_child(sasl_sup, release_handler),
                true
        end
    end,

    Commit = fun(CVsn) ->
        {CUs, CR} = timer:tc(fun() -> release_handler:make_permanent(Str(CVsn)) end),
        {CR, (CUs div 100) / 10}
    end,

    State = fun(Extra) ->
        SRels = Releases(),
        {SRunning, SPerm} = RunningOf(SRels),
        RhPid = case whereis(release_handler) of undefined -> nil; RhP -> RhP end,
        maps:merge(
          #{<<"ok">> => true, <<"running">> => SRunning, <<"permanent">> => SPerm, <<"app_vsn">> => AppVsn(),
            <<"os_pid">> => list_to_integer(os:getpid()),
            <<"rh_pid">> => Inspect(RhPid),
            <<"releases">> => [maps:with([<<"version">>, <<"status">>], SR) || SR <- SRels],
            <<"node_ms">> => Ms(T0)},
          Extra)
    end,

    IsError = fun({error, _}) -> true; (_) -> false end,

    case Get(<<"op">>) of
        <<"info">> ->
            State(#{});

        <<"stop">> ->
            %% what `bin/APP stop` does, without a VM whose command line shows the cookie: an orderly
            %% init:stop once this answer is on its way
            spawn(fun() -> timer:sleep(100), init:stop() end),
            #{<<"ok">> => true};

        <<"ready">> ->
            RDeadline = Now(millisecond) + Or(Get(<<"timeout_ms">>), 30000),
            ROk = (fun RL() ->
                       Up = case init:get_status() of
                                {started, _} -> lists:keymember(App, 1, application:which_applications());
                                _ -> false
                            end,
                       if
                           Up -> true;
                           true ->
                               case Now(millisecond) >= RDeadline of
                                   true -> false;
                                   false -> Sleep(50), RL()
                               end
                       end
                   end)(),
            State(#{<<"ok">> => ROk, <<"error">> => case ROk of true -> nil; false -> Cat([AppS, " did not start in time"]) end});

        <<"unpack">> ->
            UVsn = Get(<<"vsn">>),
            UCreated = EnsureReleases(),
            UR = case [E || E <- Releases(), maps:get(<<"version">>, E) =:= UVsn] of
                     [_ | _] -> present;
                     [] -> release_handler:set_unpacked(Str(Get(<<"rel_file">>)), [])
                 end,
            State(#{<<"ok">> => not IsError(UR), <<"changed">> => case UR of {ok, _} -> true; _ -> false end,
                    <<"created_releases">> => UCreated,
                    <<"error">> => case IsError(UR) of true -> Inspect(UR); false -> nil end});

        <<"dump_releases">> ->
            %% release_handler's in-memory list (#state.releases): what it writes to RELEASES itself
            RhState = sys:get_state(release_handler, 10000),
            DRels = [#{<<"name">> => Chars(DName), <<"version">> => Chars(DVsn),
                       <<"erts">> => case is_list(DErts) of true -> Chars(DErts); false -> nil end,
                       <<"status">> => atom_to_binary(DStatus, utf8),
                       <<"libs">> => [[atom_to_binary(LA, utf8), Chars(LV), Chars(LD)] || {LA, LV, LD} <- DLibs]}
                     || {release, DName, DVsn, DErts, DLibs, DStatus} <- element(5, RhState)],
            State(#{<<"releases">> => DRels});

        <<"commit">> ->
            CVsn = Get(<<"vsn">>),
            {CRunning0, CPerm0} = RunningOf(Releases()),
            if
                CPerm0 =:= CVsn andalso CRunning0 =:= CVsn ->
                    State(#{<<"changed">> => false});
                CRunning0 =/= CVsn ->
                    State(#{<<"ok">> => false, <<"error">> => Cat(["node runs ", Inspect(CRunning0), ", not ", CVsn,
                                                                   ": install it first"])});
                true ->
                    {CR, Cms} = Commit(CVsn),
                    State(#{<<"ok">> => CR =:= ok, <<"changed">> => CR =:= ok, <<"commit_ms">> => Cms,
                            <<"error">> => case CR of ok -> nil; _ -> Inspect(CR) end})
            end;

        <<"remove">> ->
            RmRes = [{RmV, release_handler:remove_release(Str(RmV))} || RmV <- Get(<<"remove">>)],
            Bad = [Cat([RmV, ": ", Inspect(RmR)]) || {RmV, RmR} <- RmRes, RmR =/= ok],
            State(#{<<"ok">> => Bad =:= [], <<"removed">> => [RmV || {RmV, ok} <- RmRes],
                    <<"error">> => case Bad of [] -> nil; _ -> Join(Bad, "; ") end});

        HeavyOp when HeavyOp =:= <<"install">>; HeavyOp =:= <<"verify">>; HeavyOp =:= <<"revert">> ->
            %% the code only install, verify and revert use: erl_eval analyses a fun when it makes it,
            %% so the other ops do not pay for these
            %% install_release re-reads only releases/VSN/sys.config: evaluate the version's config
            %% providers (runtime.exs) here, with the node's own OS env, and merge the result in (mix
            %% releases: Config.Reader; a release without Elixir has no runtime.exs).
            MergeRuntime = fun(MVsn) ->
                MDir = Path([RelDir, MVsn]),
                Sys = Path([MDir, "sys.config"]),
                Orig = <<Sys/binary, ".orig">>,
                Runtime = Path([MDir, "runtime.exs"]),
                case filelib:is_file(Runtime) andalso filelib:is_file(Sys) andalso HsLoaded('Elixir.Config.Reader') of
                    true ->
                        case filelib:is_file(Orig) of
                            true -> ok;
                            false -> {ok, _} = file:copy(Sys, Orig)
                        end,
                        {ok, Text} = file:read_file(Orig),
                        Header = lists:takewhile(fun(Ln) -> StartsWith(Ln, <<"%%">>) end, binary:split(Text, <<"\n">>, [global])),
                        {ok, [Base]} = file:consult(Orig),
                        Cp = case lists:keyfind(elixir, 1, Base) of
                                 {elixir, EKv} when is_list(EKv) -> KwGet(EKv, config_provider_init, nil);
                                 _ -> nil
                             end,
                        Provs = case Cp of
                                    #{providers := Ps} when is_list(Ps) -> Ps;
                                    _ -> []
                                end,
                        Opts = case [P || P <- Provs, is_tuple(P), tuple_size(P) >= 1, element(1, P) =:= 'Elixir.Config.Reader'] of
                                   [{_, {_, O}} | _] -> O;
                                   _ -> [{env, prod}, {target, host}, {imports, disabled}]
                               end,
                        Rt = 'Elixir.Config.Reader':'read!'(Runtime, Opts),
                        Merged = 'Elixir.Config.Reader':merge(Base, Rt),
                        Tmp = <<Sys/binary, ".hotswap-tmp">>,
                        ok = file:write_file(Tmp, [Join(Header, "\n"), "\n",
                                                   unicode:characters_to_binary(io_lib:format("~tp.~n", [Merged]))]),
                        ok = file:rename(Tmp, Sys),
                        [atom_to_binary(RA, utf8) || {RA, _} <- Rt];
                    false ->
                        []
                end
            end,

            %% A new protocol implementation is unknown to the old consolidated dispatch module:
            %% reload the target version's consolidated modules whose code differs.
            ReloadConsolidated = fun(CVsn) ->
                CDir = Path([RelDir, CVsn, "consolidated"]),
                case file:list_dir(CDir) of
                    {ok, CFiles} ->
                        lists:flatmap(
                          fun(CF) ->
                              CPath = Path([CDir, CF]),
                              CMod = list_to_atom(filename:rootname(CF)),
                              {ok, {_, Md5}} = beam_lib:md5(Str(CPath)),
                              Same = code:is_loaded(CMod) =/= false andalso
                                  (try CMod:module_info(md5) =:= Md5 catch _:_ -> false end),
                              case Same of
                                  true ->
                                      [];
                                  false ->
                                      code:purge(CMod),
                                      {module, _} = code:load_abs(filename:rootname(Str(CPath))),
                                      [atom_to_binary(CMod, utf8)]
                              end
                          end,
                          [F || F <- lists:sort(CFiles), filename:extension(F) =:= ".beam"]);
                    _ ->
                        []
                end
            end,

            %% ---------------------------------------------------------------- code_change rehearsal
            %% If code_change raises during install_release, release_handler is past the point of no
            %% return and reboots the VM in place (init:restart): every process's state is lost.  So before
            %% installing, run each {code_change, up|down, [{Mod, Extra}]} of the edge on a COPY of the
            %% live state, with the target code, in a scratch peer node (not distributed: it talks to us
            %% over its stdin/stdout only, holds no cookie, registers nowhere) and refuse when one raises.
            Consult1 = fun(CP) ->
                case file:consult(Str(CP)) of
                    {ok, [CT]} -> {ok, CT};
                    COther -> {error, COther}
                end
            end,

            %% as release_handler_1:get_vsn/1: a string vsn as is, [Term] -> Term
            NormVsn = fun(NV) ->
                case is_list(NV) andalso NV =/= [] andalso lists:all(fun(C) -> is_integer(C) andalso C >= $\s andalso C =< 255 end, NV) of
                    true -> NV;
                    false -> case NV of [One] -> One; _ -> NV end
                end
            end,

            BeamVsn = fun(BP) ->
                case beam_lib:version(BP) of
                    {ok, {_, BV}} -> NormVsn(BV);
                    _ -> undefined
                end
            end,

            TermKinds = fun(Term) ->
                IsEts = fun(Ref) -> try not lists:member(ets:info(Ref, id), [undefined, nil]) catch _:_ -> false end end,
                Walk = fun W(_, {Acc, N}) when N > 200000 -> {Acc, N};
                           W(T, {Acc, N}) when is_pid(T) -> {Acc#{<<"a pid">> => true}, N + 1};
                           W(T, {Acc, N}) when is_port(T) -> {Acc#{<<"a port">> => true}, N + 1};
                           W(T, {Acc, N}) when is_function(T) -> {Acc#{<<"a fun">> => true}, N + 1};
                           W(T, {Acc, N}) when is_reference(T) ->
                               K = case IsEts(T) of true -> <<"an ETS table id (a reference)">>; false -> <<"a reference">> end,
                               {Acc#{K => true}, N + 1};
                           W(T, {Acc, N}) when is_tuple(T) ->
                               lists:foldl(fun(X, St) -> W(X, St) end, {Acc, N + 1}, tuple_to_list(T));
                           W(T, {Acc, N}) when is_map(T) ->
                               lists:foldl(fun({K, X}, St) -> W(X, W(K, St)) end, {Acc, N + 1}, maps:to_list(T));
                           W([H | Tl], {Acc, N}) -> W(Tl, W(H, {Acc, N + 1}));
                           W(_, St) -> St
                       end,
                {Kinds, _} = Walk(Term, {#{}, 0}),
                lists:sort(maps:keys(Kinds))
            end,

            %% The callback module sys:change_code will call for a gen_server: $initial_call can lie (Agent
            %% overwrites it with its fun's module), so read it where gen_server keeps it: the Mod argument
            %% of gen_server:loop/7 (y(2) of its frame while it waits in receive).  nil when not found.
            GenServerCb = fun(GPid, Beh) ->
                try
                    gen_server = Beh,
                    {backtrace, Bt} = erlang:process_info(GPid, backtrace),
                    {match, [A]} = re:run(Bt, "^Program counter: \\S+ \\(gen_server:loop/7 \\+ \\d+\\)\\ny\\(0\\)[^\\n]*"
                                              "\\ny\\(1\\)[^\\n]*\\ny\\(2\\)\\s+(\\S+)\\n", [{capture, all_but_first, binary}]),
                    GM = binary_to_existing_atom(string:trim(A, both, "'"), utf8),
                    true = code:is_loaded(GM) =/= false andalso erlang:function_exported(GM, code_change, 3),
                    GM
                catch _:_ -> nil
                end
            end,

            %% {mode, instructions} of the relup edge running -> vsn, or nil
            FindEdge = fun(FRunning, FVsn) ->
                Up = case Consult1(Path([RelDir, FVsn, "relup"])) of
                         {ok, {_, Ups, _}} ->
                             case lists:keyfind(Str(FRunning), 1, Ups) of
                                 {_, _, UI} -> {up, UI};
                                 _ -> nil
                             end;
                         _ -> nil
                     end,
                case Up of
                    nil ->
                        case Consult1(Path([RelDir, FRunning, "relup"])) of
                            {ok, {_, _, Downs}} ->
                                case lists:keyfind(Str(FVsn), 1, Downs) of
                                    {_, _, DI} -> {down, DI};
                                    _ -> nil
                                end;
                            _ -> nil
                        end;
                    _ -> Up
                end
            end,

            %% ---------------------------------------------------------------- processes in old code
            %% A process still executing a module's code when the relup loads a new version of it runs
            %% "old" code afterwards; the purge that follows (make_permanent, or the next load) KILLS it.
            %% Before the point of no return: find the processes with a frame in a module the edge replaces
            %% (or holding its already-old code), give them a bounded time to leave, then refuse -- or, when
            %% the user opted in (old_code = "kill"), go on and let the purge kill them after a second wait.
            EdgeModules = fun(ERunning, EVsn) ->
                Edge = case ERunning =/= nil andalso ERunning =/= EVsn of
                           true -> FindEdge(ERunning, EVsn);
                           false -> nil
                       end,
                case Edge of
                    {_, EInstrs} ->
                        lists:uniq([EM || I <- EInstrs,
                                          EM <- case I of
                                                    {load, {M1, _, _}} -> [M1];
                                                    {remove, {M1, _, _}} -> [M1];
                                                    _ -> []
                                                end]);
                    nil ->
                        []
                end
            end,

            FrameRe = "\\(('(?:[^'\\\\]|\\\\.)*'|[a-z][A-Za-z0-9_@]*):('(?:[^'\\\\]|\\\\.)*'|[^/\\s]+)/(\\d+) \\+ \\d+\\)",

            %% [{module, "Mod.fun/arity"}] of pid's stack frames, innermost first
            FramesOf = fun(FPid) ->
                case erlang:process_info(FPid, backtrace) of
                    {backtrace, FBt} ->
                        case re:run(FBt, FrameRe, [global, {capture, all_but_first, binary}]) of
                            {match, Found} ->
                                [begin
                                     FM = string:trim(FMq, both, "'"),
                                     {FM, MfaText(binary_to_atom(FM, utf8), string:trim(FF, both, "'"), FA)}
                                 end || [FMq, FF, FA] <- Found];
                            nomatch -> []
                        end;
                    _ ->
                        []
                end
            end,

            %% the modules of `mods` that pid executes (a frame in its stack) or holds old code of
            HeldBy = fun(HPid, HMods, HOlds) ->
                Names = maps:from_list([{HN, true} || {HN, _} <- FramesOf(HPid)]),
                [HM || HM <- HMods,
                       maps:is_key(atom_to_binary(HM, utf8), Names) orelse
                           (lists:member(HM, HOlds) andalso erlang:check_process_code(HPid, HM) =:= true)]
            end,

            DescribeProc = fun(DPid, Held) ->
                HeldS = [atom_to_binary(DM, utf8) || DM <- Held],
                Where = case [DMfa || {DM, DMfa} <- FramesOf(DPid), lists:member(DM, HeldS)] of
                            [W1 | _] -> W1;
                            [] -> nil
                        end,
                Info = case erlang:process_info(DPid, [registered_name, current_function, initial_call, dictionary]) of
                           IL when is_list(IL) -> IL;
                           _ -> []
                       end,
                Name = case KwGet(Info, registered_name, nil) of
                           RN when is_atom(RN), RN =/= nil -> Inspect(RN);
                           _ -> Inspect(DPid)
                       end,
                Init = KwGet(KwGet(Info, dictionary, []), '$initial_call', KwGet(Info, initial_call, nil)),
                FmtMfa = fun({M2, F2, A2}) -> FormatMfa(M2, F2, A2);
                            (Other) -> Inspect(Other)
                         end,
                #{<<"pid">> => Inspect(DPid), <<"name">> => Name, <<"initial_call">> => FmtMfa(Init),
                  <<"current_function">> => FmtMfa(KwGet(Info, current_function, nil)), <<"in">> => Where,
                  <<"modules">> => [Inspect(DM) || DM <- Held]}
            end,

            %% [{pid, [mods]}] of processes in `pids` (all when nil) that hold code of `mods`: before the load, by
            %% their stack frames (a frame names a module, not a version of it); after it, old code only
            Holders = fun(OMods, OPids, AfterLoad) ->
                Olds = [OM || OM <- OMods, erlang:check_old_code(OM)],
                Me = self(),
                HeldOf = fun(OPid) ->
                    case AfterLoad of
                        true -> [OM || OM <- Olds, erlang:check_process_code(OPid, OM) =:= true];
                        false -> HeldBy(OPid, OMods, Olds)
                    end
                end,
                [{OPid, OHeld} || OPid <- case OPids of nil -> erlang:processes(); _ -> OPids end,
                                  OPid =/= Me, OHeld <- [HeldOf(OPid)], OHeld =/= []]
            end,

            %% wait up to wait_ms for the holders to leave; returns those still there
            WaitOut = fun(WMods, WFound, WaitMs) ->
                Deadline = Now(millisecond) + WaitMs,
                Loop = fun L(Left0) ->
                    Left = Holders(WMods, [P || {P, _} <- Left0], true),
                    case Left =:= [] orelse Now(millisecond) >= Deadline of
                        true -> Left;
                        false -> Sleep(100), L(Left)
                    end
                end,
                Loop(WFound)
            end,

            %% Before the load, "leaving" the code means finishing what it does (a request mid-flight) -- or
            %% re-entering it through a fully qualified call (Mod.loop/1, ?MODULE:loop/1): such a call goes
            %% to the NEW code once it is loaded, so a process seen making one moves over by itself.  Watch the
            %% holders' global calls into the modules for up to wait_ms (call trace on those pids only,
            %% removed at the end); returns {still holding and never seen re-entering, seen re-entering}.
            WatchOut = fun(WMods, WFound, WaitMs) ->
                Me = self(),
                Deadline = Now(millisecond) + WaitMs,
                WPids = [P || {P, _} <- WFound],
                ModNames = [atom_to_binary(M, utf8) || M <- WMods],
                %% per process, the functions of the replaced modules on its stack: only a qualified call to one of
                %% those re-enters what it runs (a call to another function of the module returns to the old frame)
                OnStack = maps:from_list([{P, [Mfa || {M, Mfa} <- FramesOf(P), lists:member(M, ModNames)]} || P <- WPids]),
                [try erlang:trace_pattern({M, '_', '_'}, true, [global]) catch _:_ -> ok end || M <- WMods],
                Traced = [P || P <- WPids, (try erlang:trace(P, true, [call, {tracer, Me}]) =:= 1 catch _:_ -> false end)],
                try
                    %% the clock is read on every turn: a steady stream of trace messages must not keep it waiting
                    Loop = fun L(Left0, Movers, NextCheck) ->
                        TNow = Now(millisecond),
                        case TNow >= NextCheck of
                            true ->
                                Left = Holders(WMods, [P || {P, _} <- Left0], false),
                                Stuck = [E || {P, _} = E <- Left, not maps:is_key(P, Movers)],
                                case Stuck =:= [] orelse TNow >= Deadline of
                                    true -> {Stuck, [E || {P, _} = E <- Left, maps:is_key(P, Movers)]};
                                    false -> L(Left, Movers, TNow + 100)
                                end;
                            false ->
                                receive
                                    {trace, TPid, call, {TM, TF, TArgs}} ->
                                        TMfa = MfaText(TM, atom_to_binary(TF, utf8), integer_to_binary(length(TArgs))),
                                        ReEnters = lists:member(TMfa, maps:get(TPid, OnStack, [])),
                                        L(Left0, case ReEnters of true -> Movers#{TPid => true}; false -> Movers end, NextCheck)
                                after NextCheck - TNow ->
                                    L(Left0, Movers, NextCheck)
                                end
                        end
                    end,
                    Loop(WFound, #{}, Now(millisecond) + 100)
                after
                    [try erlang:trace(P, false, [call]) catch _:_ -> 0 end || P <- Traced],
                    [try erlang:trace_pattern({M, '_', '_'}, false, [global]) catch _:_ -> ok end || M <- WMods],
                    Flush = fun FL() ->
                        receive
                            {trace, _, _, _} -> FL()
                        after 0 -> ok
                        end
                    end,
                    Flush()
                end
            end,

            %% "N process(es) ...: NAME in Mod.fun/arity, ..." for a message
            ProcsLine = fun(PProcs, What) ->
                Cat([integer_to_binary(length(PProcs)), " process(es) ", What, ": ",
                     Join([Cat([maps:get(<<"name">>, Pr), " in ", Or(maps:get(<<"in">>, Pr, nil), maps:get(<<"current_function">>, Pr, nil))])
                           || Pr <- lists:sublist(PProcs, 5)], ", ")])
            end,

            %% ---------------------------------------------------------------- network-facing processes
            %% The processes of Ranch listeners (Cowboy, Plug.Cowboy, Phoenix): acceptors, and below each
            %% connection supervisor one process per client connection plus Cowboy's request processes.  A
            %% connection process cannot move to a new version of its protocol's code (its state is a record of
            %% the old version), but it ENDS: when its client closes, its keep-alive limit or idle timeout is
            %% reached, its request is answered.  Such "finishers" run on the code they started with; the
            %% relup's post-purge is soft, so the old code goes when the last of them ends.  While the relup
            %% loads, all listener processes are suspended: no request ever runs against half-loaded code.
            DictOf = fun(DP) ->
                case erlang:process_info(DP, dictionary) of
                    {dictionary, D} -> D;
                    _ -> []
                end
            end,

            InitialOf = fun(IP, ID) ->
                case lists:keyfind('$initial_call', 1, ID) of
                    {_, IMfa} -> IMfa;
                    false ->
                        case erlang:process_info(IP, initial_call) of
                            {initial_call, IC} -> IC;
                            _ -> nil
                        end
                end
            end,

            %% #{listener_sups, conns_sups} (sets as maps) of the Ranch listeners running now
            Listeners = fun() ->
                lists:foldl(
                  fun(LP, #{listener_sups := LS, conns_sups := CS} = Acc) ->
                      case InitialOf(LP, DictOf(LP)) of
                          {supervisor, ranch_listener_sup, _} -> Acc#{listener_sups := LS#{LP => true}};
                          {ranch_conns_sup, _, _} -> Acc#{conns_sups := CS#{LP => true}};
                          _ -> Acc
                      end
                  end,
                  #{listener_sups => #{}, conns_sups => #{}}, erlang:processes())
            end,

            %% the parent (OTP 25+) -- acceptors are plain spawn_links without $ancestors
            ParentOf = fun(PP) ->
                try erlang:process_info(PP, parent) of
                    {parent, Q} when is_pid(Q) -> Q;
                    _ -> nil
                catch _:_ -> nil
                end
            end,

            Below = fun(BP, BD, BSet) ->
                lists:any(fun(A) -> is_pid(A) andalso maps:is_key(A, BSet) end, KwGet(BD, '$ancestors', []))
                orelse (fun Up(_, 0) -> false;
                            Up(Q, N) ->
                                case ParentOf(Q) of
                                    nil -> false;
                                    UpP -> maps:is_key(UpP, BSet) orelse Up(UpP, N - 1)
                                end
                        end)(BP, 8)
            end,

            IsFinisher = fun(FP, #{conns_sups := FCS}) -> map_size(FCS) > 0 andalso Below(FP, DictOf(FP), FCS) end,

            %% the listener processes that may run during the load (never a supervisor: release_handler asks them)
            Serving = fun(#{listener_sups := SLS}) ->
                Me = self(),
                [SP || SP <- erlang:processes(), SP =/= Me, SD <- [DictOf(SP)], Below(SP, SD, SLS),
                       case InitialOf(SP, SD) of
                           {supervisor, _, _} -> false;
                           {ranch_conns_sup, _, _} -> false;
                           _ -> true
                       end]
            end,

            SuspendAll = fun(SPids) ->
                [SP || SP <- SPids, (try erlang:suspend_process(SP) catch _:_ -> false end)]
            end,

            ResumeAll = fun(RPids) ->
                lists:foreach(fun(RP) -> try erlang:resume_process(RP) catch _:_ -> ok end end, RPids)
            end,

            %% the connection processes a connections supervisor reports as supervisors (Cowboy started with
            %% cowboy:start_clear/start_tls): release_handler asks each of them sys:get_status and which_children
            %% while it walks the tree, so they must keep answering -- a suspended one times the install out
            Asked = fun(#{conns_sups := ACS}) ->
                maps:from_list([{CP, true} || CS <- maps:keys(ACS),
                                              {_, CP, supervisor, _} <- (try supervisor:which_children(CS)
                                                                         catch _:_ -> [] end),
                                              is_pid(CP)])
            end,

            %% instead of holding such a process, its TCP sockets stop delivering data: it stays idle and
            %% answers, and no new request starts.  [{Port, ActiveBefore}] of the sockets quieted now.
            QuietSockets = fun(QPids) ->
                [{QPort, QPrev} || QP <- QPids,
                                   {links, QLs} <- [try erlang:process_info(QP, links) catch _:_ -> undefined end],
                                   QPort <- QLs, is_port(QPort),
                                   erlang:port_info(QPort, name) =:= {name, "tcp_inet"},
                                   {ok, [{active, QPrev}]} <- [try inet:getopts(QPort, [active]) catch _:_ -> error end],
                                   QPrev =/= false,
                                   ok =:= (try inet:setopts(QPort, [{active, false}]) catch _:_ -> error end)]
            end,

            LoudSockets = fun(LQuiet) ->
                lists:foreach(fun({LPort, LPrev}) -> try inet:setopts(LPort, [{active, LPrev}]) catch _:_ -> ok end end,
                              LQuiet)
            end,

            %% data the quieted processes already hold in their mailboxes (up to 200 ms) is let through first:
            %% a request it starts is a process like any other request's, held by the second pass
            Drain = fun(DPids) ->
                (fun DL(0) -> ok;
                     DL(N) ->
                         Busy = [DP || DP <- DPids,
                                       {messages, DMs} <- [try erlang:process_info(DP, messages) catch _:_ -> undefined end],
                                       lists:any(fun(DM) -> is_tuple(DM) andalso tuple_size(DM) =:= 3
                                                                andalso element(1, DM) =:= tcp end, DMs)],
                         case Busy of
                             [] -> ok;
                             _ -> Sleep(5), DL(N - 1)
                         end
                 end)(40)
            end,

            %% A connection release_handler asks (above) that still runs code an earlier upgrade replaced
            %% would answer with that code and continue in the current one (sys calls Mod:system_continue),
            %% its state shaped for the old -- on the rehearsal's or the install's look at the tree.  Before
            %% either, its socket is quieted, the request in flight may end (old_code_wait_ms), and the connection
            %% is closed: an idle HTTP keep-alive connection, which clients reopen.  #{closed, busy}: busy
            %% ones (a request still running) are closed too when `all`, else they refuse the install and
            %% no connection is closed.
            CloseJumpers = fun(JAll) ->
                JAsked = Asked(Listeners()),
                JOlds = case map_size(JAsked) of
                            0 -> [];
                            _ -> [OM || {OM, _} <- code:all_loaded(), erlang:check_old_code(OM)]
                        end,
                Jumpers = case JOlds of
                              [] -> [];
                              _ -> Holders(JOlds, maps:keys(JAsked), true)
                          end,
                JQuiet = QuietSockets([JP || {JP, _} <- Jumpers]),
                Busy = fun() -> [JE || {JP, _} = JE <- Jumpers, is_process_alive(JP),
                                       (try supervisor:which_children(JP) catch _:_ -> [] end) =/= []] end,
                JDeadline = Now(millisecond) + Or(Get(<<"old_code_wait_ms">>), 5000),
                JBusy = case Jumpers of
                            [] -> [];
                            _ -> (fun JL() ->
                                      case {Busy(), Now(millisecond) >= JDeadline} of
                                          {[], _} -> [];
                                          {JB, true} -> JB;
                                          _ -> Sleep(20), JL()
                                      end
                                  end)()
                        end,
                %% a busy one refuses the install (unless `all`): then nothing is closed either
                Closed = case JBusy =:= [] orelse JAll of
                             true -> [JE || {JP, _} = JE <- Jumpers, is_process_alive(JP)];
                             false -> []
                         end,
                ClosedDescr = [DescribeProc(JP, JH) || {JP, JH} <- lists:sublist(Closed, 20)],
                lists:foreach(fun({JP, _}) -> exit(JP, kill) end, Closed),
                LoudSockets(JQuiet),
                #{closed => ClosedDescr, busy => case JAll of true -> []; false -> JBusy end}
            end,

            %% the policy for a busy one: refuse while old-code checks are on and do not kill
            JumpAll = fun() -> not (Truthy(Get(<<"old_code">>)) andalso Get(<<"old_code">>) =/= <<"kill">>) end,
            JumperRefusal = fun(JB) ->
                #{<<"ok">> => false, <<"old_code_conns">> => true, <<"old_code_count">> => length(JB),
                  <<"old_code_procs">> => [DescribeProc(JP, JH) || {JP, JH} <- lists:sublist(JB, 20)], seen => #{}}
            end,

            %% before install, for the modules the edge replaces: #{"ok" => true, ...} or a refusal naming the processes
            OldCodeCheck = fun(CMods) ->
                TO = Now(microsecond),
                CLs = Listeners(),
                {Finishing, Found} =
                    case CMods of
                        [] -> {[], []};
                        _ -> lists:partition(fun({P, _}) -> IsFinisher(P, CLs) end, Holders(CMods, nil, false))
                    end,
                {Left, Movers} =
                    case Found of
                        [] -> {[], []};
                        _ -> WatchOut(CMods, Found, Or(Get(<<"old_code_wait_ms">>), 5000))
                    end,
                Policy = Or(Get(<<"old_code">>), <<"refuse">>),
                #{<<"ok">> => Left =:= [] orelse Policy =:= <<"kill">>, <<"old_code_ms">> => ((Now(microsecond) - TO) div 100) / 10,
                  <<"old_code_waited">> => length(Found) - length(Left), <<"old_code_movers">> => length(Movers),
                  <<"old_code_procs">> => [DescribeProc(P, H) || {P, H} <- lists:sublist(Left, 20)],
                  <<"old_code_count">> => length(Left), <<"old_code_finishing">> => length(Finishing),
                  seen => maps:from_list([{P, true} || {P, _} <- Found])}
            end,

            %% after install_release: processes still on the old code of the edge's modules get a second
            %% bounded wait (a fully qualified call moves them to the new code), then soft purge; what is
            %% left is purged brutally only under old_code = "kill" (their supervisors restart them).
            %% Connection processes (finishers) are not waited for: they end on the old code, which
            %% release_handler soft-purges then (the relup's post-purge is soft).
            OldCodeAfter = fun(AMods) ->
                AOlds = [M || M <- AMods, erlang:check_old_code(M)],
                ALs = Listeners(),
                {AFinishing, AFound} =
                    case AOlds of
                        [] -> {[], []};
                        _ -> lists:partition(fun({P, _}) -> IsFinisher(P, ALs) end, Holders(AOlds, nil, true))
                    end,
                ALeft = case AFound of
                            [] -> [];
                            _ -> WaitOut(AOlds, AFound, Or(Get(<<"old_code_wait_ms">>), 5000))
                        end,
                lists:foreach(fun(M) -> code:soft_purge(M) end, AOlds),
                Fin = #{<<"old_code_finishing">> => [DescribeProc(P, H) || {P, H} <- lists:sublist(AFinishing, 20)],
                        <<"old_code_finishing_count">> => length(AFinishing)},
                case {ALeft, Get(<<"old_code">>)} of
                    {[], _} ->
                        Fin#{<<"ok">> => true};
                    {_, <<"kill">>} ->
                        Killed = [DescribeProc(P, H) || {P, H} <- ALeft ++ AFinishing],
                        lists:foreach(fun(M) -> code:purge(M) end, AOlds),
                        #{<<"ok">> => true, <<"old_code_killed">> => Killed};
                    _ ->
                        #{<<"ok">> => false, <<"old_code_procs">> => [DescribeProc(P, H) || {P, H} <- ALeft]}
                end
            end,

            Rehearse = fun(RVsn) ->
                TR = Now(microsecond),
                {RRunning, _} = RunningOf(Releases()),
                REdge = case RRunning =/= nil andalso RRunning =/= RVsn of
                            true -> FindEdge(RRunning, RVsn);
                            false -> nil
                        end,
                AllChanges = case REdge of
                              {EMode, EInstrs} ->
                                  [{Or(CM, EMode), CMod, CExtra}
                                   || I <- EInstrs,
                                      {CM, CMods} <- case I of
                                                         {code_change, M1, Ms1} -> [{M1, Ms1}];
                                                         {code_change, Ms1} -> [{up, Ms1}];
                                                         _ -> []
                                                     end,
                                      {CMod, CExtra} <- CMods];
                              nil -> []
                          end,
                %% the build lists, per edge, the modules whose code_change does something: one that returns the
                %% state it is given (as `use GenServer` writes it) needs no rehearsal, and an edge with none
                %% starts no scratch VM (releases/V/hotswap_rehearse.config, V the release whose relup holds it)
                Changes = case REdge of
                              {RMode, _} when AllChanges =/= [] ->
                                  {RDir, ROther} = case RMode of up -> {RVsn, RRunning}; _ -> {RRunning, RVsn} end,
                                  case Consult1(Path([RelDir, RDir, "hotswap_rehearse.config"])) of
                                      {ok, {rehearse, REdges}} when is_list(REdges) ->
                                          case [RMs || {RM, RV, RMs} <- REdges, RM =:= RMode, is_list(RV), is_list(RMs),
                                                       Chars(RV) =:= Chars(ROther)] of
                                              [Keep | _] -> [KC || {_, KMod, _} = KC <- AllChanges, lists:member(KMod, Keep)];
                                              [] -> AllChanges
                                          end;
                                      _ -> AllChanges
                                  end;
                              _ -> AllChanges
                          end,
                Done = fun(Res) -> Res#{<<"rehearse_ms">> => ((Now(microsecond) - TR) div 100) / 10,
                                        <<"rehearse_skipped">> => length(AllChanges) - length(Changes)} end,
                case Changes of
                    [] ->
                        Done(#{<<"ok">> => true, <<"rehearsed">> => [], <<"warnings">> => [], <<"peer">> => false});
                    _ ->
                        {Mode, Instrs} = REdge,
                        %% where the target code of each module lives: {load_object_code, {App, AppVsn, Mods}}
                        TargetDirs = maps:from_list([{LA, Path([Root, "lib", Cat([LA, "-", LAV]), "ebin"])}
                                                     || {load_object_code, {LA, LAV, _}} <- Instrs]),
                        Procs = try release_handler_1:get_supervised_procs() catch _:_ -> [] end,
                        %% the peer's code path: the target's ebin dirs first (up), then our path without the
                        %% dirs of the apps that change and with the target's consolidated protocols
                        CurPath = [Chars(D) || D <- code:get_path()],
                        ChangedApps = [atom_to_binary(A, utf8) || A <- maps:keys(TargetDirs)],
                        LibPre = <<(Path([Root, "lib"]))/binary, "/">>,
                        AppOf = fun(D) ->
                            case StartsWith(D, LibPre) of
                                true ->
                                    Rest = binary:part(D, byte_size(LibPre), byte_size(D) - byte_size(LibPre)),
                                    case binary:split(Rest, <<"/">>, [global]) of
                                        [Lib, <<"ebin">>] ->
                                            Join(lists:droplast(binary:split(Lib, <<"-">>, [global])), "-");
                                        _ -> nil
                                    end;
                                false -> nil
                            end
                        end,
                        NewCons = Path([RelDir, case Mode of up -> RVsn; _ -> RRunning end, "consolidated"]),
                        PeerPath =
                            case Mode of
                                up ->
                                    maps:values(TargetDirs) ++
                                        [NewCons || filelib:is_dir(NewCons)] ++
                                        [D || D <- CurPath,
                                              not (lists:member(AppOf(D), ChangedApps) orelse
                                                   (StartsWith(D, <<RelDir/binary, "/">>) andalso EndsWith(D, <<"/consolidated">>)))];
                                _ ->
                                    %% down: code_change runs in the CURRENT module, before the old code is loaded
                                    CurPath
                            end,
                        Warnings = ets:new(hs_warn, [bag, public]),
                        Warn = fun(Wt) -> ets:insert(Warnings, {Wt}) end,
                        Jobs = [{JM, JMod, JExtra, JPid} || {JM, JMod, JExtra} <- Changes,
                                                            {_Sup, _Name, JPid, JMods} <- Procs,
                                                            is_list(JMods), lists:member(JMod, JMods)],
                        {_, BootVsn} = init:script_id(),
                        Clean = Path([RelDir, RVsn, "start_clean.boot"]),
                        Boot = case filelib:is_file(Clean) of
                                   true -> filename:rootname(Clean);
                                   false -> Path([RelDir, Chars(BootVsn), "start_clean"])
                               end,
                        Erl = Path([Root, Cat(["erts-", erlang:system_info(version)]), "bin", "erl"]),
                        Res =
                            case Jobs of
                                [] ->
                                    #{<<"ok">> => true, <<"rehearsed">> => [], <<"peer">> => false};
                                _ ->
                                    %% one scheduler, no async threads: a scratch VM for a few calls, as light on the host's CPU as it gets
                                    Args = [Str(X) || X <- ["+S", "1:1", "+SDcpu", "1:1", "+SDio", "1", "+A", "0",
                                                            "-boot", Boot, "-boot_var", "RELEASE_LIB", Path([Root, "lib"]),
                                                            "-kernel", "logger_level", "critical",
                                                            "-eval", "spawn(fun() -> timer:sleep(120000), erlang:halt(3) end)", "-pa"
                                                            | PeerPath]],
                                    PeerOpts = #{exec => Str(Erl), args => Args, connection => standard_io, wait_boot => 30000,
                                                 env => [{"ERL_FLAGS", false}, {"ERL_AFLAGS", false}, {"ERL_ZFLAGS", false}]},
                                    Started = try peer:start(PeerOpts)
                                              catch error:SE:SSt -> {error, ExMsg(SE, SSt)};
                                                    SK:SR -> {error, Inspect({SK, SR})}
                                              end,
                                    case Started of
                                        {ok, Peer, _} ->
                                            try
                                                Failures = lists:flatmap(
                                                  fun({JM, JMod, JExtra, JPid}) ->
                                                      Name = Inspect(JMod),
                                                      {Beh, Cb} =
                                                          try
                                                              {status, _, {module, Beh0}, _} = sys:get_status(JPid, 5000),
                                                              {dictionary, JD} = erlang:process_info(JPid, dictionary),
                                                              Cb0 = case lists:keyfind('$initial_call', 1, JD) of
                                                                        {_, {supervisor, _, _}} -> supervisor;
                                                                        Ic ->
                                                                            case GenServerCb(JPid, Beh0) of
                                                                                nil ->
                                                                                    case Ic of
                                                                                        {_, {IcM, init, 1}} -> IcM;
                                                                                        _ -> JMod
                                                                                    end;
                                                                                GCb -> GCb
                                                                            end
                                                                    end,
                                                              {Beh0, Cb0}
                                                          catch _:_ -> {nil, nil}
                                                          end,
                                                      OldVsn =
                                                          case JM of
                                                              up ->
                                                                  case code:which(JMod) of
                                                                      WF when is_list(WF) -> BeamVsn(WF);
                                                                      _ -> undefined
                                                                  end;
                                                              down ->
                                                                  Tgt = case [Path([Root, "lib", Cat([TA, "-", TAV]), "ebin",
                                                                                    Cat([atom_to_binary(JMod, utf8), ".beam"])])
                                                                              || {load_object_code, {TA, TAV, TMs}} <- Instrs,
                                                                                 lists:member(JMod, TMs)] of
                                                                            [T1 | _] -> T1;
                                                                            [] -> nil
                                                                        end,
                                                                  {down, case Tgt of nil -> undefined; _ -> BeamVsn(Str(Tgt)) end}
                                                          end,
                                                      JState = try {ok, sys:get_state(JPid, 5000)}
                                                               catch error:GE:GSt -> {error, ExMsg(GE, GSt)};
                                                                     GK:GR -> {error, Inspect({GK, GR})}
                                                               end,
                                                      case {Beh, JState} of
                                                          {_, {error, Why}} ->
                                                              Warn(Cat([Name, " (", Inspect(JPid), "): could not read its state (", Why,
                                                                        "); not rehearsed"])),
                                                              [];
                                                          {B, {ok, St}} when B =:= gen_server; B =:= gen_statem ->
                                                              case Cb =/= supervisor of
                                                                  true ->
                                                                      case TermKinds(St) of
                                                                          [] -> ok;
                                                                          Kinds -> Warn(Cat([Name, " state holds ", Join(Kinds, ", "),
                                                                                             ": the rehearsal ran on a copy"]))
                                                                      end;
                                                                  false -> ok
                                                              end,
                                                              {CallArgs, Want} =
                                                                  case B of
                                                                      gen_statem -> {SS, SD} = St, {[OldVsn, SS, SD, JExtra], 3};
                                                                      _ -> {[OldVsn, St, JExtra], 2}
                                                                  end,
                                                              Outcome =
                                                                  try {ok, peer:call(Peer, Cb, code_change, CallArgs, 10000)}
                                                                  catch exit:{timeout, _} -> {raised, <<"gave no answer within 10 s">>};
                                                                        exit:timeout -> {raised, <<"gave no answer within 10 s">>};
                                                                        OK:OR:OSt -> {raised, Cat(["raised ", Banner(OK, OR, OSt)])}
                                                                  end,
                                                              case Outcome of
                                                                  {ok, Rr} when is_tuple(Rr), tuple_size(Rr) =:= Want, element(1, Rr) =:= ok ->
                                                                      [];
                                                                  {ok, Rr} ->
                                                                      [#{<<"module">> => Name, <<"pid">> => Inspect(JPid),
                                                                         <<"callback">> => Inspect(Cb), <<"old_vsn">> => Inspect(OldVsn),
                                                                         <<"error">> => Cat(["returned ", HsInspect(Rr, 10, 200)])}];
                                                                  {raised, RWhy} ->
                                                                      [#{<<"module">> => Name, <<"pid">> => Inspect(JPid),
                                                                         <<"callback">> => Inspect(Cb), <<"old_vsn">> => Inspect(OldVsn),
                                                                         <<"error">> => Chars(string:slice(RWhy, 0, 600))}]
                                                              end;
                                                          {B, _} ->
                                                              Warn(Cat([Name, " (", Inspect(JPid), ") is a ", Inspect(B),
                                                                        " process: its code_change was not rehearsed"])),
                                                              []
                                                      end
                                                  end, Jobs),
                                                #{<<"ok">> => Failures =:= [], <<"failures">> => Failures, <<"peer">> => true,
                                                  <<"rehearsed">> => [Cat([Inspect(JMod), " ", Inspect(JPid)]) || {_, JMod, _, JPid} <- Jobs]}
                                            after
                                                try peer:stop(Peer) catch _:_ -> ok end
                                            end;
                                        POther ->
                                            Warn(Cat(["the rehearsal could not run (scratch node did not start: ",
                                                      HsInspect(POther, 8, 200), "); installing unrehearsed"])),
                                            #{<<"ok">> => true, <<"rehearsed">> => [], <<"peer">> => false}
                                    end
                            end,
                        Ws = lists:uniq([Wt || {Wt} <- ets:tab2list(Warnings)]),
                        ets:delete(Warnings),
                        Done(maps:merge(Res, #{<<"warnings">> => Ws, <<"mode">> => atom_to_binary(Mode, utf8)}))
                end
            end,

            %% held: the modules the edge replaces, for the last look (empty: no look); seen: the processes the
            %% check already judged (movers, and under kill the ones let through)
            DoInstall = fun(IVsn, IHeld, ISeen) ->
                Keys = MergeRuntime(IVsn),
                persistent_term:erase({beam_hotswap, kept_supervisors}),
                persistent_term:erase({beam_hotswap, children_changed}),
                ILs = Listeners(),
                %% never hold a process the relup itself suspends for its code_change (release_handler's
                %% sys:suspend would time out on it and skip its code_change)
                {RunningNow, _} = RunningOf(Releases()),
                IEdge = case RunningNow =/= nil andalso RunningNow =/= IVsn of
                            true -> FindEdge(RunningNow, IVsn);
                            false -> nil
                        end,
                Updated = case IEdge of
                              {_, UInstrs} ->
                                  maps:from_list([{case is_tuple(UM) of true -> element(1, UM); false -> UM end, true}
                                                  || {suspend, UMs} <- UInstrs, UM <- UMs]);
                              nil -> #{}
                          end,
                IAsked = Asked(ILs),
                Holdable = fun(HPids) ->
                    [SP || SP <- HPids, not maps:is_key(SP, IAsked),
                           case InitialOf(SP, DictOf(SP)) of
                               {SM, _, _} -> not maps:is_key(SM, Updated);
                               _ -> true
                           end]
                end,
                Paused0 = SuspendAll(Holdable(Serving(ILs))),
                Quiet = case map_size(IAsked) of
                            0 -> [];
                            _ ->
                                Q1 = QuietSockets(maps:keys(IAsked)),
                                Drain(maps:keys(IAsked)),
                                %% a process that read its mailbox may have asked for data again
                                Q1 ++ [QE || {QPort, _} = QE <- QuietSockets(maps:keys(IAsked)),
                                             not lists:keymember(QPort, 1, Q1)]
                        end,
                Paused = case map_size(IAsked) of
                             0 -> Paused0;
                             _ -> Paused0 ++ SuspendAll(Holdable(Serving(ILs) -- Paused0))
                         end,
                %% the last look, with the listeners held: a process that entered the replaced code since the
                %% check (a connection opened meanwhile is a finisher; anything else is refused) stops the install
                Late = case IHeld =:= [] orelse Get(<<"old_code">>) =:= <<"kill">> of
                           true -> [];
                           false -> [E || {P, _} = E <- Holders(IHeld, nil, false), not maps:is_key(P, ISeen), not IsFinisher(P, ILs)]
                       end,
                {Us, R} =
                    try
                        case Late of
                            [] -> timer:tc(fun() -> release_handler:install_release(Str(IVsn)) end);
                            _ -> {0, {late_old_code, Late}}
                        end
                    after
                        ResumeAll(Paused),
                        LoudSockets(Quiet)
                    end,
                Kept = persistent_term:get({beam_hotswap, kept_supervisors}, []),
                persistent_term:erase({beam_hotswap, kept_supervisors}),
                Kids = persistent_term:get({beam_hotswap, children_changed}, []),
                persistent_term:erase({beam_hotswap, children_changed}),
                case R of
                    {ok, From, _Descr} ->
                        {ok, #{<<"from">> => Chars(From), <<"install_ms">> => (Us div 100) / 10, <<"runtime_keys">> => Keys,
                               <<"consolidated_reloaded">> => ReloadConsolidated(IVsn), <<"paused">> => length(Paused),
                               <<"quieted">> => length(Quiet),
                               <<"supervisors_kept">> => Kept, <<"children_changed">> => Kids}};
                    {late_old_code, LateProcs} ->
                        {late, [DescribeProc(P, H) || {P, H} <- lists:sublist(LateProcs, 20)]};
                    IOther ->
                        {error, #{<<"install_ms">> => (Us div 100) / 10, <<"error">> => HsInspect(IOther, 12, 200)}}
                end
            end,

            %% the `rpc:` health check: an Elixir expression in a mix release, an Erlang one without Elixir
            CheckRpc = fun(Expr, Deadline) ->
                Run = fun() ->
                    try
                        CV = case HsLoaded('Elixir.Code') of
                                 true ->
                                     {CV0, _} = 'Elixir.Code':eval_string(Expr, [], [{file, <<"hotswap-check">>}]),
                                     CV0;
                                 false ->
                                     Src = string:trim(unicode:characters_to_list(Expr)),
                                     {ok, CToks, _} = erl_scan:string(case lists:last(Src) of $. -> Src; _ -> Src ++ "." end),
                                     {ok, CEs} = erl_parse:parse_exprs(CToks),
                                     {value, CV0, _} = erl_eval:exprs(CEs, []),
                                     CV0
                             end,
                        {CV =:= true, HsInspect(CV, 20, 4096)}
                    catch error:CE:CSt -> {false, ExMsg(CE, CSt)};
                          CK:CR -> {false, Inspect({CK, CR})}
                    end
                end,
                Loop = fun L() ->
                    case Run() of
                        {true, Why} -> {true, Why};
                        {false, Why} ->
                            case Now(millisecond) >= Deadline of
                                true -> {false, Why};
                                false -> Sleep(200), L()
                            end
                    end
                end,
                Loop()
            end,

            Verify = fun(VVsn) ->
                Deadline = Now(millisecond) + Or(Get(<<"timeout_ms">>), 10000),
                VRels = Releases(),
                {VRunning, _} = RunningOf(VRels),
                Entry = case [E || E <- VRels, maps:get(<<"version">>, E) =:= VVsn] of
                            [E1 | _] -> E1;
                            [] -> #{<<"libs">> => []}
                        end,
                Pre = <<AppS/binary, "-">>,
                WantApp = case [binary:part(Lb, byte_size(Pre), byte_size(Lb) - byte_size(Pre))
                                || Lb <- maps:get(<<"libs">>, Entry), StartsWith(Lb, Pre)] of
                              [WA | _] -> WA;
                              [] -> nil
                          end,
                HaveApp = AppVsn(),
                Started = lists:keymember(App, 1, application:which_applications()),
                BaseOk = VRunning =:= VVsn andalso (WantApp =:= nil orelse WantApp =:= HaveApp) andalso Started,
                Why = if
                          VRunning =/= VVsn -> Cat(["release_handler runs ", Inspect(VRunning), ", not ", VVsn]);
                          WantApp =/= nil andalso WantApp =/= HaveApp -> Cat([AppS, " vsn is ", HaveApp, ", release wants ", WantApp]);
                          not Started -> Cat([AppS, " is not started"]);
                          true -> <<"ok">>
                      end,
                case {BaseOk, Get(<<"check_rpc">>)} of
                    {false, _} -> {false, Why};
                    {true, nil} -> {true, Why};
                    {true, Expr} ->
                        {Ok, W} = CheckRpc(Expr, Deadline),
                        {Ok, case Ok of
                                 true -> <<"ok">>;
                                 false -> Cat(["rpc check ", Inspect(Expr), " returned ", W])
                             end}
                end
            end,

            Revert = fun(Old) ->
                {VRunning, VPerm} = RunningOf(Releases()),
                case VRunning =:= Old of
                    true ->
                        VR = case VPerm =/= Old of
                                 true -> element(1, Commit(Old));
                                 false -> ok
                             end,
                        #{<<"reverted">> => VR =:= ok, <<"revert_error">> => case VR of ok -> nil; _ -> Inspect(VR) end,
                          <<"revert_noop">> => true};
                    false ->
                        %% an explicit rollback honours old_code like a deploy (a revert after a failure does not ask)
                        RJ = CloseJumpers(Get(<<"op">>) =/= <<"revert">> orelse JumpAll()),
                        Rh = case Truthy(Get(<<"rehearse">>)) andalso maps:get(busy, RJ) =:= [] of
                                 true -> Rehearse(Old);
                                 false -> #{<<"ok">> => true}
                             end,
                        Oc = case maps:get(busy, RJ) of
                                 [_ | _] = RB ->
                                     JumperRefusal(RB);
                                 [] ->
                                     case maps:get(<<"ok">>, Rh) andalso Get(<<"op">>) =:= <<"revert">> andalso Truthy(Get(<<"old_code">>)) of
                                         true -> OldCodeCheck(EdgeModules(VRunning, Old));
                                         false -> #{<<"ok">> => true}
                                     end
                             end,
                        case {maps:get(<<"ok">>, Rh), maps:get(<<"ok">>, Oc)} of
                            {false, _} ->
                                [F | _] = maps:get(<<"failures">>, Rh),
                                #{<<"reverted">> => false, <<"revert_rehearsal_failures">> => maps:get(<<"failures">>, Rh),
                                  <<"revert_error">> => Cat(["code_change rehearsal of the down edge failed: ",
                                                             maps:get(<<"module">>, F), ": ", maps:get(<<"error">>, F)])};
                            {_, false} ->
                                #{<<"reverted">> => false, <<"old_code_procs">> => maps:get(<<"old_code_procs">>, Oc),
                                  <<"old_code_count">> => maps:get(<<"old_code_count">>, Oc),
                                  <<"old_code_conns">> => maps:get(<<"old_code_conns">>, Oc, false),
                                  <<"revert_error">> => ProcsLine(maps:get(<<"old_code_procs">>, Oc),
                                                                  case maps:get(<<"old_code_conns">>, Oc, false) of
                                                                      true -> "are connections still serving a request on code an earlier upgrade replaced";
                                                                      false -> "execute code the rollback replaces"
                                                                  end)};
                            _ ->
                                case DoInstall(Old, [], #{}) of
                                    {ok, RInfo} ->
                                        {RR, _} = Commit(Old),
                                        #{<<"reverted">> => RR =:= ok, <<"revert_install_ms">> => maps:get(<<"install_ms">>, RInfo),
                                          <<"revert_conns_closed">> => maps:get(closed, RJ),
                                          <<"revert_error">> => case RR of ok -> nil; _ -> Inspect(RR) end};
                                    {error, RInfo} ->
                                        #{<<"reverted">> => false, <<"revert_error">> => maps:get(<<"error">>, RInfo)};
                                    {late, _} ->
                                        %% not reached: the revert has no last look (held is empty)
                                        #{<<"reverted">> => false, <<"revert_error">> => <<"late old code">>}
                                end
                        end
                end
            end,

            case HeavyOp of
                <<"install">> ->
                    Vsn = Get(<<"vsn">>),
                    Created = EnsureReleases(),
                    Rh0 = Inspect(case whereis(release_handler) of undefined -> nil; RhP0 -> RhP0 end),
                    Rels0 = Releases(),
                    {Running0, Perm0} = RunningOf(Rels0),
                    Old = Or(Get(<<"old">>), Running0),

                    %% connections on superseded code, before anything looks at the tree
                    IJ = case Running0 =/= Vsn of
                             true -> CloseJumpers(JumpAll());
                             false -> #{closed => [], busy => []}
                         end,

                    %% rehearse BEFORE registering the release: a refusal leaves release_handler untouched
                    Rh = case Truthy(Get(<<"rehearse">>)) andalso Running0 =/= Vsn andalso maps:get(busy, IJ) =:= [] of
                             true -> Rehearse(Vsn);
                             false -> #{<<"ok">> => true, <<"warnings">> => [], <<"rehearsed">> => []}
                         end,
                    RhOk = maps:get(<<"ok">>, Rh),

                    %% processes that a purge of the replaced modules would kill: refused before anything is
                    %% registered (or, under old_code = "kill", let through and counted)
                    %% the modules the edge loads or removes, read once for the checks before and after the load
                    OldCodeOn = Truthy(Get(<<"old_code">>)),
                    Mods = case OldCodeOn of true -> EdgeModules(Running0, Vsn); false -> [] end,
                    Oc = case {maps:get(busy, IJ), RhOk andalso OldCodeOn} of
                             {[_ | _] = IB, _} -> JumperRefusal(IB);
                             {[], true} -> OldCodeCheck(Mods);
                             {[], false} -> #{<<"ok">> => true}
                         end,
                    OcOk = maps:get(<<"ok">>, Oc),

                    Present = [E || E <- Rels0, maps:get(<<"version">>, E) =:= Vsn] =/= [],
                    Unpack = case {RhOk andalso OcOk, Get(<<"rel_file">>)} of
                                 {false, _} -> refused;
                                 {true, nil} -> skipped;
                                 {true, _} when Present -> present;
                                 {true, RF} -> release_handler:set_unpacked(Str(RF), [])
                             end,

                    RInfo = #{<<"rehearse_ms">> => maps:get(<<"rehearse_ms">>, Rh, nil),
                              <<"rehearsal_warnings">> => maps:get(<<"warnings">>, Rh, nil),
                              <<"rehearsed">> => maps:get(<<"rehearsed">>, Rh, nil),
                              <<"rehearsal_peer">> => maps:get(<<"peer">>, Rh, nil),
                              <<"rehearse_skipped">> => maps:get(<<"rehearse_skipped">>, Rh, nil),
                              <<"old_code_ms">> => maps:get(<<"old_code_ms">>, Oc, nil),
                              <<"old_code_waited">> => maps:get(<<"old_code_waited">>, Oc, nil),
                              <<"old_code_count">> => maps:get(<<"old_code_count">>, Oc, nil),
                              <<"old_code_procs">> => maps:get(<<"old_code_procs">>, Oc, nil)},
                    IState = fun(Extra) -> State(maps:put(<<"rh_pid_before">>, Rh0, maps:merge(RInfo, Extra))) end,
                    Base = #{<<"created_releases">> => Created, <<"old">> => Old, <<"conns_closed">> => maps:get(closed, IJ),
                             <<"old_code_conns">> => maps:get(<<"old_code_conns">>, Oc, false)},
                    UnpackErr = IsError(Unpack),
                    NoChange = Running0 =:= Vsn andalso (not Truthy(Get(<<"commit">>)) orelse Perm0 =:= Vsn),

                    if
                        not RhOk ->
                            IState(Base#{<<"ok">> => false, <<"stage">> => <<"rehearse">>,
                                         <<"rehearsal_failures">> => maps:get(<<"failures">>, Rh, nil),
                                         <<"error">> => <<"code_change rehearsal failed">>, <<"unpack">> => Inspect(Unpack)});
                        not OcOk ->
                            IState(Base#{<<"ok">> => false, <<"stage">> => <<"old_code">>, <<"old_code_phase">> => <<"before">>,
                                         <<"error">> => <<"processes execute code this upgrade replaces">>});
                        UnpackErr ->
                            IState(Base#{<<"ok">> => false, <<"stage">> => <<"unpack">>, <<"error">> => Inspect(Unpack)});
                        NoChange ->
                            IState(Base#{<<"changed">> => false, <<"stage">> => <<"done">>});
                        true ->
                            Inst = case Running0 =:= Vsn of
                                       true -> {ok, #{<<"install_ms">> => 0, <<"already_running">> => true}};
                                       false -> DoInstall(Vsn, Mods, maps:get(seen, Oc, #{}))
                                   end,
                            case Inst of
                                {late, LProcs} ->
                                    %% refused before install_release ran: unregister what set_unpacked registered
                                    case Unpack of
                                        {ok, _} -> release_handler:remove_release(Str(Vsn));
                                        _ -> ok
                                    end,
                                    IState(Base#{<<"ok">> => false, <<"stage">> => <<"old_code">>, <<"old_code_phase">> => <<"before">>,
                                                 <<"old_code_procs">> => LProcs, <<"old_code_count">> => length(LProcs),
                                                 <<"old_code_late">> => true,
                                                 <<"error">> => <<"processes execute code this upgrade replaces">>});
                                {error, EInfo} ->
                                    IState(maps:merge(EInfo, Base#{<<"ok">> => false, <<"stage">> => <<"install">>,
                                                                   <<"unpack">> => Inspect(Unpack)}));
                                {ok, Info0} ->
                                    AfterOc = case OldCodeOn of true -> OldCodeAfter(Mods); false -> #{<<"ok">> => true} end,
                                    AfterOk = maps:get(<<"ok">>, AfterOc),
                                    Info = maps:merge(Info0, maps:with([<<"old_code_killed">>, <<"old_code_finishing">>,
                                                                        <<"old_code_finishing_count">>], AfterOc)),
                                    {VOk, Why} =
                                        case {AfterOk, Truthy(Get(<<"verify">>))} of
                                            {false, _} ->
                                                {false, ProcsLine(maps:get(<<"old_code_procs">>, AfterOc),
                                                                  "still ran the replaced code after the install")};
                                            {true, true} -> Verify(Vsn);
                                            {true, false} -> {true, <<"not checked">>}
                                        end,
                                    RevertOr = fun() ->
                                        case Truthy(Get(<<"revert_on_failure">>)) of
                                            true -> Revert(Old);
                                            false -> #{<<"reverted">> => false}
                                        end
                                    end,
                                    if
                                        not VOk ->
                                            Rv = RevertOr(),
                                            {Stage, Err} = case AfterOk of
                                                               true -> {<<"health">>, Cat(["health check failed: ", Why])};
                                                               false -> {<<"old_code">>, Why}
                                                           end,
                                            IState(maps:merge(maps:merge(Info, Rv),
                                                              Base#{<<"ok">> => false, <<"stage">> => Stage, <<"error">> => Err,
                                                                    <<"old_code_procs">> => maps:get(<<"old_code_procs">>, AfterOc, nil)}));
                                        true ->
                                            case Truthy(Get(<<"commit">>)) of
                                                true ->
                                                    {CR, Cms} = Commit(Vsn),
                                                    case CR of
                                                        ok ->
                                                            IState(maps:merge(Info, Base#{<<"changed">> => true, <<"stage">> => <<"done">>,
                                                                                          <<"commit_ms">> => Cms}));
                                                        _ ->
                                                            Rv = RevertOr(),
                                                            IState(maps:merge(maps:merge(Info, Rv),
                                                                              Base#{<<"ok">> => false, <<"stage">> => <<"commit">>,
                                                                                    <<"error">> => Inspect(CR)}))
                                                    end;
                                                false ->
                                                    IState(maps:merge(Info, Base#{<<"changed">> => true, <<"stage">> => <<"installed">>}))
                                            end
                                    end
                            end
                    end;

                <<"verify">> ->
                    {HOk, HWhy} = Verify(Get(<<"vsn">>)),
                    State(#{<<"ok">> => HOk, <<"healthy">> => HOk, <<"error">> => case HOk of true -> nil; false -> HWhy end});

                <<"revert">> ->
                    ROld = Get(<<"vsn">>),
                    {RRunning0, RPerm0} = RunningOf(Releases()),
                    case RRunning0 =:= ROld andalso RPerm0 =:= ROld of
                        true ->
                            State(#{<<"changed">> => false, <<"reverted">> => true});
                        false ->
                            Rv = Revert(ROld),
                            State(maps:merge(Rv, #{<<"ok">> => maps:get(<<"reverted">>, Rv), <<"changed">> => true,
                                                   <<"from">> => RRunning0, <<"error">> => maps:get(<<"revert_error">>, Rv, nil)}))
                    end
            end;

        OtherOp ->
            #{<<"ok">> => false, <<"error">> => Cat(["unknown op ", Inspect(OtherOp)])}
    end
  catch
    HsK:HsR:HsSt ->
        HsErr = case HsEx of
                    true -> 'Elixir.Exception':format(HsK, HsR, HsSt);
                    false -> unicode:characters_to_binary(erl_error:format_exception(HsK, HsR, HsSt))
                end,
        #{<<"ok">> => false, <<"error">> => HsErr}
  end,

%% the evaluation's value: one JSON text
unicode:characters_to_binary(HsJson(HsResult)).
