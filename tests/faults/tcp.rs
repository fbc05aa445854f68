//! TCP misbehaviour in front of a real ingest: a server that accepts and never answers (then,
//! on request, starts forwarding to the real ingest), and a slow reader with a tiny receive
//! window. Plain threads and blocking sockets; every connection is counted.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Accepts on `port`; while stalled, holds each connection open without reading a byte; once
/// [`StallServer::serve`] is called, new connections are forwarded to `backend`.
pub struct StallServer {
    pub port: u16,
    serving: Arc<AtomicBool>,
    /// Accept instants, in order.
    accepts: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StallServer {
    pub fn start(backend: u16) -> StallServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind stall server");
        let port = l.local_addr().expect("addr").port();
        let serving = Arc::new(AtomicBool::new(false));
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sv, ac, st) = (serving.clone(), accepts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = conn else { continue };
                ac.lock().expect("accepts").push(Instant::now());
                if sv.load(Ordering::Relaxed) {
                    if let Ok(b) = TcpStream::connect(("127.0.0.1", backend)) {
                        pipe(c, b, 0, Arc::new(AtomicU64::new(0)));
                    }
                } else {
                    held.push(c);
                }
            }
        });
        StallServer {
            port,
            serving,
            accepts,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on, connections are forwarded to the backend (the ingest came back).
    pub fn serve(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    pub fn accepts(&self) -> Vec<Instant> {
        self.accepts.lock().expect("accepts").clone()
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways on two threads; client → backend limited to `rate` bytes/s (0 = no limit,
/// read live so a test can change it).
fn pipe(client: TcpStream, backend: TcpStream, rcvbuf: usize, rate: Arc<AtomicU64>) {
    if rcvbuf > 0 {
        let _ = nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::RcvBuf, &rcvbuf);
    }
    let (mut c_rd, mut c_wr) = (
        client.try_clone().expect("clone"),
        client.try_clone().expect("clone"),
    );
    let (mut b_rd, mut b_wr) = (backend.try_clone().expect("clone"), backend);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let r = rate.load(Ordering::Relaxed);
            // Slow: small reads spaced to keep the rate; the rest waits in the sender's socket.
            let want = if r == 0 { buf.len() } else { 1024 };
            let n = match c_rd.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if b_wr.write_all(&buf[..n]).is_err() {
                break;
            }
            if r > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
            }
        }
        let _ = b_wr.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match b_rd.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if c_wr.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_wr.shutdown(Shutdown::Write);
    });
}

/// A proxy to `backend` that reads from its client slowly through a tiny receive buffer, at
/// `rate` bytes/s (0 = full speed).
pub struct SlowProxy {
    pub addr: SocketAddr,
    pub rate: Arc<AtomicU64>,
}

impl SlowProxy {
    pub fn start(backend: u16, rcvbuf: usize) -> SlowProxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind slow proxy");
        // Set on the listener too: the window offered in the SYN-ACK comes from it.
        let _ = nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::RcvBuf, &rcvbuf);
        let addr = l.local_addr().expect("addr");
        let rate = Arc::new(AtomicU64::new(0));
        let r = rate.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                if let Ok(b) = TcpStream::connect(("127.0.0.1", backend)) {
                    pipe(c, b, rcvbuf, r.clone());
                }
            }
        });
        SlowProxy { addr, rate }
    }
}
