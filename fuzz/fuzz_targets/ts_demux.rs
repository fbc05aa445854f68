//! The TS demuxer through the pure media core, fed the way the ingest feeds it (datagrams with
//! receive times, idle flushes), under an impairment script: see `onair_fuzz::ts_impair`.
//! Input: `[script_len u16 LE][script][TS bytes]`; the first script byte, if any, sets the gate.
//!
//! Invariants after every push (`onair_fuzz::media_check`), and one at the end: when every
//! datagram was whole aligned TS packets and the source never paused, delivering the same
//! packets one per datagram (without the datagrams dropped as repeats, repeat filter off)
//! gives the same frames (datagram boundaries carry no meaning).
#![no_main]
use libfuzzer_sys::fuzz_target;
use onair::media::core::{MediaCore, MediaFrame};
use onair_fuzz::media_check::FrameChecker;
use onair_fuzz::ts_impair::{self, Delivery};

/// What must not depend on datagram boundaries.
fn essence(frames: &[MediaFrame]) -> Vec<(onair::media::core::FrameKind, u32, &[u8], bool)> {
    frames
        .iter()
        .map(|f| (f.kind, f.ts_ms, &f.body[..], f.keyframe))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (script, stream) = onair_fuzz::split_script(data);
    let (gate, script) = match script.split_first() {
        // Gate at datagram ~g (the player advances 1 ms per step); 0 = no gate.
        Some((&g, rest)) if g != 0 => (Some(u64::from(g) * 1_000_000), rest),
        Some((_, rest)) => (None, rest),
        None => (None, script),
    };
    let mut core = gate.map_or_else(MediaCore::new, MediaCore::with_gate);
    let mut check = FrameChecker::new(gate);
    let mut out = Vec::new();
    let mut all = Vec::new();
    let mut last_ns = 0;
    // (datagram, rx_ns) while every datagram is aligned TS; None once one is not.
    let mut aligned: Option<Vec<(Vec<u8>, u64)>> = Some(Vec::new());
    ts_impair::play(script, stream, |d| match d {
        Delivery::Datagram { bytes, rx_ns } => {
            check.input_bytes += bytes.len();
            let repeats = core.stats().duplicate_datagrams;
            core.push_datagram(bytes, rx_ns, &mut out);
            let dropped = core.stats().duplicate_datagrams > repeats;
            all.extend_from_slice(&out);
            check.check(&core, &mut out);
            last_ns = rx_ns;
            let whole = bytes.len() % 188 == 0 && bytes.chunks(188).all(|p| p[0] == 0x47);
            match aligned.as_mut() {
                // A datagram dropped as a repeat never reached the demuxer: nor does it in
                // the replay.
                Some(_) if whole && dropped => {}
                Some(v) if whole => v.push((bytes.to_vec(), rx_ns)),
                _ => aligned = None,
            }
        }
        Delivery::Idle { rx_ns } => {
            core.flush_idle(rx_ns, &mut out);
            core.tick(rx_ns, &mut out);
            all.extend_from_slice(&out);
            check.check(&core, &mut out);
            last_ns = rx_ns;
            aligned = None;
        }
    });
    core.flush(last_ns + 1, &mut out);
    all.extend_from_slice(&out);
    check.check(&core, &mut out);

    // The repeated-datagram filter works on whole datagrams (a packet repeated within 8
    // single-packet datagrams is a repeat; within a 7-packet datagram among others it is not),
    // so the replay leaves out what it dropped on the datagram path and runs with it off
    // (repeats there are left to the continuity counter rules).
    if let Some(datagrams) = aligned {
        let mut one = gate.map_or_else(MediaCore::new, MediaCore::with_gate);
        one.set_dedup(false);
        let mut frames = Vec::new();
        for (d, rx_ns) in &datagrams {
            for p in d.chunks(188) {
                one.push_datagram(p, *rx_ns, &mut frames);
            }
        }
        one.flush(last_ns + 1, &mut frames);
        assert_eq!(
            essence(&all),
            essence(&frames),
            "datagram boundaries changed the output"
        );
    }
});
