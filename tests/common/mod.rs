//! Real peers for integration tests: nginx with the RTMP module, stunnel for RTMPS, a test CA
//! made with openssl, ffmpeg feeds and ffprobe checks. scripts/test.sh installs the packages.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/test.sh, which installs the test peers"
    );
}

/// A fresh directory under target/ (kept for post-mortem; wiped at the next run of the test).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx with the RTMP module, recording every publish of application `live` under `rec/`.
pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

fn rtmp_module_path() -> &'static str {
    for p in [
        "/usr/lib/nginx/modules/ngx_rtmp_module.so",
        "/usr/share/nginx/modules/ngx_rtmp_module.so",
    ] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("nginx RTMP module not found: run scripts/test.sh (installs libnginx-mod-rtmp)");
}

impl Nginx {
    pub fn start(dir: &Path) -> Nginx {
        Nginx::start_on(dir, free_tcp_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Nginx {
        need("nginx");
        std::fs::create_dir_all(dir.join("rec")).expect("rec dir");
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        let conf = format!(
            "load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/logs/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
rtmp {{
  server {{
    listen 127.0.0.1:{port};
    chunk_size 4096;
    application live {{
      live on;
      record all;
      record_path {dir}/rec;
      record_unique on;
      allow play 127.0.0.1;
      deny play all;
    }}
  }}
}}
",
            module = rtmp_module_path(),
            dir = dir.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_tcp(port);
        Nginx {
            port,
            dir: dir.to_path_buf(),
            proc: Some(Proc(child)),
        }
    }

    /// Kills nginx hard (a crashed ingest), freeing the port. Recordings so far stay.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    pub fn restart(&mut self) {
        let dir = self.dir.clone();
        *self = Nginx::start_on(&dir, self.port);
    }

    /// Recordings made so far, oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.join("rec"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        v
    }
}

/// A test PKI made with openssl: a CA, and a server certificate for localhost/127.0.0.1.
pub struct TestCa {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn make(dir: &Path, cn: &str) -> TestCa {
        need("openssl");
        std::fs::create_dir_all(dir).expect("ca dir");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        TestCa {
            dir: dir.to_path_buf(),
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("server.pem"),
            key_pem: dir.join("server.key"),
        }
    }

    /// SHA-256 of the server certificate's SubjectPublicKeyInfo, hex.
    pub fn server_spki_sha256(&self) -> String {
        let out = Command::new("sh")
            .current_dir(&self.dir)
            .args(["-c", "openssl x509 -in server.pem -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r"])
            .output()
            .expect("openssl");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

/// stunnel terminating TLS on `port` and forwarding to `backend`: a faithful RTMPS ingest.
pub struct Stunnel {
    pub port: u16,
    _proc: Proc,
}

impl Stunnel {
    pub fn start(dir: &Path, ca: &TestCa, backend: u16) -> Stunnel {
        need("stunnel4");
        let port = free_tcp_port();
        let conf = format!(
            "foreground = yes\npid =\noutput = {dir}/stunnel.log\n[rtmps]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend}\ncert = {cert}\nkey = {key}\n",
            dir = dir.display(),
            cert = ca.cert_pem.display(),
            key = ca.key_pem.display(),
        );
        let path = dir.join("stunnel.conf");
        std::fs::write(&path, conf).expect("stunnel conf");
        let child = Command::new("stunnel4")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel4");
        wait_tcp(port);
        Stunnel {
            port,
            _proc: Proc(child),
        }
    }
}

/// Audio/video parameters of a live test feed.
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    pub bframes: u32,
    pub sample_rate: u32,
    pub channels: u32,
    pub seconds: u32,
    pub fps: u32,
}

impl Feed {
    pub const BFRAMES_48K_STEREO: Feed = Feed {
        bframes: 2,
        sample_rate: 48_000,
        channels: 2,
        seconds: 6,
        fps: 25,
    };
    pub const NO_BFRAMES_44K_MONO: Feed = Feed {
        bframes: 0,
        sample_rate: 44_100,
        channels: 1,
        seconds: 6,
        fps: 25,
    };

    pub fn video_frames(&self) -> u32 {
        self.seconds * self.fps
    }

