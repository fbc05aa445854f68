//! Per-source-address connection caps for the TCP servers (admin API, `onair receive`).
//!
//! A global cap alone lets one host hold every slot with connections that never finish (a
//! slowloris, half-open RTMP handshakes, TLS handshakes that never complete) until their
//! timeouts, locking every other client out meanwhile. With a cap per address (IPv4 as is,
//! IPv6 by /64) one host can hold at most its share; a connection over it is closed on accept.
//! The table holds only addresses with open connections, so it is bounded by the global cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open connections per source address.
#[derive(Debug)]
pub struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; released on drop.
#[derive(Debug)]
pub struct AddressPermit {
    limit: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    /// At most `max` (at least 1) connections per address.
    pub fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more connection from `ip`, or `None` when it has `max` open.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPermit> {
        let key = crate::api::auth::key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressPermit {
            limit: self.clone(),
            key,
        })
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&crate::api::auth::key(ip)).copied().unwrap_or(0)
    }

    /// Addresses with open connections.
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_releases_on_drop() {
        let l = PerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "a third from the same address");
        let _q = l.try_acquire(b).unwrap();
        drop(p1);
        assert_eq!(l.open(a), 1);
        assert!(l.try_acquire(a).is_some());
    }

    #[test]
    fn ipv6_counted_by_prefix_and_table_shrinks() {
        let l = PerAddress::new(1);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2::2".parse().unwrap();
        let p = l.try_acquire(x).unwrap();
        assert!(l.try_acquire(y).is_none(), "same /64");
        drop(p);
        assert_eq!(l.addresses(), 0, "no entry without open connections");
    }
}
