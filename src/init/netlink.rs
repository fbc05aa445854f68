//! Just enough rtnetlink to bring an interface up, give it an IPv4 address and add routes —
//! without `ip` or any `unsafe`: the messages are built here (pure, tested) and sent over a
//! netlink socket through `nix`. [`apply`] carries out a [`NetPlan`].

use std::net::Ipv4Addr;
use std::time::Duration;

use super::netplan::{Interface, NetPlan, Role, Route};
use crate::board::Ipv4Cidr;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

/// One request message under construction.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32) -> Msg {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Msg(b)
    }

    fn bytes(mut self, b: &[u8]) -> Msg {
        self.0.extend_from_slice(b);
        self
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// RTM_NEWLINK setting IFF_UP on interface `index`.
pub fn link_up(index: u32, seq: u32) -> Vec<u8> {
    let mut ifinfo = vec![0u8, 0]; // family AF_UNSPEC, pad
    ifinfo.extend_from_slice(&0u16.to_ne_bytes()); // type
    ifinfo.extend_from_slice(&index.to_ne_bytes());
    ifinfo.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    ifinfo.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    Msg::new(RTM_NEWLINK, 0, seq).bytes(&ifinfo).finish()
}

/// RTM_NEWADDR: `addr/prefix_len` on interface `index`.
pub fn add_address(index: u32, addr: Ipv4Addr, prefix_len: u8, seq: u32) -> Vec<u8> {
    let mut ifa = vec![AF_INET, prefix_len, 0, 0]; // family, prefix, flags, scope universe
    ifa.extend_from_slice(&index.to_ne_bytes());
    Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq)
        .bytes(&ifa)
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets())
        .finish()
}

/// RTM_NEWROUTE: the default route via `gateway` out of interface `index`.
pub fn add_default_route(index: u32, gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    let route = Route {
        dst: None,
        gateway: Some(gateway),
        metric: None,
    };
    add_route(index, &route, seq)
}

/// RTM_NEWROUTE: `route` out of interface `index` (main table). Without a gateway the route is
/// on-link (scope link).
pub fn add_route(index: u32, route: &Route, seq: u32) -> Vec<u8> {
    let dst_len = route.dst.map_or(0, |d| d.prefix_len);
    let scope = if route.gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    // family, dst_len, src_len, tos, table, protocol, scope, type; flags
    let mut rt = vec![
        AF_INET,
        dst_len,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope,
        RTN_UNICAST,
    ];
    rt.extend_from_slice(&0u32.to_ne_bytes());
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq).bytes(&rt);
    if let Some(d) = route.dst {
        m = m.attr(RTA_DST, &d.network().octets());
    }
    if let Some(gw) = route.gateway {
        m = m.attr(RTA_GATEWAY, &gw.octets());
    }
    m = m.attr(RTA_OIF, &index.to_ne_bytes());
    if let Some(metric) = route.metric {
        m = m.attr(RTA_PRIORITY, &metric.to_ne_bytes());
    }
    m.finish()
}

/// The kernel's answer to request `seq`: `Some(0)` for an ack, `Some(-errno)` for an error,
/// `None` if `buf` holds no answer to it.
pub fn parse_ack(buf: &[u8], seq: u32) -> Option<i32> {
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        if kind == NLMSG_ERROR && msg_seq == seq && len >= 20 {
            return Some(i32::from_ne_bytes(rest[16..20].try_into().ok()?));
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    None
}

/// Sends one request and waits (bounded) for its ack. EEXIST counts as success.
#[cfg(target_os = "linux")]
pub fn request(msg: &[u8], seq: u32) -> std::io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
        setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )?;
    sendto(
        fd.as_raw_fd(),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        match parse_ack(&buf[..n], seq) {
            Some(0) => return Ok(()),
            Some(e) if e == -(nix::errno::Errno::EEXIST as i32) => return Ok(()),
            Some(e) => return Err(std::io::Error::from_raw_os_error(-e)),
            None => continue,
        }
    }
    Err(std::io::Error::other("no netlink ack"))
}

/// What [`apply`] configured: the addresses that are on their interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub management: Option<Ipv4Cidr>,
    /// A separate fabric NIC's address (None when it is the management NIC).
    pub fabric: Option<Ipv4Cidr>,
}

/// How long [`apply`] waits for each NIC to appear (drivers probe after the modules load).
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    pub management: Duration,
    /// Counted after the management NIC is there: both NICs probe at about the same time.
    pub fabric: Duration,
}

/// Brings up `lo` and every interface of `plan`: link up, address, routes. Never fails: each
/// problem is logged (a missing fabric NIC does not hold back the management NIC).
#[cfg(target_os = "linux")]
pub fn apply(plan: &NetPlan, waits: Waits) -> Applied {
    for e in &plan.errors {
        tracing::error!("network: {e}");
    }
    let mut seq = 1;
    send(&link_up(1, seq), seq, "lo", "link up");
    let mut applied = Applied::default();
    for iface in &plan.interfaces {
        let wait = if iface.role == Role::Fabric {
            waits.fabric
        } else {
            waits.management
        };
        let addr = bring_up(iface, wait, &mut seq);
        match iface.role {
            Role::Fabric => applied.fabric = addr,
            Role::Management | Role::ManagementAndFabric => applied.management = addr,
        }
    }
    applied
}

