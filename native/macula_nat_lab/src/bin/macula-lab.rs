//! `macula-lab`: CLI over the lab library, for Erlang/Elixir tests and humans.

use anyhow::{anyhow, bail, Context, Result};
use macula_nat_lab::{lab, probe, LabSpec, UpOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

const USAGE: &str = "\
usage:
  macula-lab up (--spec FILE | --json JSON) [--owner PID]
        build a lab; prints its JSON description. Owner defaults to the parent
        process; `reap` removes the lab once the owner is gone (0 = never).
  macula-lab info LAB                 JSON description of a running lab
  macula-lab get LAB POINTER          one value of the description by JSON pointer,
                                      e.g. /observers/obs/1, /sites/a/public_ip (strings raw)
  macula-lab list                     names of running labs (JSON array)
  macula-lab exec LAB HOST -- ARGV... run ARGV inside HOST (stdio and exit code pass through)
  macula-lab stats LAB SITE           router packet counters (JSON)
  macula-lab blackhole LAB SITE on|off [--spare IP[,IP...]]
                                      drop everything to/from the site's hosts at its router,
                                      except to/from the spare addresses (off: restore)
  macula-lab renumber LAB SITE        new public IPv4 address for the site's router (printed),
                                      mappings forgotten; the lab description is updated
  macula-lab down LAB                 tear a lab down
  macula-lab reap [--all]             remove labs whose owner is gone + stale ml-* namespaces
  macula-lab engine --config FILE     (internal) userspace NAT engine, run inside a router namespace
  macula-lab probe-send --to IP:PORT --count N [--rate PPS] [--size BYTES] [--bind IP:PORT]
  macula-lab probe-sink --bind IP:PORT --count N [--idle-ms MS] [--max-ms MS]
  macula-lab bench-build [--runs N]   time lab build/teardown (markdown on stdout)
";

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn need(args: &[String], name: &str) -> Result<String> {
    opt(args, name).ok_or_else(|| anyhow!("missing {name}\n{USAGE}"))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("macula-lab: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        std::process::exit(2);
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "up" => {
            let text = if let Some(f) = opt(rest, "--spec") {
                std::fs::read_to_string(&f).with_context(|| format!("read {f}"))?
            } else {
                need(rest, "--json")?
            };
            let spec: LabSpec = serde_json::from_str(&text).context("parse lab spec")?;
            let owner = match opt(rest, "--owner") {
                Some(p) => p.parse::<u32>().context("--owner")?,
                None => std::os::unix::process::parent_id(),
            };
            let l = macula_nat_lab::Lab::up_with(
                spec,
                UpOptions { owner_pid: Some(owner), engine_bin: Some(std::env::current_exe()?) },
            )?;
            print_json(&l.detach())
        }
        "info" => print_json(&lab::read_state(rest.first().ok_or_else(|| anyhow!(USAGE))?)?),
        "get" => {
            // macula-lab get LAB /json/pointer : strings raw, everything else as JSON
            if rest.len() < 2 {
                bail!(USAGE);
            }
            let v = serde_json::to_value(lab::read_state(&rest[0])?)?;
            let x = v.pointer(&rest[1]).ok_or_else(|| anyhow!("no {} in lab {}", rest[1], rest[0]))?;
            match x {
                serde_json::Value::String(s) => println!("{s}"),
                other => println!("{other}"),
            }
            Ok(())
        }
        "list" => print_json(&lab::list().iter().map(|i| i.lab.clone()).collect::<Vec<_>>()),
        "down" => lab::down(rest.first().ok_or_else(|| anyhow!(USAGE))?),
        "reap" => print_json(&lab::reap(rest.iter().any(|a| a == "--all"))),
        "stats" => {
            if rest.len() < 2 {
                bail!(USAGE);
            }
            let info = lab::read_state(&rest[0])?;
            print_json(&lab::router_stats(&info, &rest[1])?)
        }
        "blackhole" => {
            if rest.len() < 3 {
                bail!(USAGE);
            }
            let on = match rest[2].as_str() {
                "on" => true,
                "off" => false,
                o => bail!("blackhole: on or off, not {o}"),
            };
            let spare: Vec<std::net::Ipv4Addr> = match opt(rest, "--spare") {
                Some(l) => l.split(',').filter(|x| !x.is_empty()).map(|x| x.parse()).collect::<Result<_, _>>().context("--spare")?,
                None => vec![],
            };
            let mut l = macula_nat_lab::Lab::attach(&rest[0])?;
            l.blackhole(&rest[1], on, &spare)
        }
        "renumber" => {
            if rest.len() < 2 {
                bail!(USAGE);
            }
            let mut l = macula_nat_lab::Lab::attach(&rest[0])?;
            println!("{}", l.renumber(&rest[1])?);
            Ok(())
        }
        "exec" => {
            let dd = rest.iter().position(|a| a == "--").ok_or_else(|| anyhow!("exec needs --\n{USAGE}"))?;
            if dd < 2 || dd + 1 >= rest.len() {
                bail!(USAGE);
            }
            let info = lab::read_state(&rest[0])?;
            let h = info.hosts.get(&rest[1]).ok_or_else(|| anyhow!("no host {} in lab {}", rest[1], rest[0]))?;
            let f = macula_nat_lab::netns::open_ns(&h.netns)?;
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let argv = &rest[dd + 1..];
            let e = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
            bail!("exec {}: {e}", argv[0])
        }
        "engine" => macula_nat_lab::engine::run_from_file(&need(rest, "--config")?),
        "probe-send" => {
            let to = need(rest, "--to")?.parse()?;
            let count = need(rest, "--count")?.parse()?;
            let rate = opt(rest, "--rate").map(|r| r.parse()).transpose()?.unwrap_or(1000.0);
            let size = opt(rest, "--size").map(|r| r.parse()).transpose()?.unwrap_or(64);
            let bind = opt(rest, "--bind").map(|b| b.parse()).transpose()?;
            print_json(&probe::send(bind, to, count, rate, size)?)
        }
        "probe-sink" => {
            let bind = need(rest, "--bind")?.parse()?;
            let count = need(rest, "--count")?.parse()?;
            let idle = opt(rest, "--idle-ms").map(|r| r.parse()).transpose()?.unwrap_or(2000);
            let max = opt(rest, "--max-ms").map(|r| r.parse()).transpose()?.unwrap_or(60_000);
            print_json(&probe::sink(bind, count, idle, max)?)
        }
        "bench-build" => {
            let runs: usize = opt(rest, "--runs").map(|r| r.parse()).transpose()?.unwrap_or(5);
            bench_build(runs)
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other}\n{USAGE}"),
    }
}

fn bench_build(runs: usize) -> Result<()> {
    use macula_nat_lab::{Lab, NatKind, SiteSpec};
    use std::time::Instant;
    let configs: Vec<(&str, Vec<&str>)> = vec![
        (
            "4 kernel sites (full, restricted, port-restricted, symmetric)",
            vec!["kernel:full_cone", "kernel:restricted_cone", "kernel:port_restricted_cone", "kernel:symmetric"],
        ),
        ("4 userspace sites (ei-ei-pp, ei-hd-pc, hd-pd-rd, pd-pd-rd)", vec![
            "user:ei-ei-pp", "user:ei-hd-pc", "user:hd-pd-rd", "user:pd-pd-rd",
        ]),
        ("4 mixed sites (2 kernel, 2 userspace)", vec![
            "kernel:full_cone", "kernel:symmetric", "user:ei-ei-pp", "user:pd-pd-rd",
        ]),
    ];
    let mut all: Vec<(String, Vec<String>)> =
        configs.into_iter().map(|(d, v)| (d.to_string(), v.into_iter().map(String::from).collect())).collect();
    let mut big: Vec<String> = macula_nat_lab::KernelNat::ALL.iter().map(|k| NatKind::Kernel(*k).to_string()).collect();
    big.extend(NatKind::all_user(2).iter().map(|k| k.to_string()));
    big.push("none".into());
    all.push(("32 sites (4 kernel + 27 userspace + none), as in the coturn test".into(), big));
    println!("| lab | namespaces | runs | up median (ms) | up min..max (ms) | down median (ms) | down min..max (ms) |");
    println!("|---|---|---|---|---|---|---|");
    for (desc, kinds) in all {
        let mut ups = vec![];
        let mut downs = vec![];
        let mut nns = 0;
        for r in 0..runs {
            let mut spec = LabSpec::new(&format!("bench{r}"));
            spec.observers.push("obs".into());
            spec.public.push("pub".into());
            for (i, k) in kinds.iter().enumerate() {
                spec.sites.push(SiteSpec::new(&format!("s{i}"), k)?);
            }
            let t0 = Instant::now();
            let lab = Lab::up_with(spec, UpOptions { owner_pid: None, engine_bin: Some(std::env::current_exe()?) })?;
            ups.push(t0.elapsed().as_secs_f64() * 1e3);
            nns = lab.info.namespaces.len();
            let t1 = Instant::now();
            lab.down()?;
            downs.push(t1.elapsed().as_secs_f64() * 1e3);
        }
        let stat = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (um, ul, uh) = stat(&mut ups);
        let (dm, dl, dh) = stat(&mut downs);
        println!("| {desc} | {nns} | {runs} | {um:.0} | {ul:.0}..{uh:.0} | {dm:.0} | {dl:.0}..{dh:.0} |");
    }
    Ok(())
}
