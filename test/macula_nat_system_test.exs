defmodule MaculaNat.SystemTest do
  # Elixir users call the documented Erlang modules as :macula_nat_*.
  use ExUnit.Case, async: false

  setup do
    {:ok, _} = Application.ensure_all_started(:macula_nat)
    on_exit(fn -> Application.stop(:macula_nat) end)
    :ok
  end

  test "node id is the 32-byte public key and survives a node restart" do
    {:ok, id} = :macula.get_node_id()
    assert byte_size(id) == 32
    old = Process.whereis(:macula_nat_node)
    Process.exit(old, :kill)
    wait_restarted(:macula_nat_node, old)
    assert {:ok, ^id} = :macula.get_node_id()
  end

  test "the supervisor is rest_for_one: killing the detector restarts the children after it" do
    children = fn ->
      for {id, pid, _, _} <- Supervisor.which_children(:macula_nat_system), into: %{}, do: {id, pid}
    end

    before = children.()
    kept = [:macula_nat_node, :macula_nat_cache]
    restarted = [:macula_nat_detector, :macula_nat_coordinator, :macula_relay_registry, :macula_relay_node]
    Process.exit(before[:macula_nat_detector], :kill)
    for id <- restarted, do: wait_restarted(id, before[id])
    after_kill = children.()
    assert Map.take(before, kept) == Map.take(after_kill, kept)
    for id <- restarted, do: assert(after_kill[id] != before[id])
  end

  test "profile and endpoint before detection" do
    assert {:error, :not_detected} = :macula_nat_detector.get_local_profile()
    assert {:error, :not_detected} = :macula.get_public_endpoint()
  end

  test "subscribers are monitored" do
    sub = spawn(fn -> Process.sleep(:infinity) end)
    assert :ok = :macula_nat_detector.subscribe(sub)
    assert map_size(:sys.get_state(:macula_nat_detector).subscribers) == 1
    Process.exit(sub, :kill)
    Process.sleep(50)
    assert :sys.get_state(:macula_nat_detector).subscribers == %{}
  end

  test "a Rust panic comes back as an error, the VM lives on" do
    assert {:error, {:internal, _}} = :macula_nat_nif.debug_panic(:sync)
    assert {:error, {:internal, _}} = :macula_nat_async.call(&:macula_nat_nif.debug_panic_async/1, 2000)
    assert {:ok, _} = :macula_nat_system.ping()
  end

  test "bad options are refused with a reason" do
    assert {:error, {:bad_option, :cache_ttl_seconds, -1}} =
             :macula_nat_system.start_link(%{cache_ttl_seconds: -1})
  end

  defp wait_restarted(name, old, tries \\ 200) do
    case Process.whereis(name) do
      pid when is_pid(pid) and pid != old ->
        :sys.get_state(pid)
        pid

      _ when tries > 0 ->
        Process.sleep(10)
        wait_restarted(name, old, tries - 1)
    end
  end
end
