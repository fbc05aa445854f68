//! The measuring sink: an RTMP server (the receiver's pure [`Session`], with its chunk guard)
//! that accepts `live/bench-<i>` for every stream `i`, stamps each video message on arrival
//! (the read that completed it), records its RTMP timestamp and keyframe flag, and discards
//! the media. One tokio current-thread runtime on its own thread.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::analyze::Received;
use crate::clock::monotonic_ns;
use crate::error::Result;
use crate::media::flv;
use crate::receive::session::{Action, Claims, Session, StreamEntry};
use crate::rtmp_guard::GuardLimits;
use crate::secret::Secret;

/// What one stream's publisher delivered.
#[derive(Clone, Debug, Default)]
pub struct StreamRx {
    /// Video messages that are frames (AVC NALU packets), in receive order.
    pub video: Vec<Received>,
    pub audio_messages: u64,
    pub sequence_headers: u64,
    pub publishes: u64,
}

/// Most connections the sink serves at once.
const MAX_CONNECTIONS: usize = 1024;
/// Frames remembered per stream (10 min at 30 fps).
const MAX_FRAMES: usize = 18_000;

pub struct Sink {
    pub addr: SocketAddr,
    pub streams: Arc<Vec<Mutex<StreamRx>>>,
    _thread: std::thread::JoinHandle<()>,
}

/// The stream name the sink expects for stream `i`.
pub fn stream_name(i: usize) -> String {
    format!("bench-{i}")
}

struct NoClaims(HashSet<String>);

impl Claims for NoClaims {
    fn try_claim(&mut self, name: &str) -> bool {
        self.0.insert(name.to_owned())
    }
    fn release(&mut self, name: &str) {
        self.0.remove(name);
    }
}

impl Sink {
    /// Binds 127.0.0.1:`port` (0 = any) and serves `count` streams on app `live`, key = name.
    pub fn start(port: u16, count: usize) -> Result<Sink> {
        let std_listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|e| crate::err!(Io, "bench sink: bind: {e}"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| crate::err!(Io, "bench sink: {e}"))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| crate::err!(Io, "bench sink: {e}"))?;
        let entries: Arc<[StreamEntry]> = (0..count)
            .map(|i| StreamEntry {
                name: stream_name(i),
                app: "live".into(),
                key: Secret::new(stream_name(i)),
            })
            .collect();
        let streams: Arc<Vec<Mutex<StreamRx>>> =
            Arc::new((0..count).map(|_| Mutex::default()).collect());
        let shared = streams.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    eprintln!("bench sink: cannot start a runtime");
                    return;
                };
                rt.block_on(serve(std_listener, entries, shared));
            })
            .map_err(|e| crate::err!(Io, "bench sink: thread: {e}"))?;
        Ok(Sink {
            addr,
            streams,
            _thread: thread,
        })
    }
}

async fn serve(
    listener: std::net::TcpListener,
    entries: Arc<[StreamEntry]>,
    streams: Arc<Vec<Mutex<StreamRx>>>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        eprintln!("bench sink: cannot register the listener");
        return;
    };
    let claims = Arc::new(Mutex::new(NoClaims(HashSet::new())));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let (entries, streams, claims) = (entries.clone(), streams.clone(), claims.clone());
        tokio::spawn(async move {
            connection(sock, entries, &streams, &claims).await;
            drop(permit);
        });
    }
}

/// A `Claims` view over the shared set, locked per call.
struct SharedClaims<'a>(&'a Mutex<NoClaims>);

impl Claims for SharedClaims<'_> {
    fn try_claim(&mut self, name: &str) -> bool {
        self.0.lock().is_ok_and(|mut c| c.try_claim(name))
    }
    fn release(&mut self, name: &str) {
        if let Ok(mut c) = self.0.lock() {
            c.release(name);
        }
    }
}

async fn connection(
    mut sock: TcpStream,
    entries: Arc<[StreamEntry]>,
    streams: &[Mutex<StreamRx>],
    claims: &Mutex<NoClaims>,
) {
    let mut session = Session::new(entries, GuardLimits::default());
    let mut claims = SharedClaims(claims);
    let mut buf = vec![0u8; 256 << 10];
    let mut current: Option<usize> = None;
    let debug = std::env::var_os("BENCH_SINK_DEBUG").is_some();
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let recv_ns = monotonic_ns();
        let actions = session.handle_input(&buf[..n], &mut claims);
        for a in actions {
            if debug {
                match &a {
                    Action::Tag {
                        tag_type,
                        ts_ms,
                        body,
                    } => {
                        eprintln!("bench sink: tag {tag_type} ts {ts_ms} len {}", body.len())
                    }
                    other => eprintln!("bench sink: {other:?}"),
                }
            }
            match a {
                Action::Send(b) => {
                    if sock.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Action::StartRecording { name, .. } => {
                    current = name
                        .strip_prefix("bench-")
                        .and_then(|i| i.parse::<usize>().ok())
                        .filter(|&i| i < streams.len());
                    if let Some(s) = current.and_then(|i| streams[i].lock().ok()).as_mut() {
                        s.publishes += 1;
                    }
                }
                Action::Tag {
                    tag_type,
                    ts_ms,
                    body,
                } => {
                    let Some(mut s) = current.and_then(|i| streams[i].lock().ok()) else {
                        continue;
                    };
                    record(&mut s, tag_type, ts_ms, &body, recv_ns);
                }
                Action::StopRecording => current = None,
                Action::Close { reason } => {
                    eprintln!("bench sink: closing a connection: {reason}");
                    let _ = sock.shutdown().await;
                    break;
                }
            }
        }
        if session.is_closed() {
            break;
        }
    }
    let _ = session.on_disconnect(&mut claims);
}

fn record(s: &mut StreamRx, tag_type: u8, ts_ms: u32, body: &[u8], recv_ns: u64) {
    match tag_type {
        flv::TAG_AUDIO => s.audio_messages += 1,
        flv::TAG_VIDEO => match body {
            // AVC: frame type in the high nibble, packet type 0 = sequence header, 1 = NALUs.
            [b0, 0, ..] if b0 & 0x0F == flv::VIDEO_CODEC_AVC => s.sequence_headers += 1,
            [b0, 1, ..] if b0 & 0x0F == flv::VIDEO_CODEC_AVC && s.video.len() < MAX_FRAMES => {
                s.video.push(Received {
                    rtmp_ms: ts_ms,
                    key: b0 >> 4 == 1,
                    recv_ns,
                });
            }
            _ => {}
        },
        _ => {}
    }
}
