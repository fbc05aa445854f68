//! One fabric token cannot hold more than `MAX_STREAMS_PER_TOKEN` (4) indicator streams open:
//! the 5th gets 429 `resource_exhausted`, another fabric token is not affected, and a slot is
//! free again once a stream's connection is gone.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Svc;

/// Opens an indicator stream and reads its response head; returns the connection and the head.
async fn open_stream(svc: &Svc, token: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(svc.addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET /v1/fabric/indicators HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "closed before the response head");
        head.extend_from_slice(&buf[..n]);
    }
    (tcp, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test]
async fn a_fabric_token_holds_at_most_four_indicator_streams() {
    let svc = Svc::start("fabric_streams").await;
    let (_, fabric) = svc.token("fabric", None).await;
    let (_, other) = svc.token("fabric", None).await;
    let mut open = Vec::new();
    for i in 0..4 {
        let (tcp, head) = open_stream(&svc, &fabric).await;
        assert!(head.starts_with("HTTP/1.1 200"), "stream {i}: {head}");
        open.push(tcp);
    }
    let refused = svc
        .call(Some(&fabric), "GET", "/v1/fabric/indicators", None)
        .await;
    refused.error(429, "resource_exhausted");
    // Another fabric token has its own allowance.
    let (_other_stream, head) = open_stream(&svc, &other).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A stream whose connection is gone frees its slot (noticed at its next keep-alive, ≤ 5 s).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (tcp, head) = open_stream(&svc, &fabric).await;
        if head.starts_with("HTTP/1.1 200") {
            open.push(tcp);
            break;
        }
        assert!(head.contains(" 429 "), "{head}");
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(open);
    svc.stop().await;
}
