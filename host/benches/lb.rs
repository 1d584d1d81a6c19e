//! Load-balancer benchmark: `taskflow lb` against nginx in front of the same
//! three hosts, in one run.
//!
//! Three `taskflow serve` hosts (embedded default, echo plugin) are measured
//! with `wrk` (one thread, so the cores stay with the hosts and the proxy):
//! straight to the hosts (three `wrk` at once, one per host), through
//! `taskflow lb`, and through nginx (Debian's package) set up for round
//! robin with keep-alive connections to the hosts and the same forwarded
//! headers. For `GET /health` and for `POST /tasks` it prints requests/s and
//! p99 latency of each, and the ratio of `taskflow lb` to nginx (target: at
//! least 0.9 of nginx's throughput). Every run starts with the hosts idle;
//! the proxies are measured in rounds of lb, nginx, nginx, lb (single runs
//! swing by ±10% on shared cores), and their means compared; each round's
//! ratio is printed too.
//!
//! Run with `cargo bench -p taskflow-host --bench lb` (after
//! `plugins/build.sh`; needs `wrk` and `nginx`: `apt-get install wrk
//! nginx`). `TASKFLOW_LB_BENCH_SECS` sets each measurement's length
//! (default 5), `TASKFLOW_LB_BENCH_CONNECTIONS` the connections (default 32),
//! `TASKFLOW_LB_BENCH_ROUNDS` the rounds (default 3).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Host, free_port, start_host, wait_until};

fn main() {
    common::bench("lb", |_| run(), "TASKFLOW_LB_BENCH_UNUSED");
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    requests_per_sec: f64,
    p99_ms: f64,
    errors: u64,
}

