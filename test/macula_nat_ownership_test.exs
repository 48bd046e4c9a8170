# The guide's LiveView pattern (Example 4) run in a plain process: a
# GenServer that connects inside Task.async with a peer id as a form gives
# it (hex text), then uses the connection it gets in {ref, result}. The
# connection must belong to the GenServer (the task's first caller), not to
# the task: alive after the task ended, its messages in the GenServer's
# mailbox, both ways. This VM is the rendezvous; a peer VM (over stdio)
# joins it and accepts, says hello at once and answers pings.

# Runs in the peer VM (loaded there from its object code).
{:module, _, echo_beam, _} =
  defmodule MaculaNat.OwnershipTestEcho do
    # One acceptor at a time; each accepted connection gets a handler.
    def start do
      spawn(fn -> accept_loop() end)
      :ok
    end

    defp accept_loop do
      case :macula_connection.accept(60_000) do
        {:ok, conn} ->
          handler = spawn(fn -> handle(conn) end)
          :ok = :macula_connection.controlling_process(conn, handler)
          send(handler, :go)
          accept_loop()

        {:error, _} ->
          accept_loop()
      end
    end

    defp handle(conn) do
      receive do
        :go -> :ok
      end

      # At once: this may reach the other side while its task still holds
      # the connection.
      :ok = :macula_connection.send(conn, {:hello, "from the peer"})
      echo(conn)
    end

    defp echo(conn) do
      receive do
        {:macula_connection, ^conn, {:message, {:ping, n}}} ->
          :ok = :macula_connection.send(conn, {:pong, n})
          echo(conn)

        {:macula_connection, ^conn, {:closed, _}} ->
          :ok

        _ ->
          echo(conn)
      end
    end
  end

:persistent_term.put({MaculaNat.OwnershipTestEcho, :beam}, echo_beam)

defmodule MaculaNat.OwnershipTest.ConnectionLive do
  # The LiveView of the guide's Example 4, as a GenServer: handle_event
  # ("connect" with a form's peer_id) becomes a call; what it receives is
  # reported to the test process.
  use GenServer

  def start_link(test), do: GenServer.start_link(__MODULE__, test)

  @impl true
  def init(test), do: {:ok, %{test: test, status: :disconnected, peers: [], task: nil}}

  @impl true
  def handle_call({:connect, %{"peer_id" => peer_id} = form}, _from, state) do
    task =
      Task.async(fn ->
        case form do
          %{"local_id" => local_id} -> :macula_nat_connector.connect(local_id, peer_id, %{timeout: 15_000})
          _ -> :macula_nat_connector.connect(peer_id, %{timeout: 15_000})
        end
      end)

    {:reply, {:ok, task.pid}, %{state | status: :connecting, task: task}}
  end

  def handle_call({:send, conn, term}, _from, state), do: {:reply, :macula_connection.send(conn, term), state}
  # Only the owner may hand a connection over: :ok proves ownership.
  def handle_call({:hand_to_self, conn}, _from, state),
    do: {:reply, :macula_connection.controlling_process(conn, self()), state}

  @impl true
  # connect/2 answers {:ok, conn} (README); connect/3 {:ok, conn, method}.
  def handle_info({ref, {:ok, conn}}, state) when is_reference(ref), do: connected(ref, conn, nil, state)
  def handle_info({ref, {:ok, conn, method}}, state) when is_reference(ref), do: connected(ref, conn, method, state)

  def handle_info({ref, {:error, reason}}, state) when is_reference(ref) do
    Process.demonitor(ref, [:flush])
    send(state.test, {:live, :error, reason})
    {:noreply, %{state | status: {:error, reason}}}
  end

  def handle_info({:macula_connection, conn, event}, state) do
    send(state.test, {:live, :connection, conn, event})
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp connected(ref, conn, method, state) do
    Process.demonitor(ref, [:flush])
    send(state.test, {:live, :connected, conn, method})
    {:noreply, %{state | status: {:connected, method}, peers: [conn | state.peers]}}
  end
end

