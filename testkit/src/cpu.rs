//! CPU accounting from `/proc`, for the benchmark and the drain measurements: per process
//! and per thread, the machine's busy and stolen shares.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Where the machine's CPU went during a measurement: cores used by each kind of process
/// (the relay `outboxd`, PostgreSQL's processes, Tansu, the benchmark itself with its
/// writers or in-process relay, everything else) and the share of the machine that was busy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// Cores used, by process kind.
    pub cores: std::collections::BTreeMap<String, f64>,
    /// Busy share of all CPUs (not idle, not waiting for I/O), %.
    pub busy_pct: f64,
}

/// CPU ticks of every process, and the machine's, at one moment.
pub struct ProcCpu {
    pub at: Instant,
    pub machine: CpuTicks,
    pub procs: std::collections::HashMap<u32, (String, u64)>,
}

impl ProcCpu {
    pub fn now() -> ProcCpu {
        let mut procs = std::collections::HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                let (comm, ticks) = proc_stat(&stat);
                procs.insert(pid, (comm.to_string(), ticks));
            }
        }
        ProcCpu {
            at: Instant::now(),
            machine: CpuTicks::now(),
            procs,
        }
    }

    /// Cores used by each kind of process since `self` (processes that ended meanwhile are
    /// not counted; ones that started are counted whole).
    pub fn used_since(&self) -> CpuUse {
        let now = ProcCpu::now();
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let hz = clock_ticks_per_sec();
        let mut cores = std::collections::BTreeMap::new();
        for (pid, (comm, ticks)) in &now.procs {
            let before = self
                .procs
                .get(pid)
                .filter(|(c, _)| c == comm)
                .map(|(_, t)| *t)
                .unwrap_or(0);
            let kind = match comm.as_str() {
                "outboxd" => "relay (outboxd)",
                "outboxd-naive" => "relay (naive)",
                "pgbench" => "writers (pgbench)",
                "postgres" => "PostgreSQL",
                "mariadbd" | "mysqld" => "MariaDB",
                "tansu" => "Tansu",
                c if c.starts_with("outboxd-bench") => "benchmark process",
                _ => "other",
            };
            *cores.entry(kind.to_string()).or_insert(0.0) +=
                ticks.saturating_sub(before) as f64 / hz / secs;
        }
        let total = now.machine.total.saturating_sub(self.machine.total).max(1) as f64;
        let idle = now.machine.idle.saturating_sub(self.machine.idle) as f64;
        CpuUse {
            cores,
            busy_pct: 100.0 * (1.0 - idle / total),
        }
    }
}

/// CPU time stolen during one measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Steal {
    /// The measurement.
    pub what: String,
    /// Stolen share of all CPU time, %.
    pub pct: f64,
}

/// The machine's CPU time counters (`/proc/stat`, all CPUs): total and stolen ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    pub total: u64,
    pub steal: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
}

impl CpuTicks {
    pub fn now() -> CpuTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already counted in user.
        CpuTicks {
            total: f.iter().take(8).sum(),
            steal: f.get(7).copied().unwrap_or(0),
            idle: f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0),
        }
    }

    /// Stolen share of the CPU time since `self`, %.
    pub fn steal_pct_since(self) -> f64 {
        let n = CpuTicks::now();
        let total = n.total.saturating_sub(self.total).max(1);
        100.0 * n.steal.saturating_sub(self.steal) as f64 / total as f64
    }

    /// Records (and prints) the stolen share since `self` for `what`.
    pub fn note(self, what: impl Into<String>) {
        let what = what.into();
        let pct = self.steal_pct_since();
        if pct >= 1.0 {
            eprintln!("{what}: {pct:.0} % of CPU time stolen by the hypervisor");
        }
        STEAL.lock().expect("steal").push(Steal { what, pct });
    }
}

/// Every measurement's stolen CPU share, in order.
pub static STEAL: Mutex<Vec<Steal>> = Mutex::new(Vec::new());

/// CPU seconds (user + system) of process `pid` so far.
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    proc_stat(&stat).1 as f64 / clock_ticks_per_sec()
}

/// The command name and the CPU ticks (user + system) of a `/proc/<pid>/stat` line.
pub fn proc_stat(stat: &str) -> (&str, u64) {
    // The command name is in parentheses and may itself hold ')' or spaces.
    let comm = stat
        .split_once('(')
        .and_then(|(_, r)| r.rsplit_once(')'))
        .map_or("", |(c, _)| c);
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (comm, ticks)
}

/// Clock ticks per second of `/proc`'s CPU times.
pub fn clock_ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// Peak resident memory of process `pid`, MiB.
pub fn proc_peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds of this process's threads that belong to the in-process relay: its runtime
/// (`outboxd-relay`) and librdkafka's (`rdk:*`, and rust-rdkafka's polling thread).
pub fn relay_threads_cpu_secs() -> f64 {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm.starts_with("outboxd-relay")
                || comm.starts_with("rdk:")
                || comm.starts_with("producer poll")
            {
                let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64 / 1e9
}

/// User and system CPU seconds of process `pid` so far.
pub fn proc_user_system_secs(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = clock_ticks_per_sec();
    (field(11) as f64 / hz, field(12) as f64 / hz)
}

/// CPU seconds of each thread of process `pid` so far, with the thread's name.
pub fn proc_threads_cpu_secs(pid: u32) -> Vec<(String, f64)> {
    let mut threads = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (comm, ticks) = proc_stat(&stat);
            threads.push((comm.to_string(), ticks as f64 / clock_ticks_per_sec()));
        }
    }
    threads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_command_and_its_user_plus_system_ticks() {
        let line = "4242 (rdk:broker 1) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 9 0";
        assert_eq!(proc_stat(line), ("rdk:broker 1", 150));
    }

    #[test]
    fn this_process_has_threads_and_spends_cpu() {
        let me = std::process::id();
        // Spin for 50 ms of CPU: more than a clock tick.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let (user, system) = proc_user_system_secs(me);
        assert!(user + system > 0.0, "{user} {system}");
        assert!(!proc_threads_cpu_secs(me).is_empty());
    }
}
