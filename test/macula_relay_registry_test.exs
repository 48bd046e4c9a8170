defmodule MaculaNat.RelayRegistryTest do
  # The relay registry from Elixir: a relay (another node socket in this VM
  # with its own key, which answers STUN like any macula node) is
  # registered, timed and found.
  use ExUnit.Case, async: false

  setup do
    Application.stop(:macula_nat)
    Application.put_env(:macula_nat, :listen_ip, {127, 0, 0, 1})
    Application.put_env(:macula_nat, :relay_refresh_ms, 200)
    {:ok, _} = Application.ensure_all_started(:macula_nat)

    on_exit(fn ->
      Application.stop(:macula_nat)
      Application.delete_env(:macula_nat, :listen_ip)
      Application.delete_env(:macula_nat, :relay_refresh_ms)
    end)

    :ok
  end

  test "register, find, change messages, bad input" do
    # Its own key (a node opened without one takes the VM's identity).
    key_file = Path.join(System.tmp_dir!(), "macula_relay_test_#{System.unique_integer([:positive])}")
    {:ok, relay} = :macula_nat_nif.node_open(%{ip: {127, 0, 0, 1}, port: 0, key_file: key_file})
    File.rm!(key_file)
    {:ok, relay_id} = :macula_nat_nif.node_id(relay)
    {:ok, addr} = :macula_nat_nif.node_local_addr(relay)
    endpoint = :macula_nat_endpoint.format(addr)
    target = <<9::256>>

    assert {:error, :no_relay} = :macula_relay_registry.find_relay(target)
    assert :ok = :macula_relay_registry.subscribe()
    assert :ok = :macula_relay_registry.register(relay_id, endpoint)
    assert_receive {:macula_relay_registry, :relays_changed}, 5000

    assert {:ok, %{node_id: ^relay_id, endpoint: ^endpoint, latency_ms: ms, load: 0.0}} =
             :macula_relay_registry.find_relay(target)
    assert is_integer(ms) and ms >= 0
    assert [%{node_id: ^relay_id}] = :macula_relay_registry.relays()

    assert {:error, :bad_node_id} = :macula_relay_registry.register("short", endpoint)
    assert {:error, :bad_endpoint} = :macula_relay_registry.register(relay_id, "nope")
    assert {:error, :badarg} = :macula_relay_registry.find_relay(:nope)

    :ok = :macula_nat_nif.node_close(relay)
    assert_receive {:macula_relay_registry, :relays_changed}, 5000
    assert [] = :macula_relay_registry.relays()
  end
end