async fn run() {
    for tool in ["wrk", "nginx"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: apt-get install {tool}"
        );
    }
    let secs = setting("TASKFLOW_LB_BENCH_SECS", 5);
    let connections = setting("TASKFLOW_LB_BENCH_CONNECTIONS", 32);
    let rounds = setting("TASKFLOW_LB_BENCH_ROUNDS", 3);
    let scratch = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();

    let mut hosts: Vec<Host> = Vec::new();
    let mut urls = Vec::new();
    for n in 0..3 {
        let port = free_port();
        hosts.push(
            start_host(
                &client,
                &scratch.path().join(format!("host-{n}")),
                port,
                &[],
                &[],
            )
            .await,
        );
        urls.push(format!("http://127.0.0.1:{port}"));
    }

    let lb_port = free_port();
    let _lb = Host(
        Command::new(env!("CARGO_BIN_EXE_taskflow"))
            .args(["lb", "--listen", &format!("127.0.0.1:{lb_port}")])
            .args(urls.iter().flat_map(|url| ["--backend", url.as_str()]))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start taskflow lb"),
    );
    let lb = format!("http://127.0.0.1:{lb_port}");
    let nginx_port = free_port();
    let _nginx = start_nginx(&scratch.path().join("nginx"), nginx_port, &urls);
    let nginx = format!("http://127.0.0.1:{nginx_port}");
    for url in [&lb, &nginx] {
        wait_until(|| async {
            client
                .get(format!("{url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    let post = scratch.path().join("post.lua");
    std::fs::write(
        &post,
        "wrk.method = \"POST\"\n\
         wrk.body = '{\"plugin\": \"echo\", \"payload\": {\"n\": 1}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )
    .expect("write the wrk script");

    println!(
        "taskflow lb vs nginx, 3 hosts, wrk 1 thread {connections} connections {secs} s per run, {rounds} rounds"
    );
    println!(
        "{:<16} {:<24} {:>12} {:>10} {:>8}",
        "request", "route", "requests/s", "p99 ms", "errors"
    );
    for (name, path, script) in [
        ("GET /health", "/health", None),
        ("POST /tasks", "/tasks", Some(post.as_path())),
    ] {
        // Each run starts with the hosts idle (the tasks an earlier run
        // queued would otherwise take the cores from the next), and the two
        // proxies run in rounds of lb, nginx, nginx, lb, averaged, so that
        // neither gains from going first or last.
        drain(&client, &urls).await;
        let direct = wrk_many(&urls, path, script, connections, secs);
        let (mut lb_runs, mut nginx_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut round = Vec::new();
            for target in [&lb, &nginx, &nginx, &lb] {
                drain(&client, &urls).await;
                round.push(wrk(target, path, script, connections, secs));
            }
            lb_runs.extend([round[0], round[3]]);
            nginx_runs.extend([round[1], round[2]]);
            ratios.push(format!(
                "{:.2}",
                mean(&[round[0], round[3]]).requests_per_sec
                    / mean(&[round[1], round[2]]).requests_per_sec
            ));
        }
        let through_lb = mean(&lb_runs);
        let through_nginx = mean(&nginx_runs);
        for (route, m) in [
            ("straight to hosts", direct),
            ("taskflow lb", through_lb),
            ("nginx", through_nginx),
        ] {
            println!(
                "{name:<16} {route:<24} {:>12.0} {:>10.2} {:>8}",
                m.requests_per_sec, m.p99_ms, m.errors
            );
        }
        println!(
            "{name:<16} {:<24} {:>12.2} {:>10.2}   (target: throughput ≥ 0.90; by round: {})",
            "lb / nginx",
            through_lb.requests_per_sec / through_nginx.requests_per_sec,
            through_lb.p99_ms / through_nginx.p99_ms,
            ratios.join(", "),
        );
    }
    drop(hosts);
}

/// Waits until no host has a task pending or running.
async fn drain(client: &reqwest::Client, urls: &[String]) {
    for url in urls {
        wait_until(|| async {
            let Ok(response) = client.get(format!("{url}/stats")).send().await else {
                return false;
            };
            let stats: serde_json::Value = response.json().await.unwrap_or_default();
            let tasks = &stats["system"]["tasks"];
            tasks["pending"] == 0 && tasks["running"] == 0
        })
        .await;
    }
}

/// The mean of several runs.
fn mean(runs: &[Measured]) -> Measured {
    let n = runs.len() as f64;
    Measured {
        requests_per_sec: runs.iter().map(|m| m.requests_per_sec).sum::<f64>() / n,
        p99_ms: runs.iter().map(|m| m.p99_ms).sum::<f64>() / n,
        errors: runs.iter().map(|m| m.errors).sum(),
    }
}

/// nginx in the foreground on `port`, round robin over `backends` with a
/// keep-alive pool, forwarding what `taskflow lb` forwards.
fn start_nginx(dir: &Path, port: u16, backends: &[String]) -> Nginx {
    std::fs::create_dir_all(dir).expect("nginx dir");
    let servers: String = backends
        .iter()
        .map(|url| format!("        server {};\n", url.trim_start_matches("http://")))
        .collect();
    let dir_text = dir.display();
    let config = format!(
        "worker_processes auto;
pid {dir_text}/nginx.pid;
error_log {dir_text}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir_text}/body;
    proxy_temp_path {dir_text}/proxy;
    fastcgi_temp_path {dir_text}/fastcgi;
    uwsgi_temp_path {dir_text}/uwsgi;
    scgi_temp_path {dir_text}/scgi;
    upstream taskflow {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://taskflow;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).expect("write nginx.conf");
    Nginx(
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx"),
    )
}

/// nginx's master process, stopped with its workers when dropped (SIGTERM:
/// a SIGKILL would leave the workers running).
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn wrk_command(
    url: &str,
    path: &str,
    script: Option<&Path>,
    connections: u64,
    secs: u64,
) -> Command {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(format!("{url}{path}"));
    command
}

/// One `wrk` run against `url`, after a one-second warm-up.
fn wrk(url: &str, path: &str, script: Option<&Path>, connections: u64, secs: u64) -> Measured {
    let _ = wrk_command(url, path, script, connections, 1).output();
    let output = wrk_command(url, path, script, connections, secs)
        .output()
        .expect("run wrk");
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// `wrk` against each of `urls` at once, the connections shared out: the
/// sum of their rates, the worst of their p99s.
fn wrk_many(
    urls: &[String],
    path: &str,
    script: Option<&Path>,
    connections: u64,
    secs: u64,
) -> Measured {
    let each = (connections / urls.len() as u64).max(1);
    for url in urls {
        let _ = wrk_command(url, path, script, each, 1).output();
    }
    let children: Vec<_> = urls
        .iter()
        .map(|url| {
            wrk_command(url, path, script, each, secs)
                .stdout(Stdio::piped())
                .spawn()
                .expect("run wrk")
        })
        .collect();
    let runs: Vec<Measured> = children
        .into_iter()
        .map(|child| {
            parse(&String::from_utf8_lossy(
                &child.wait_with_output().expect("wrk").stdout,
            ))
        })
        .collect();
    Measured {
        requests_per_sec: runs.iter().map(|m| m.requests_per_sec).sum(),
        p99_ms: runs.iter().map(|m| m.p99_ms).fold(0.0, f64::max),
        errors: runs.iter().map(|m| m.errors).sum(),
    }
}

/// Requests/s, p99 and errors (non-2xx answers and socket errors) from
/// `wrk --latency` output.
fn parse(output: &str) -> Measured {
    let requests_per_sec = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{output}"));
    let p99_ms = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| duration_ms(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency in wrk's output:\n{output}"));
    let non_2xx: u64 = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let socket_errors: u64 = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Measured {
        requests_per_sec,
        p99_ms,
        errors: non_2xx + socket_errors,
    }
}

/// `wrk`'s durations ("812.00us", "3.21ms", "1.02s") in milliseconds.
fn duration_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => f64::NAN,
    }
}
