//! Helpers shared by the fuzz targets: a TS impairment player (loss, duplication, reordering,
//! timestamp jumps, PID changes, corruption) and the invariants checked on `MediaCore` output.
//!
//! Panics here are the point: each `assert!` is an invariant the fuzzer reports when it breaks.
#![allow(clippy::unwrap_used)]

pub mod avcc;
pub mod media_check;
pub mod ts_impair;

/// Splits an input into a control script and a payload: the first two bytes (u16 LE) give the
/// script length. Seeds made of a real file prefixed by `[0, 0]` replay the file unimpaired.
pub fn split_script(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [lo, hi, rest @ ..] => {
            let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
            rest.split_at(n)
        }
        _ => (&[], data),
    }
}
