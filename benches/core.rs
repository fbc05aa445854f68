//! Micro-benchmarks of the pure cores (issue 5): TS demux, the whole media core, H.264 and AAC
//! repacking, RTMP chunking on the egress and the receiver's RTMP input. Throughput in bytes
//! of input (criterion prints MB/s) and, where a packet count makes sense, per TS packet.
//!
//! Input: the bundled clip assets/sample.ts (1080p H.264 High with B-frames + AAC, 10 s).
//! Run by hand; `scripts/microbench.sh` saves a baseline and compares against it.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use onair::egress::session::{Output, Phase, PublishSession};
use onair::media::aac::split_adts;
use onair::media::core::{MediaCore, MediaFrame};
use onair::media::h264::H264Repacker;
use onair::media::ts::{DemuxEvent, Demuxer, StreamType};
use onair::receive::session::{Action, Claims, Session, StreamEntry};
use onair::rtmp_guard::GuardLimits;
use onair::secret::Secret;

const SAMPLE: &[u8] = include_bytes!("../assets/sample.ts");
const DATAGRAM: usize = 7 * 188;

fn pes_of(kind: StreamType) -> Vec<Bytes> {
    let mut events = Vec::new();
    Demuxer::new().push(SAMPLE, &mut events);
    events
        .into_iter()
        .filter_map(|e| match e {
            DemuxEvent::Pes(p) if p.stream_type == kind => Some(p.data),
            _ => None,
        })
        .collect()
}

fn frames() -> Vec<MediaFrame> {
    let mut core = MediaCore::new();
    let mut out = Vec::new();
    for d in SAMPLE.chunks(DATAGRAM) {
        core.push_datagram(d, 0, &mut out);
    }
    core.flush(0, &mut out);
    out
}

struct AnyClaims;
impl Claims for AnyClaims {
    fn try_claim(&mut self, _: &str) -> bool {
        true
    }
    fn release(&mut self, _: &str) {}
}

/// An egress session and a receiver session talking in memory until the publish is accepted.
fn publishing_pair() -> (PublishSession, Session) {
    let key = "bench-key";
    let streams: Arc<[StreamEntry]> = Arc::new([StreamEntry {
        name: "bench".into(),
        app: "live".into(),
        key: Secret::new(key),
    }]);
    let mut server = Session::new(streams, GuardLimits::default());
    let (mut client, hello) =
        PublishSession::new("live", "rtmp://127.0.0.1/live", Secret::new(key), 32768)
            .expect("client");
    let mut to_server = vec![hello];
    for _ in 0..32 {
        let mut to_client = Vec::new();
        for b in to_server.drain(..) {
            for a in server.handle_input(&b, &mut AnyClaims) {
                if let Action::Send(s) = a {
                    to_client.push(s);
                }
            }
        }
        let mut out = Vec::new();
        for b in to_client {
            client.handle_input(&b, &mut out).expect("client input");
        }
        for o in out {
            if let Output::Send(s) = o {
                to_server.push(s);
            }
        }
        if client.phase() == Phase::Publishing {
            return (client, server);
        }
    }
    panic!("the in-memory publish never got accepted");
}

fn benches(c: &mut Criterion) {
    let packets = (SAMPLE.len() / 188) as u64;

    let mut g = c.benchmark_group("ts_demux");
    g.throughput(Throughput::Bytes(SAMPLE.len() as u64));
    g.bench_function("sample.ts", |b| {
        let mut events = Vec::new();
        b.iter(|| {
            let mut d = Demuxer::new();
            events.clear();
            d.push(black_box(SAMPLE), &mut events);
            black_box(events.len())
        })
    });
    g.throughput(Throughput::Elements(packets));
    g.bench_function("per TS packet", |b| {
        let mut events = Vec::new();
        b.iter(|| {
            let mut d = Demuxer::new();
            events.clear();
            d.push(black_box(SAMPLE), &mut events);
            black_box(events.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("media_core");
    g.throughput(Throughput::Bytes(SAMPLE.len() as u64));
    g.bench_function("datagrams to FLV frames", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let mut core = MediaCore::new();
            out.clear();
            for d in SAMPLE.chunks(DATAGRAM) {
                core.push_datagram(black_box(d), 0, &mut out);
            }
            black_box(out.len())
        })
    });
    g.finish();

    let video = pes_of(StreamType::H264);
    let video_bytes: usize = video.iter().map(|p| p.len()).sum();
    let mut g = c.benchmark_group("h264_repack");
    g.throughput(Throughput::Bytes(video_bytes as u64));
    g.bench_function("Annex-B to AVCC", |b| {
        b.iter(|| {
            let mut r = H264Repacker::new();
            let mut n = 0;
            for p in &video {
                if let Ok((_, f)) = r.push(black_box(p)) {
                    n += f.data().len();
                }
            }
            black_box(n)
        })
    });
    g.finish();

    let audio = pes_of(StreamType::AdtsAac);
    let audio_bytes: usize = audio.iter().map(|p| p.len()).sum();
    let mut g = c.benchmark_group("aac_repack");
    g.throughput(Throughput::Bytes(audio_bytes as u64));
    g.bench_function("ADTS to raw", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let mut n = 0;
            for p in &audio {
                out.clear();
                let _ = split_adts(black_box(p), &mut out);
                n += out.len();
            }
            black_box(n)
        })
    });
    g.finish();

    let frames = frames();
    assert!(
        frames.len() > 500,
        "the sample gave {} frames",
        frames.len()
    );
    let frame_bytes: usize = frames.iter().map(|f| f.body.len()).sum();
    let (mut client, _) = publishing_pair();
    let mut g = c.benchmark_group("rtmp_chunking");
    g.throughput(Throughput::Bytes(frame_bytes as u64));
    let mut parts = Vec::new();
    g.bench_function("FLV frames to RTMP chunks", |b| {
        b.iter(|| {
            let mut n = 0;
            for f in &frames {
                n += client.send_frame(black_box(f), &mut parts).unwrap_or(0);
                parts.clear();
            }
            black_box(n)
        })
    });
    g.finish();

    // The receiver's input path (chunk guard + rml_rtmp + FLV tags), fed what the egress sent.
    let (mut client, server) = publishing_pair();
    let wire: Vec<Bytes> = frames
        .iter()
        .filter_map(|f| {
            let mut parts = Vec::new();
            client.send_frame(f, &mut parts).ok()?;
            Some(Bytes::from(parts.concat()))
        })
        .collect();
    let wire_bytes: usize = wire.iter().map(|b| b.len()).sum();
    // The work measured below is real: a fresh receiver turns this into one tag per frame.
    let mut fresh = publishing_pair().1;
    let tags = wire
        .iter()
        .flat_map(|w| fresh.handle_input(w, &mut AnyClaims))
        .filter(|a| matches!(a, Action::Tag { .. }))
        .count();
    assert_eq!(tags, frames.len(), "receiver tags vs frames sent");
    drop(server);
    let mut g = c.benchmark_group("rtmp_receive");
    g.throughput(Throughput::Bytes(wire_bytes as u64));
    g.sample_size(20);
    g.bench_function("RTMP chunks to FLV tags", |b| {
        b.iter_batched(
            || publishing_pair().1,
            |mut server| {
                let mut n = 0;
                for w in &wire {
                    n += server.handle_input(black_box(w), &mut AnyClaims).len();
                }
                black_box(n)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