    /// Starts a live ffmpeg encoder (testsrc2 + sine, libx264 + AAC) sending MPEG-TS over UDP
    /// (or RTP/TS with `rtp`) to `port`, and writing the same TS to `copy` for comparison.
    pub fn start(&self, port: u16, copy: &Path, rtp: bool) -> Proc {
        need("ffmpeg");
        let udp = if rtp {
            format!("[f=rtp_mpegts]rtp://127.0.0.1:{port}?pkt_size=1328")
        } else {
            format!("[f=mpegts]udp://127.0.0.1:{port}?pkt_size=1316")
        };
        let tee = format!("{udp}|[f=mpegts]{}", copy.display());
        let child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-re"])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size=320x240:rate={}", self.fps),
            ])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("sine=frequency=440:sample_rate={}", self.sample_rate),
            ])
            .args([
                "-t",
                &self.seconds.to_string(),
                "-map",
                "0:v",
                "-map",
                "1:a",
            ])
            .args([
                "-c:v",
                "libx264",
                "-profile:v",
                if self.bframes > 0 { "high" } else { "main" },
            ])
            .args([
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                "-g",
                &self.fps.to_string(),
            ])
            .args(["-bf", &self.bframes.to_string(), "-threads", "1"])
            .args([
                "-c:a",
                "aac",
                "-ac",
                &self.channels.to_string(),
                "-ar",
                &self.sample_rate.to_string(),
            ])
            .args(["-f", "tee", &tee])
            .stdout(Stdio::null())
            .spawn()
            .expect("start ffmpeg");
        Proc(child)
    }
}

/// Waits for a child to exit (bounded), returning whether it succeeded.
pub fn wait_exit(p: &mut Proc, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = p.0.try_wait() {
            return s.success();
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ffprobe -show_streams` as key=value maps, one per stream.
pub fn probe_streams(file: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", "-of", "flat=s=_"])
        .arg(file));
    let mut streams: Vec<std::collections::HashMap<String, String>> = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("streams_stream_") else {
            continue;
        };
        let Some((idx, kv)) = rest.split_once('_') else {
            continue;
        };
        let Ok(i) = idx.parse::<usize>() else {
            continue;
        };
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        while streams.len() <= i {
            streams.push(Default::default());
        }
        streams[i].insert(k.to_string(), v.trim_matches('"').to_string());
    }
    streams
}

pub fn stream_of<'a>(
    streams: &'a [std::collections::HashMap<String, String>],
    kind: &str,
) -> &'a std::collections::HashMap<String, String> {
    streams
        .iter()
        .find(|s| s.get("codec_type").map(String::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} stream in {streams:?}"))
}

/// Hashes of decoded video frames (decoded-identical comparison).
pub fn video_frame_hashes(file: &Path) -> Vec<String> {
    let out = run(Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-map", "0:v", "-f", "framemd5", "-"]));
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(',').nth(5)) // stream, dts, pts, duration, size, hash[, side data]
        .map(|s| s.trim().to_string())
        .collect()
}

/// Hashes of raw AAC packets (ADTS headers stripped on the TS side).
pub fn audio_packet_hashes(file: &Path, from_ts: bool) -> Vec<String> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-map", "0:a", "-c", "copy"]);
    if from_ts {
        cmd.args(["-bsf:a", "aac_adtstoasc"]);
    }
    let out = run(cmd.args(["-f", "framemd5", "-"]));
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(',').nth(5)) // stream, dts, pts, duration, size, hash[, side data]
        .map(|s| s.trim().to_string())
        .collect()
}

/// Per-stream packet DTS (ms) of a file, in file order.
pub fn packet_dts_ms(file: &Path, kind: &str) -> Vec<f64> {
    let sel = if kind == "video" { "v" } else { "a" };
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            sel,
            "-show_entries",
            "packet=dts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(file));
    out.lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect()
}

/// Where `part` sits inside `whole` as a contiguous run, if it does.
pub fn find_run(whole: &[String], part: &[String]) -> Option<usize> {
    if part.is_empty() || part.len() > whole.len() {
        return None;
    }
    (0..=whole.len() - part.len()).find(|&i| whole[i..i + part.len()] == *part)
}

/// Audio packets of a TS file whose interval ends after the first video DTS.
pub fn audio_frames_overlapping_video(file: &Path) -> usize {
    let list = |sel: &str, entries: &str| {
        run(Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                sel,
                "-show_entries",
                entries,
                "-of",
                "csv=p=0",
            ])
            .arg(file))
    };
    let first_video_dts = list("v", "packet=dts_time")
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
        .fold(f64::INFINITY, f64::min);
    list("a", "packet=pts_time,duration_time")
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',').map(|x| x.trim().parse::<f64>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(pts, dur)| pts + dur > first_video_dts + 1e-6)
        .count()
}
