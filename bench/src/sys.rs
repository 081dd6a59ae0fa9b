//! The machine: a clock every process shares, memory of a process, and what the run ran on.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// Errors in the harness are text with context; the run records them per scenario and goes on.
pub type Res<T> = Result<T, String>;

pub trait Ctx<T> {
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|err| format!("{what}: {err}"))
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a commit timestamped
/// in node A's process and an event timestamped in node B's process can be subtracted.
pub fn mono_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// A field of /proc/<pid>/status in kB (VmHWM = peak resident set size, VmRSS = current).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
}

pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    proc_status_kb(pid, "VmHWM").map(|kb| kb as f64 / 1024.0)
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_string())
}

fn command_line(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}

pub fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg").ok().map(|text| {
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// What the figures were measured on; the load average tells how noisy the machine was.
pub fn machine(nats_server: &Path) -> Value {
    let mem_kb = first_line("/proc/meminfo", "MemTotal").and_then(|v| {
        v.split_whitespace()
            .next()
            .and_then(|kb| kb.parse::<u64>().ok())
    });
    json!({
        "cpu": first_line("/proc/cpuinfo", "model name"),
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_gb": mem_kb.map(|kb| (kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "os": std::fs::read_to_string("/etc/os-release").ok().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("PRETTY_NAME="))
                .map(|name| name.trim_matches('"').to_string())
        }),
        "sqlite": rusqlite::version(),
        "nats_server": command_line(nats_server, &["--version"]),
        "rustc": command_line("rustc", &["--version"]),
        "git_commit": command_line("git", &["rev-parse", "--short", "HEAD"]),
        "loadavg_at_start": loadavg(),
    })
}
