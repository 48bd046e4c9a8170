//! Thin rustler binding of macula_nat. It converts terms, spawns work on the
//! core's tokio runtime and sends the answers back as messages; no decision
//! is made here. Every entry point is wrapped by `guard`, so a Rust panic
//! becomes `{error, {internal, Reason}}` instead of taking the VM down.

mod atoms;
mod cache_nif;
mod conn_nif;
mod convert;
mod debug_nif;
mod detect_nif;
mod dht_bridge;
mod guard;
mod log_nif;
mod node_nif;
mod observations_nif;
mod observer_nif;
mod owner;
mod predict_nif;
mod profile_term;
mod quality_nif;
mod relay_nif;
mod registry_nif;
mod reply;
mod traversal_nif;

rustler::init!("macula_nat_nif", load = load);

fn load(_env: rustler::Env, _info: rustler::Term) -> bool {
    // Panics are contained and returned as errors; one line on stderr is
    // enough, a backtrace per contained panic would flood the console.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("macula_nat: contained Rust panic: {info}");
    }));
    true
}
