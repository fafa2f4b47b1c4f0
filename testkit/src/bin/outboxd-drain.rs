//! `outboxd-drain`: one drain by `outboxd run`, as users run it, with its CPU split — the
//! quick A/B measurement and the profiles of docs/performance.md (`scripts/perf-drain.sh`,
//! `scripts/callgrind-drain.sh`).
//!
//! A fresh database beside `DATABASE_URL`'s with ROWS pending rows (`testkit::backlog`:
//! 500-byte JSON payloads, 10,000 aggregates), a private Tansu with an 8-partition topic,
//! then `outboxd run` (the binary beside this one, or `$OUTBOXD_BIN`) until the outbox is
//! empty. Prints events/s, user and system CPU per event and CPU per relay thread; on
//! request attaches `perf`, or runs the relay under valgrind's callgrind and prints its
//! instructions per event. Settings for the relay come from the environment as usual
//! (`OUTBOXD__RELAY__WORKER_THREADS=2 …`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::broker::{LocalBroker, tansu_binary};
use testkit::cpu::{proc_threads_cpu_secs, proc_user_system_secs};
use testkit::process::{find_outboxd, free_port, wait_for_port};

const TOPIC: &str = "perf";

/// One drain by `outboxd run`, measured.
#[derive(Debug, Parser)]
#[command(name = "outboxd-drain", about, long_about = None)]
struct Args {
    /// Pending rows to drain.
    #[arg(default_value_t = 300_000)]
    rows: u64,
    /// The database to (re)create beside DATABASE_URL's.
    #[arg(long, default_value = "outboxd_perf")]
    database: String,
    /// The relay reaches Tansu over TLS: socat terminates it in front of Tansu, with the
    /// test CA's server certificate (scripts/setup.sh makes it).
    #[arg(long)]
    kafka_tls: bool,
    /// Attach perf to the relay: `record` (a profile, OUT/perf.data) or `poll` (its poll(),
    /// sendmsg() and context-switch counts).
    #[arg(long, value_enum)]
    perf: Option<Perf>,
    /// Run the relay under valgrind's callgrind (OUT/callgrind.out.*) and print the
    /// instructions it spent per event.
    #[arg(long)]
    callgrind: bool,
    /// Where logs and profiles go.
    #[arg(long, default_value = "target/perf")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Perf {
    Record,
    Poll,
}

/// A child process stopped (SIGTERM, then waited for) when dropped.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match drain(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outboxd-drain: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn drain(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rows > 0, "ROWS must be > 0");
    let bin = find_outboxd()?;
    std::fs::create_dir_all(&args.out)?;
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = testkit::backlog::fresh_database(&admin, &args.database).await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    testkit::backlog::prefill(&pool, args.rows, TOPIC, |_| {}).await?;

    // A private Tansu; with --kafka-tls clients reach it only through the TLS terminator,
    // on the port Tansu advertises.
    let port = free_port();
    let advertised = if args.kafka_tls { free_port() } else { port };
    let listen = format!("127.0.0.1:{port}");
    let _broker = LocalBroker::start(
        &listen,
        &format!("127.0.0.1:{advertised}"),
        &args.out.join("tansu.log"),
    )?;
    // Tansu's own command creates the topic: a Kafka client would follow the advertised
    // address, which speaks TLS.
    let tansu = tansu_binary().context("no Tansu binary: run scripts/setup.sh")?;
    let created = Command::new(tansu)
        .args(["topic", "create", "--broker", &format!("tcp://{listen}")])
        .args(["--partitions", "8", TOPIC])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(created.success(), "tansu topic create: {created}");
    let mut relay_env = vec![
        ("OUTBOXD__DATABASE__URL".to_string(), url.clone()),
        (
            "OUTBOXD__KAFKA__BROKERS".to_string(),
            format!("127.0.0.1:{advertised}"),
        ),
        ("OUTBOXD__METRICS__LISTEN".to_string(), String::new()),
        ("OUTBOXD__LOG__LEVEL".to_string(), "warn".to_string()),
    ];
    let _terminator = if args.kafka_tls {
        let (terminator, env) = tls_terminator(advertised, port)?;
        relay_env.extend(env);
        Some(terminator)
    } else {
        None
    };

    let log = std::fs::File::create(args.out.join("relay.log"))?;
    let mut cmd = if args.callgrind {
        let _ = std::fs::remove_dir_all(args.out.join("callgrind"));
        std::fs::create_dir_all(args.out.join("callgrind"))?;
        let mut c = Command::new("valgrind");
        c.arg("--tool=callgrind")
            .arg(format!(
                "--callgrind-out-file={}",
                args.out.join("callgrind/callgrind.out.%p").display()
            ))
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.arg("run")
        .envs(relay_env)
        .stderr(log)
        .stdout(Stdio::null());
    let relay = Stopped(
        cmd.spawn()
            .with_context(|| format!("{cmd:?} (valgrind and perf: Debian packages)"))?,
    );
    let pid = relay.0.id();
    let t0 = Instant::now();
    let profiler = match args.perf {
        Some(p) => {
            // perf attaches to the threads that exist: let librdkafka start its own first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(perf(p, pid, &args.out)?)
        }
        None => None,
    };
    let deadline = t0 + Duration::from_secs(900);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} rows left after 15 minutes; see {}",
            args.out.join("relay.log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(p) = profiler {
        let _ = kill(Pid::from_raw(p.id() as i32), Signal::SIGINT);
        let _ = p.wait_with_output();
    }
    let per_event = |secs: f64| secs * 1e6 / args.rows as f64;
    for (thread, secs) in proc_threads_cpu_secs(pid) {
        println!("  thread {thread:<16} {:6.2} µs/event", per_event(secs));
    }
    let (user, system) = proc_user_system_secs(pid);
    println!(
        "rows {}, {seconds:.2} s, {:.0} events/s, CPU {:.2} µs/event (user {:.2}, system {:.2})",
        args.rows,
        args.rows as f64 / seconds,
        per_event(user + system),
        per_event(user),
        per_event(system)
    );
    drop(relay);
    match args.perf {
        Some(Perf::Poll) => {
            let stat = std::fs::read_to_string(args.out.join("perf-stat.txt"))?;
            for line in stat
                .lines()
                .filter(|l| l.contains("syscalls:") || l.contains("context-switches"))
            {
                let f: Vec<&str> = line.split_whitespace().collect();
                println!("  {} {}", f.get(1).unwrap_or(&""), f.first().unwrap_or(&""));
            }
        }
        Some(Perf::Record) => println!(
            "profile: perf report -i {} --no-children --sort sym",
            args.out.join("perf.data").display()
        ),
        None => {}
    }
    if args.callgrind {
        let total = callgrind_total(&args.out.join("callgrind"))?;
        println!(
            "rows {}, instructions {total}, per event {}",
            args.rows,
            total / args.rows
        );
    }
    Ok(())
}

