import Config
# Options of macula_nat_system (see README): cache_max_entries,
# cache_ttl_seconds, detection_timeout_ms, listen_ip, listen_port, key_file,
# observers. Uncomment to override the defaults.
# config :macula_nat, listen_port: 4433
