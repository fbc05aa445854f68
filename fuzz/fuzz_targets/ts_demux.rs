//! The TS demuxer through the pure media core, fed the way the ingest feeds it (datagrams with
//! receive times, idle flushes), under an impairment script: see `onair_fuzz::ts_impair`.
//! Input: `[script_len u16 LE][script][TS bytes]`; the first script byte, if any, sets the gate.
#![no_main]
use libfuzzer_sys::fuzz_target;
use onair::media::core::MediaCore;
use onair_fuzz::media_check::FrameChecker;
use onair_fuzz::ts_impair::{self, Delivery};

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
    let mut last_ns = 0;
    ts_impair::play(script, stream, |d| match d {
        Delivery::Datagram { bytes, rx_ns } => {
            check.input_bytes += bytes.len();
            core.push_datagram(bytes, rx_ns, &mut out);
            check.check(&core, &mut out);
            last_ns = rx_ns;
        }
        Delivery::Idle { rx_ns } => {
            core.flush_idle(rx_ns, &mut out);
            check.check(&core, &mut out);
            last_ns = rx_ns;
        }
    });
    core.flush(last_ns + 1, &mut out);
    check.check(&core, &mut out);
});
