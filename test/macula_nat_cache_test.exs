defmodule MaculaNat.CacheTest do
  # The cache from Elixir, with a host DHT written in Elixir implementing
  # the :macula_nat_dht behaviour.
  use ExUnit.Case, async: false

  defmodule AgentDht do
    @behaviour :macula_nat_dht
    # Records live in an Agent; lookups are counted.
    def start, do: Agent.start(fn -> %{gets: 0} end, name: __MODULE__)
    def stop, do: Agent.stop(__MODULE__)
    def gets, do: Agent.get(__MODULE__, & &1.gets)

    @impl true
    def put(node_id, record, ttl) when is_integer(ttl) and ttl > 0 do
      Agent.update(__MODULE__, &Map.put(&1, node_id, record))
    end

    @impl true
    def get(node_id) do
      Agent.get_and_update(__MODULE__, fn s ->
        {Map.fetch(s, node_id), %{s | gets: s.gets + 1}}
      end)
      |> case do
        {:ok, rec} -> {:ok, rec}
        :error -> {:error, :not_found}
      end
    end
  end

  @profile %{mapping: :hd, filtering: :pd, allocation: :rd, confidence: :medium,
             public_ip: {203, 0, 113, 9}, public_port: 50_000}

  setup do
    # Start from a stopped app so the settings below are the ones in force.
    Application.stop(:macula_nat)
    {:ok, _} = AgentDht.start()
    Application.put_env(:macula_nat, :dht, {:module, AgentDht})
    Application.put_env(:macula_nat, :cache_max_entries, 3)
    {:ok, _} = Application.ensure_all_started(:macula_nat)

    on_exit(fn ->
      Application.stop(:macula_nat)
      Application.delete_env(:macula_nat, :dht)
      Application.put_env(:macula_nat, :cache_max_entries, 10_000)
      AgentDht.stop()
    end)

    :ok
  end

  defp id(n), do: <<n::256>>

  test "documented return shapes" do
    assert {:error, :not_found} = :macula_nat_cache.get(id(1))
    assert :ok = :macula_nat_cache.put(id(1), @profile)
    assert {:ok, %{mapping: :hd, allocation: :rd, public_port: 50_000}} = :macula_nat_cache.get(id(1))
    assert :ok = :macula_nat_cache.put(id(1), @profile, 600)
    assert :ok = :macula_nat_cache.invalidate(id(1))
    assert {:error, :not_found} = :macula_nat_cache.get(id(1))

    assert %{size: 0, hits: 1, misses: 2, stale_hits: 0, evictions: 0} = :macula_nat_cache.stats()
  end

  test "eviction at the bound keeps the most recently used" do
    for n <- 1..3, do: :ok = :macula_nat_cache.put(id(n), @profile)
    {:ok, _} = :macula_nat_cache.get(id(1))
    :ok = :macula_nat_cache.put(id(4), @profile)
    assert {:error, :not_found} = :macula_nat_cache.get(id(2))
    assert {:ok, _} = :macula_nat_cache.get(id(1))
    assert %{size: 3, evictions: 1} = :macula_nat_cache.stats()
  end

  test "own record goes through the Elixir DHT and comes back verified" do
    {:ok, me} = :macula.get_node_id()
    {:ok, _seq} = :macula_nat_cache.advertise(@profile)
    assert {:ok, %{mapping: :hd, public_port: 50_000}} = :macula_nat_cache.get_from_dht(me)
    assert AgentDht.gets() == 1
    # Now cached: no second lookup.
    assert {:ok, _} = :macula_nat_cache.get_from_dht(me)
    assert AgentDht.gets() == 1
  end

  test "a record served under the wrong key is refused as forged" do
    {:ok, me} = :macula.get_node_id()
    {:ok, _} = :macula_nat_cache.advertise(@profile)
    record = Agent.get(AgentDht, &Map.fetch!(&1, me))
    Agent.update(AgentDht, &Map.put(&1, id(9), record))
    assert {:error, :forged} = :macula_nat_cache.get_from_dht(id(9))
    assert %{forged: 1} = :macula_nat_cache.stats()
    assert {:error, :not_found} = :macula_nat_cache.get(id(9))
  end

  test "bad input is an error, never a crash" do
    assert {:error, :badarg} = :macula_nat_cache.get(:nope)
    assert {:error, :bad_node_id} = :macula_nat_cache.put("short", @profile)
    assert {:error, {:bad_profile, :allocation}} = :macula_nat_cache.put(id(1), Map.delete(@profile, :allocation))
    assert {:error, :badarg} = :macula_nat_cache.put(id(1), @profile, 0)
  end
end
