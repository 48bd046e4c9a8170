//! Prometheus text exposition (format 0.0.4) of macula-node's counters,
//! served by a minimal HTTP/1.1 responder: `GET /metrics` answers the
//! metrics, `GET /` a pointer to them, anything else 404 / 405; one request
//! per connection (`Connection: close`). Meant for a local address that a
//! Prometheus agent scrapes; no TLS, no auth.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A text exposition being written: each family once, with its HELP and
/// TYPE lines, then its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let val = val.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    let _ = write!(self.out, "{k}=\"{val}\"");
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {v}");
        }
    }

    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, "counter", help, &[(&[], v as f64)]);
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "gauge", help, &[(&[], v)]);
    }

    /// A counter with one label, one sample per value of it.
    pub fn counter_by(&mut self, name: &str, help: &str, label: &str, samples: &[(&str, u64)]) {
        let labels: Vec<[(&str, &str); 1]> = samples.iter().map(|(l, _)| [(label, *l)]).collect();
        let s: Vec<(Labels<'_>, f64)> = labels.iter().zip(samples).map(|(l, (_, v))| (&l[..], *v as f64)).collect();
        self.family(name, "counter", help, &s);
    }

    pub fn gauge_labelled(&mut self, name: &str, help: &str, labels: Labels<'_>, v: f64) {
        self.family(name, "gauge", help, &[(labels, v)]);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Adds the counts of `seen` to `known` (every known label keeps a sample,
/// at 0 when never seen, so rates work from the first scrape).
pub fn with_zeros<'a>(known: &[&'a str], seen: &[(&'a str, u64)]) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&str, u64)> = known.iter().map(|k| (*k, 0)).collect();
    for (k, v) in seen {
        match out.iter_mut().find(|(o, _)| o == k) {
            Some(e) => e.1 += v,
            None => out.push((k, *v)),
        }
    }
    out
}

/// Serves `render()` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, render)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, render: Arc<dyn Fn() -> String + Send + Sync>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "too large\n", false).await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = render();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body, head_only).await
        }
        ("GET" | "HEAD", "/") => {
            respond(&mut stream, "200 OK", "text/plain; charset=utf-8", "macula-node: metrics at /metrics\n", head_only).await
        }
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n", head_only).await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n", false).await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &str, head_only: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let mut e = Exposition::default();
        e.counter("a_total", "A things.", 3);
        e.counter_by("b_total", "B by reason.", "reason", &with_zeros(&["x", "y"], &[("y", 2), ("z", 1)]));
        e.gauge_labelled("c_info", "C.", &[("id", "ab\"c")], 1.0);
        let t = e.finish();
        assert!(t.contains("# TYPE a_total counter\na_total 3\n"), "{t}");
        assert!(t.contains("b_total{reason=\"x\"} 0\nb_total{reason=\"y\"} 2\nb_total{reason=\"z\"} 1\n"), "{t}");
        assert!(t.contains("c_info{id=\"ab\\\"c\"} 1\n"), "{t}");
    }
}