/// One interface; returns its address if it was set.
#[cfg(target_os = "linux")]
fn bring_up(iface: &Interface, wait: Duration, seq: &mut u32) -> Option<Ipv4Cidr> {
    let role = match iface.role {
        Role::Management => "management",
        Role::Fabric => "fabric",
        Role::ManagementAndFabric => "management and fabric",
    };
    let name = iface.name.as_str();
    let index = match super::sys::wait_interface(name, wait) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(
                "network: {role} NIC {name} is missing ({e}): not configured, continuing without it"
            );
            return None;
        }
    };
    let mut next = || {
        *seq = seq.wrapping_add(1);
        *seq
    };
    let s = next();
    send(&link_up(index, s), s, name, "link up");
    let addr = iface.address.filter(|a| {
        let s = next();
        send(
            &add_address(index, a.addr, a.prefix_len, s),
            s,
            name,
            "address",
        )
    });
    if iface.address.is_none() {
        tracing::warn!("network: {role} NIC {name}: no IPv4 address configured");
    }
    for r in &iface.routes {
        if r.gateway.is_some() && addr.is_none() {
            continue;
        }
        let s = next();
        send(&add_route(index, r, s), s, name, &describe(r));
    }
    tracing::info!(
        interface = name,
        address = %addr.map_or("-".to_string(), |a| a.to_string()),
        routes = ?iface.routes.iter().map(describe).collect::<Vec<_>>(),
        "{role} network up"
    );
    addr
}

fn describe(r: &Route) -> String {
    let mut s = r.dst.map_or("default".to_string(), |d| d.to_string());
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(m) = r.metric {
        s.push_str(&format!(" metric {m}"));
    }
    s
}

#[cfg(target_os = "linux")]
fn send(msg: &[u8], seq: u32, name: &str, what: &str) -> bool {
    match request(msg, seq) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("network: {name}: {what}: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([b[i], b[i + 1]])
    }

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    #[test]
    fn link_up_layout() {
        let m = link_up(3, 7);
        assert_eq!(m.len(), 32);
        assert_eq!(u32_at(&m, 0), 32);
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(u32_at(&m, 20), 3, "ifindex");
        assert_eq!((u32_at(&m, 24), u32_at(&m, 28)), (IFF_UP, IFF_UP));
    }

    #[test]
    fn address_layout() {
        let m = add_address(2, Ipv4Addr::new(10, 0, 2, 15), 24, 1);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), 2);
        assert_eq!((u16_at(&m, 24), u16_at(&m, 26)), (8, IFA_LOCAL));
        assert_eq!(&m[28..32], &[10, 0, 2, 15]);
        assert_eq!(u16_at(&m, 34), IFA_ADDRESS);
    }

    #[test]
    fn route_layout() {
        let m = add_default_route(2, Ipv4Addr::new(10, 0, 2, 2), 1);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(m[16 + 4], RT_TABLE_MAIN);
        assert_eq!(u16_at(&m, 30), RTA_GATEWAY);
        assert_eq!(&m[32..36], &[10, 0, 2, 2]);
        assert_eq!(u16_at(&m, 38), RTA_OIF);
        assert_eq!(u32_at(&m, 40), 2);
    }

    #[test]
    fn multicast_route_layout() {
        let r = Route {
            dst: Some(super::super::netplan::MULTICAST),
            gateway: None,
            metric: Some(1024),
        };
        let m = add_route(3, &r, 9);
        assert_eq!(m.len(), 16 + 12 + 8 + 8 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(
            &m[16..24],
            &[
                AF_INET,
                4,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_BOOT,
                RT_SCOPE_LINK,
                RTN_UNICAST
            ]
        );
        assert_eq!((u16_at(&m, 28), u16_at(&m, 30)), (8, RTA_DST));
        assert_eq!(&m[32..36], &[224, 0, 0, 0]);
        assert_eq!((u16_at(&m, 38), u32_at(&m, 40)), (RTA_OIF, 3));
        assert_eq!((u16_at(&m, 46), u32_at(&m, 48)), (RTA_PRIORITY, 1024));
        assert_eq!(describe(&r), "224.0.0.0/4 metric 1024");
    }

    #[test]
    fn acks_and_errors_are_found_by_sequence() {
        let err = |seq: u32, code: i32| {
            let mut b = Vec::new();
            b.extend_from_slice(&36u32.to_ne_bytes());
            b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            b.extend_from_slice(&0u16.to_ne_bytes());
            b.extend_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&code.to_ne_bytes());
            b.extend_from_slice(&[0u8; 16]); // the echoed request header
            b
        };
        let mut two = err(1, -17);
        two.extend(err(2, 0));
        assert_eq!(parse_ack(&two, 1), Some(-17));
        assert_eq!(parse_ack(&two, 2), Some(0));
        assert_eq!(parse_ack(&two, 3), None);
        // Truncated or garbage input never panics.
        for n in 0..two.len() {
            let _ = parse_ack(&two[..n], 2);
        }
        assert_eq!(parse_ack(&[0xff; 40], 1), None);
    }
}