/// socat terminating TLS on `listen` in front of `target`, and the relay's settings that
/// trust it.
fn tls_terminator(listen: u16, target: u16) -> anyhow::Result<(Stopped, Vec<(String, String)>)> {
    let pki = PathBuf::from(
        std::env::var("OUTBOXD_TEST_PG_TLS_DIR")
            .unwrap_or_else(|_| "/var/lib/outboxd-tests/pg-tls".into()),
    );
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            pki.join("server.crt").display(),
            pki.join("server.key").display()
        ))
        .arg(format!("TCP:127.0.0.1:{target}"))
        .stderr(Stdio::null())
        .spawn()
        .context("socat (Debian package)")?;
    let terminator = Stopped(child);
    anyhow::ensure!(
        wait_for_port(listen, Duration::from_secs(10)),
        "socat did not listen on {listen}"
    );
    let env = vec![
        (
            "OUTBOXD__KAFKA__PRODUCER__SECURITY.PROTOCOL".to_string(),
            "ssl".to_string(),
        ),
        (
            "OUTBOXD__KAFKA__PRODUCER__SSL.CA.LOCATION".to_string(),
            pki.join("ca.crt").display().to_string(),
        ),
    ];
    Ok((terminator, env))
}

fn perf(p: Perf, pid: u32, out: &Path) -> anyhow::Result<Child> {
    let pid = pid.to_string();
    let mut cmd = Command::new("perf");
    match p {
        Perf::Record => cmd
            .args(["record", "-e", "cpu-clock", "-F", "1000"])
            .args(["--call-graph", "dwarf,16384", "-p", &pid, "-o"])
            .arg(out.join("perf.data")),
        Perf::Poll => cmd
            .args(["stat", "-e"])
            .arg("syscalls:sys_enter_poll,syscalls:sys_enter_sendmsg,context-switches")
            .args(["-p", &pid, "-o"])
            .arg(out.join("perf-stat.txt")),
    };
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf (Debian package linux-perf)")
}

/// The PROGRAM TOTALS of callgrind's output files in `dir`, by callgrind_annotate.
fn callgrind_total(dir: &Path) -> anyhow::Result<u64> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("callgrind.out."))
        .collect();
    let out = Command::new("callgrind_annotate")
        .args(&files)
        .output()
        .context("callgrind_annotate (valgrind's)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::write(dir.join("annotate.txt"), text.as_bytes())?;
    text.lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .context("no PROGRAM TOTALS in callgrind_annotate's output")
}
