# A relay used from Elixir: this VM is the rendezvous and the relay
# (:macula_relay_node.enable/1 with Elixir callbacks); two peer VMs behind
# "symmetric NATs" (their advertised profile) connect with the connector's
# defaults and end up relayed through it.

# Runs in the peer VMs (loaded there from its object code): a process that
# owns the connection its call makes and keeps every message it gets.
{:module, _, holder_beam, _} =
  defmodule MaculaNat.RelayTestHolder do
    def start(name, m, f, a) do
      parent = self()

      pid =
        spawn(fn ->
          Process.register(self(), name)
          send(parent, {:registered, self()})
          loop(apply(m, f, a), [])
        end)

      receive do
        {:registered, ^pid} -> :ok
      after
        5000 -> {:error, :not_registered}
      end
    end

    def result(name), do: ask(name, fn r, _ -> r end)
    def info(name, key), do: ask(name, fn r, _ -> :macula_connection.get_info(conn(r), key) end)
    def send_term(name, term), do: ask(name, fn r, _ -> :macula_connection.send(conn(r), term) end)
    def received(name), do: ask(name, fn _, events -> for {:macula_connection, _, {:message, t}} <- events, do: t end)
    def stop(name), do: send(name, :stop) && :ok

    def set_profile(:symmetric) do
      {:ok, sig} = :macula_nat_coordinator.signal()
      :macula_nat_nif.signal_set_profile(sig, %{mapping: :pd, filtering: :pd, allocation: :rd})
    end

    defp ask(name, fun) do
      ref = make_ref()
      send(name, {:ask, self(), ref, fun})

      receive do
        {^ref, answer} -> answer
      after
        30_000 -> {:error, :holder_timeout}
      end
    end

    defp loop(result, acc) do
      receive do
        {:ask, from, ref, fun} ->
          send(from, {ref, fun.(result, Enum.reverse(acc))})
          loop(result, acc)

        :stop ->
          :ok

        m ->
          loop(result, [m | acc])
      end
    end

    defp conn({:ok, c}), do: c
    defp conn({:ok, c, _method}), do: c
  end

:persistent_term.put({MaculaNat.RelayTestHolder, :beam}, holder_beam)

defmodule MaculaNat.RelayNodeTest do
  use ExUnit.Case, async: false

  alias MaculaNat.RelayTestHolder, as: Holder

  setup do
    Application.stop(:macula_nat)
    :ok = Application.put_env(:macula_nat, :listen_ip, {127, 0, 0, 1})
    {:ok, _} = Application.ensure_all_started(:macula_nat)
    :ok = :macula_nat_coordinator.serve_rendezvous()
    {:ok, me} = :macula.get_node_id()
    {:ok, {_, port}} = :macula_nat_node.local_addr()
    ep = "127.0.0.1:#{port}"
    rv = [%{endpoint: ep, node_id: me}]
    a = start_peer(rendezvous: rv)
    b = start_peer(rendezvous: rv, relays: [%{node_id: me, endpoint: ep}])

    on_exit(fn ->
      # The peers are linked to the test process and usually gone by now.
      for p <- [a, b] do
        try do
          :peer.stop(p)
        catch
          :exit, _ -> :ok
        end
      end

      Application.stop(:macula_nat)
      Application.delete_env(:macula_nat, :listen_ip)
    end)

    %{a: a, b: b, me: me}
  end

  defp start_peer(env) do
    {:ok, p, _} = :peer.start_link(%{connection: :standard_io, args: [~c"-pa" | :code.get_path()]})
    {:module, _} = :peer.call(p, :code, :load_binary, [Holder, ~c"nofile", :persistent_term.get({Holder, :beam})])
    :ok = :peer.call(p, :application, :set_env, [:macula_nat, :listen_ip, {127, 0, 0, 1}])
    for {k, v} <- env, do: :ok = :peer.call(p, :application, :set_env, [:macula_nat, k, v])
    {:ok, _} = :peer.call(p, :application, :ensure_all_started, [:macula_nat])
    p
  end

  test "symmetric peers talk through this node's relay; the callbacks see the session",
       %{a: a, b: b, me: me} do
    test = self()

    :ok =
      :macula_relay_node.enable(%{
        max_sessions: 10,
        bandwidth_limit: 5_242_880,
        on_session_start: fn info -> send(test, {:relay_start, info}) end,
        on_session_end: fn info -> send(test, {:relay_end, info}) end
      })

    {:ok, a_id} = :peer.call(a, :macula, :get_node_id, [])
    {:ok, b_id} = :peer.call(b, :macula, :get_node_id, [])
    wait(fn -> Enum.all?([a_id, b_id], &List.keymember?(:macula_nat_coordinator.rendezvous_peers(), &1, 0)) end)
    :ok = :peer.call(a, Holder, :set_profile, [:symmetric])
    :ok = :peer.call(b, Holder, :set_profile, [:symmetric])

    wait(fn ->
      Enum.any?(:peer.call(b, :macula_nat_coordinator, :reserved_relays, []), &(&1.node_id == me)) and
        match?({:ok, %{reservations: 1}}, :macula_relay_node.stats())
    end)

    :ok = :peer.call(b, Holder, :start, [:b, :macula_connection, :accept, [30_000]])
    :ok = :peer.call(a, Holder, :start, [:a, :macula_nat_connector, :connect, [a_id, b_id, %{}]])
    assert {:ok, _conn, :relayed} = :peer.call(a, Holder, :result, [:a])
    assert {:ok, _conn} = :peer.call(b, Holder, :result, [:b])
    assert :relayed == :peer.call(a, Holder, :info, [:a, :connection_method])
    assert me == :peer.call(a, Holder, :info, [:a, :relay])
    # NodeIds in the callbacks are hex: "#{a} <-> #{b}" prints them.
    {a_hex, b_hex} = {:macula.node_id_to_hex(a_id), :macula.node_id_to_hex(b_id)}
    assert_receive {:relay_start, %{peer_a: ^a_hex, peer_b: ^b_hex} = info}, 10_000
    assert "#{info.peer_a} <-> #{info.peer_b}" == a_hex <> " <-> " <> b_hex

    # No new atoms: the receiving VM never creates them from peer input.
    :ok = :peer.call(a, Holder, :send_term, [:a, {"hello", "from elixir"}])
    wait(fn -> :peer.call(b, Holder, :received, [:b]) == [{"hello", "from elixir"}] end)
    :ok = :peer.call(b, Holder, :send_term, [:b, "hello back"])
    wait(fn -> :peer.call(a, Holder, :received, [:a]) == ["hello back"] end)

    :ok = :peer.call(a, Holder, :stop, [:a])
    assert_receive {:relay_end, %{peer_a: ^a_hex, peer_b: ^b_hex, bytes_transferred: bytes}}, 10_000
    assert bytes > byte_size(:erlang.term_to_binary({"hello", "from elixir"}))
    :ok = :peer.call(b, Holder, :stop, [:b])

    assert :ok = :macula_relay_node.disable()
    assert {:error, :disabled} = :macula_relay_node.stats()
    assert {:error, {:bad_option, :max_sessions}} = :macula_relay_node.enable(%{max_sessions: 0})
  end

  defp wait(fun, ms \\ 15_000) do
    cond do
      fun.() -> :ok
      ms <= 0 -> flunk("condition not met in time")
      true -> Process.sleep(50) && wait(fun, ms - 50)
    end
  end
end
