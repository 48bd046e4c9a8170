//! Thin helpers over `ip`, `nft`, setns(2) and /proc.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub const NETNS_DIR: &str = "/run/netns";

/// Run `ip [-n ns] -batch -` with the given lines.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(["-batch", "-"]);
    let input = lines.join("\n") + "\n";
    run_with_input(c, &input).with_context(|| format!("ip -n {:?} -batch:\n{input}", ns))
}

pub fn ip(args: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(args);
    run_with_input(c, "").with_context(|| format!("ip {}", args.join(" ")))
}

fn run_with_input(mut c: Command, input: &str) -> Result<()> {
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut ch = c.spawn().context("spawn")?;
    ch.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = ch.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

pub fn open_ns(ns: &str) -> Result<File> {
    File::open(Path::new(NETNS_DIR).join(ns)).with_context(|| format!("open netns {ns}"))
}

/// A Command that will enter network namespace `ns` before exec.
/// The returned File must outlive `spawn()`.
pub fn command_in(ns: &str, argv: &[String]) -> Result<(Command, File)> {
    if argv.is_empty() {
        bail!("empty argv");
    }
    let f = open_ns(ns)?;
    let fd: RawFd = f.as_raw_fd();
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok((c, f))
}

/// Run `f` on a fresh thread that has entered namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let file = open_ns(ns)?;
    let h = std::thread::spawn(move || -> Result<T> {
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    });
    h.join().map_err(|_| anyhow!("netns thread panicked"))?
}

/// Write sysctls (`net.ipv4.ip_forward` style keys) inside namespace `ns`.
pub fn sysctls(ns: &str, kv: Vec<(String, String)>) -> Result<()> {
    in_ns(ns, move || {
        for (k, v) in kv {
            let p = format!("/proc/sys/{}", k.replace('.', "/"));
            std::fs::write(&p, &v).with_context(|| format!("sysctl {k}={v}"))?;
        }
        Ok(())
    })
}

/// Makes room in the kernel's ARP table for a lab of `sites` sites. The
/// table and its limits (`gc_thresh1..3`, only writable in the initial
/// namespace) are shared by every namespace: a big lab's routers see each
/// other on the internet bridge (about `sites`^2 entries), and past
/// `gc_thresh3` (1024 by default) the kernel evicts live entries and
/// refuses new ones ("neighbor table overflow"), dropping packets between
/// routers for seconds at a time. Limits are only raised, never lowered;
/// best effort (a lab still works, less reliably, without it).
pub fn neighbour_room(sites: usize) {
    let want = (sites * sites * 4).max(1024) as u64;
    for (k, v) in [("gc_thresh1", want / 4), ("gc_thresh2", want / 2), ("gc_thresh3", want)] {
        let p = format!("/proc/sys/net/ipv4/neigh/default/{k}");
        let cur = std::fs::read_to_string(&p).ok().and_then(|c| c.trim().parse::<u64>().ok()).unwrap_or(0);
        if cur < v {
            let _ = std::fs::write(&p, v.to_string());
        }
    }
}

/// Inode of a named namespace, if it exists.
pub fn ns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(Path::new(NETNS_DIR).join(ns)).ok().map(|m| m.ino())
}

pub fn list_netns() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// PIDs of all processes whose network namespace is one of `inodes`.
pub fn pids_in(inodes: &[u64]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        if let Ok(l) = std::fs::read_link(format!("/proc/{pid}/ns/net")) {
            let l = l.to_string_lossy();
            if let Some(n) = l.strip_prefix("net:[").and_then(|s| s.strip_suffix(']')) {
                if let Ok(ino) = n.parse::<u64>() {
                    if inodes.contains(&ino) {
                        out.push(pid);
                    }
                }
            }
        }
    }
    out
}

/// SIGKILL every process inside the given namespaces, then delete them.
pub fn destroy_namespaces(names: &[String]) -> Result<()> {
    let existing: Vec<&String> = names.iter().filter(|n| ns_inode(n).is_some()).collect();
    let inodes: Vec<u64> = existing.iter().filter_map(|n| ns_inode(n)).collect();
    for _round in 0..50 {
        let pids = pids_in(&inodes);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lines: Vec<String> = existing.iter().map(|n| format!("netns del {n}")).collect();
    if !lines.is_empty() {
        // -force: keep going if one fails (e.g. removed concurrently)
        let mut c = Command::new("ip");
        c.args(["-force", "-batch", "-"]);
        let _ = run_with_input(c, &(lines.join("\n") + "\n"));
    }
    Ok(())
}

/// Process start time (clock ticks since boot) from /proc/<pid>/stat, to detect pid reuse.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // fields after comm: state(3) ... starttime is field 22 => index 19 in `rest`
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Alive = exists, is not a zombie, and (if given) has the recorded start time.
pub fn proc_alive(pid: u32, start: Option<u64>) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string));
    if matches!(state.as_deref(), Some("Z") | Some("X") | None) {
        return false;
    }
    match proc_start_time(pid) {
        None => false,
        Some(t) => start.is_none_or(|s| s == t),
    }
}
