//! The process's monotonic clock in nanoseconds: the one time base shared by ingest receive
//! stamps, frame capture times and (later) consent instants, so they are comparable.
//! Drivers read it; pure cores only receive its values.

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the first call in this process (monotonic, never decreases).
pub fn monotonic_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic() {
        let a = super::monotonic_ns();
        let b = super::monotonic_ns();
        assert!(b >= a);
    }
}
