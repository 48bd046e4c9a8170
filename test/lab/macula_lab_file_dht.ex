defmodule MaculaLab.FileDht do
  @moduledoc """
  A host DHT written in Elixir, for the operators lab
  (`lab_operators.escript`): the `:macula_nat_dht` behaviour with each
  signed record a file named by the hex NodeId, in the directory the
  application environment names (`config :macula_lab, dht_dir: ...`). The
  lab's namespaces share the filesystem, so every node behind every NAT
  sees one store, as nodes of one deployment would see one host DHT.

  Only Erlang/OTP calls: an Erlang VM loads it as well as an Elixir one
  (no Elixir runtime needed).
  """
  @behaviour :macula_nat_dht

  @spec put(binary(), binary(), pos_integer()) :: :ok | {:error, term()}
  def put(node_id, record, _ttl_s) do
    path = path(node_id)
    # Written aside and renamed: a reader never sees half a record. The
    # name is unique per writer: a node republishes while a put runs.
    tmp = path <> ".tmp." <> :erlang.integer_to_binary(:erlang.unique_integer([:positive])) <>
            "." <> :erlang.list_to_binary(:os.getpid())

    case :file.write_file(tmp, record) do
      :ok -> :file.rename(tmp, path)
      {:error, _} = e -> e
    end
  end

  @spec get(binary()) :: {:ok, binary()} | {:error, :not_found}
  def get(node_id) do
    case :file.read_file(path(node_id)) do
      {:ok, bin} -> {:ok, bin}
      {:error, _} -> {:error, :not_found}
    end
  end

  defp path(node_id) do
    {:ok, dir} = :application.get_env(:macula_lab, :dht_dir)
    :filename.join(dir, :macula.node_id_to_hex(node_id))
  end
end