defmodule MaculaNat.OwnershipTest do
  use ExUnit.Case, async: false

  alias MaculaNat.OwnershipTest.ConnectionLive
  alias MaculaNat.OwnershipTestEcho, as: Echo

  setup do
    Application.stop(:macula_nat)
    :ok = Application.put_env(:macula_nat, :listen_ip, {127, 0, 0, 1})
    {:ok, _} = Application.ensure_all_started(:macula_nat)
    :ok = :macula_nat_coordinator.serve_rendezvous()
    {:ok, me} = :macula.get_node_id()
    {:ok, {_, port}} = :macula_nat_node.local_addr()
    ep = "127.0.0.1:#{port}"
    # This node connects too: it joins its own rendezvous.
    :ok = :macula_nat_coordinator.join(ep, me)

    {:ok, b, _} = :peer.start_link(%{connection: :standard_io, args: [~c"-pa" | :code.get_path()]})
    {:module, _} = :peer.call(b, :code, :load_binary, [Echo, ~c"nofile", :persistent_term.get({Echo, :beam})])
    :ok = :peer.call(b, :application, :set_env, [:macula_nat, :listen_ip, {127, 0, 0, 1}])
    # The rendezvous id in hex, as a config file would carry it.
    rv = [%{endpoint: ep, node_id: :macula.node_id_to_hex(me)}]
    :ok = :peer.call(b, :application, :set_env, [:macula_nat, :rendezvous, rv])
    {:ok, _} = :peer.call(b, :application, :ensure_all_started, [:macula_nat])
    {:ok, b_id} = :peer.call(b, :macula, :get_node_id, [])
    wait(fn -> List.keymember?(:macula_nat_coordinator.rendezvous_peers(), b_id, 0) end)
    :ok = :peer.call(b, Echo, :start, [])

    on_exit(fn ->
      try do
        :peer.stop(b)
      catch
        :exit, _ -> :ok
      end

      Application.stop(:macula_nat)
      Application.delete_env(:macula_nat, :listen_ip)
    end)

    %{me: me, b_id: b_id, b_ep: peer_endpoint(b)}
  end

  defp peer_endpoint(b) do
    {:ok, {_, port}} = :peer.call(b, :macula_nat_node, :local_addr, [])
    "127.0.0.1:#{port}"
  end

  test "hex ids: conversions and their errors", %{b_id: b_id} do
    hex = :macula.node_id_to_hex(b_id)
    assert byte_size(hex) == 64 and hex == String.downcase(hex)
    assert {:ok, ^b_id} = :macula.node_id_from_hex(hex)
    assert {:ok, ^b_id} = :macula.node_id_from_hex(String.upcase(hex))
    assert {:ok, ^b_id} = :macula.node_id_from_hex(" " <> hex <> "\n")
    assert {:ok, ^b_id} = :macula.node_id_from_hex(String.to_charlist(hex))
    assert ^hex = :macula.node_id_to_hex(String.upcase(hex))
    assert "Relay session: #{hex}" == "Relay session: #{:macula.node_id_to_hex(b_id)}"

    for bad <- ["", "zz", String.duplicate("g", 64), binary_part(hex, 0, 63), hex <> "0", :atom, 42, nil] do
      assert {:error, :bad_node_id} == :macula.node_id_from_hex(bad)
      assert {:error, :bad_node_id} == :macula.node_id_to_hex(bad)
    end
  end

  test "Task.async from a GenServer with a form's hex id: the GenServer owns a live connection",
       %{me: me, b_id: b_id} do
    {:ok, live} = ConnectionLive.start_link(self())
    form = %{"peer_id" => :macula.node_id_to_hex(b_id)}
    {:ok, task_pid} = GenServer.call(live, {:connect, form})

    assert_receive {:live, :connected, conn, nil}, 20_000
    check_owned_and_talking(live, conn, task_pid)

    # connect/3 with both ids as text (upper case, as pasted): {:ok, conn, method}.
    form = %{
      "local_id" => String.upcase(:macula.node_id_to_hex(me)),
      "peer_id" => String.upcase(:macula.node_id_to_hex(b_id))
    }

    {:ok, task_pid} = GenServer.call(live, {:connect, form})
    assert_receive {:live, :connected, conn2, method}, 20_000
    assert method in [:direct, :punched, :relayed]
    check_owned_and_talking(live, conn2, task_pid)

    # An id that is not one answers as before.
    {:ok, _} = GenServer.call(live, {:connect, %{"peer_id" => "not a node id"}})
    assert_receive {:live, :error, :bad_node_id}, 20_000
    GenServer.stop(live)
  end

  test "owner option: open/3 from a short-lived process for another one", %{b_id: b_id, b_ep: b_ep} do
    test = self()

    {pid, mon} =
      spawn_monitor(fn ->
        send(test, {:opened, :macula_connection.open(b_ep, :macula.node_id_to_hex(b_id), %{owner: test})})
      end)

    assert_receive {:opened, {:ok, conn}}, 15_000
    assert_receive {:DOWN, ^mon, :process, ^pid, :normal}
    assert :ok == :macula_connection.controlling_process(conn, self())
    assert_receive {:macula_connection, ^conn, {:message, {:hello, "from the peer"}}}, 10_000
    :ok = :macula_connection.send(conn, {:ping, 7})
    assert_receive {:macula_connection, ^conn, {:message, {:pong, 7}}}, 10_000
    assert false == :macula_connection.get_info(conn, :closed)
    :ok = :macula_connection.close(conn)

    assert {:error, :badarg} == :macula_connection.open(b_ep, b_id, %{owner: :not_a_pid})
    assert {:error, {:bad_option, :owner}} == :macula_nat_connector.connect(b_id, %{owner: :nope})
  end

  defp check_owned_and_talking(live, conn, task_pid) do
    # The task is over; the connection is not.
    ref = Process.monitor(task_pid)
    assert_receive {:DOWN, ^ref, :process, ^task_pid, _}, 5_000
    assert false == :macula_connection.get_info(conn, :closed)
    # The GenServer owns it (only the owner can hand it over); we do not.
    assert {:error, :not_owner} == :macula_connection.controlling_process(conn, self())
    assert :ok == GenServer.call(live, {:hand_to_self, conn})
    # Peer -> GenServer: the hello sent the moment the peer accepted.
    assert_receive {:live, :connection, ^conn, {:message, {:hello, "from the peer"}}}, 10_000
    # GenServer -> peer -> GenServer.
    for n <- 1..3 do
      assert :ok == GenServer.call(live, {:send, conn, {:ping, n}})
      assert_receive {:live, :connection, ^conn, {:message, {:pong, ^n}}}, 10_000
    end

    refute_received {:live, :connection, ^conn, {:closed, _}}
    assert false == :macula_connection.get_info(conn, :closed)
  end

  defp wait(fun, ms \\ 15_000) do
    cond do
      fun.() -> :ok
      ms <= 0 -> flunk("condition not met in time")
      true -> Process.sleep(50) && wait(fun, ms - 50)
    end
  end
end
