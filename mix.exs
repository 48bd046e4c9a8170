defmodule Mix.Tasks.Compile.MaculaNatCargo do
  @moduledoc "Builds the Rust NIF into priv/ with cargo (same script as rebar3)."
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    case System.cmd("sh", ["native/build_nif.sh"], into: IO.stream(:stdio, :line)) do
      {_, 0} -> {:ok, []}
      {_, code} -> Mix.raise("cargo build of the NIF failed (exit #{code})")
    end
  end
end

defmodule MaculaNat.MixProject do
  use Mix.Project

  def project do
    [
      app: :macula_nat,
      version: "0.1.0",
      elixir: "~> 1.14",
      language: :erlang,
      # rebar3 owns _build/default and _build/test; keep Mix's builds apart.
      build_path: "_build/mix",
      # The documented modules are Erlang, in lib/; Elixir calls them as
      # :macula_nat_detector and so on.
      erlc_paths: ["lib"],
      erlc_include_path: "include",
      elixirc_paths: [],
      compilers: [:macula_nat_cargo] ++ Mix.compilers(),
      deps: [],
      test_paths: ["test"],
      test_pattern: "*_test.exs"
    ]
  end

  def application do
    [
      mod: {:macula_nat_app, []},
      extra_applications: [:logger, :crypto],
      env: [
        cache_max_entries: 10_000,
        cache_ttl_seconds: 300,
        detection_timeout_ms: 2_000
      ]
    ]
  end
end
