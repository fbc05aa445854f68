//! Developer tool: what writing one frame per stream costs on this machine, without a relay.
//! `write_floor PORT STREAMS SECONDS BYTES`: STREAMS TCP connections to 127.0.0.1:PORT (any
//! reader; scripts/write-floor.sh starts one), each written BYTES 31 times a second, the
//! streams spread over the period; prints the process's CPU per stream-second, and the part
//! spent in `write` alone (the sleeps between writes excluded). A floor for the egress of
//! docs/performance.md: a relay can cost no less than the writes it has to make.

use std::io::Write;
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn thread_cpu_ns() -> Res<u64> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(u64::try_from(t.tv_sec())? * 1_000_000_000 + u64::try_from(t.tv_nsec())?)
}

/// On-CPU time of every thread of this process (as scripts/bench.sh counts a relay's).
fn process_cpu_ns() -> Res<u64> {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/task")? {
        let stat = std::fs::read_to_string(e?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .ok_or("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(total)
}

fn run(args: &[String]) -> Res<()> {
    let [port, streams, seconds, bytes] = args else {
        return Err("usage: write_floor PORT STREAMS SECONDS BYTES".into());
    };
    let port: u16 = port.parse()?;
    let k: u32 = streams.parse()?;
    let seconds: u64 = seconds.parse()?;
    let bytes: usize = bytes.parse()?;
    if k == 0 {
        return Err("STREAMS must be at least 1".into());
    }
    let mut conns = Vec::new();
    for _ in 0..k {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let frame = vec![0x5a_u8; bytes];
    let period = Duration::from_nanos(1_000_000_000 / 31);
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = process_cpu_ns()?;
    let t0 = Instant::now();
    let mut write_ns = 0;
    let mut writes = 0_u64;
    let mut n = 0_u32;
    while t0.elapsed() < Duration::from_secs(seconds) {
        let base = t0 + period * n;
        for (i, c) in (0..k).zip(conns.iter_mut()) {
            let due = base + period * i / k;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let w0 = thread_cpu_ns()?;
            c.write_all(&frame)?;
            write_ns += thread_cpu_ns()? - w0;
            writes += 1;
        }
        n += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_ns()? - cpu0;
    let per_stream_s = |ns: u64| ns as f64 / 1e6 / elapsed / f64::from(k);
    println!(
        "{{\"streams\":{k},\"bytes\":{bytes},\"writes_per_stream_s\":{:.1},\"cpu_ms_per_stream_s\":{:.3},\"write_ms_per_stream_s\":{:.3},\"us_per_write\":{:.2}}}",
        writes as f64 / elapsed / f64::from(k),
        per_stream_s(cpu),
        per_stream_s(write_ns),
        write_ns as f64 / 1e3 / writes.max(1) as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write_floor: {e}");
            ExitCode::FAILURE
        }
    }
}
