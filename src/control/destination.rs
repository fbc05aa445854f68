//! Destinations: service presets, validation of a profile's URL against the admin policy, and
//! the address check made on the address actually connected to (after DNS). Pure.

use std::net::{IpAddr, SocketAddr};

use crate::ingest::IngestConfig;

use super::model::{Policy, Service};
use crate::egress::url::{RtmpUrl, Scheme};

/// Preset ingest URLs: (primary, backup). `None` primary means the service issues a URL per
/// stream (it must be given, and must be on the service's domain).
pub fn preset(service: Service) -> Option<(&'static str, Option<&'static str>)> {
    match service {
        Service::Youtube => Some((
            "rtmps://a.rtmps.youtube.com:443/live2",
            Some("rtmps://b.rtmps.youtube.com:443/live2?backup=1"),
        )),
        Service::Facebook => Some(("rtmps://live-api-s.facebook.com:443/rtmp", None)),
        Service::Twitch => Some(("rtmp://live.twitch.tv:1935/app", None)),
        Service::Vimeo => Some(("rtmps://rtmp-global.cloud.vimeo.com:443/live", None)),
        Service::Linkedin | Service::Custom => None,
    }
}

/// Domains a per-stream URL of a service must be under.
fn service_domain(service: Service) -> Option<&'static str> {
    match service {
        Service::Linkedin => Some("linkedin.com"),
        _ => None,
    }
}

/// A CIDR range, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim().parse().ok()?
        };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_match(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_match(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(net: &[u8], addr: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != addr[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    net[full] & mask == addr[full] & mask
}

/// Private, loopback or link-local (the "private only" appliance's allowed set).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local(),
        IpAddr::V6(a) => {
            a.is_loopback()
                || (a.segments()[0] & 0xFE00) == 0xFC00
                || (a.segments()[0] & 0xFFC0) == 0xFE80
        }
    }
}

/// The check on the resolved address, made by the egress before it connects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    pub private_only: bool,
    /// When non-empty, the address must be in one of these (custom destinations by CIDR).
    pub cidrs: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.private_only && !is_private(ip) {
            return false;
        }
        self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(ip))
    }
}

/// `udp://IP:PORT`, or `udp://GROUP:PORT?iface=IP` for multicast.
pub fn parse_source(source: &str) -> crate::error::Result<IngestConfig> {
    let rest = source
        .strip_prefix("udp://")
        .ok_or_else(|| crate::err!(InvalidArgument, "a fabric source is udp://IP:PORT"))?;
    let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| crate::err!(InvalidArgument, "a fabric source is udp://IP:PORT"))?;
    let iface = query.strip_prefix("iface=");
    match (addr.ip(), iface) {
        (std::net::IpAddr::V4(g), Some(i)) if g.is_multicast() => {
            let iface = i
                .parse()
                .map_err(|_| crate::err!(InvalidArgument, "iface must be an IPv4 address"))?;
            let mut c = IngestConfig::unicast(SocketAddr::from(([0, 0, 0, 0], addr.port())));
            c.multicast = Some((g, iface));
            Ok(c)
        }
        (_, None) if query.is_empty() => Ok(IngestConfig::unicast(addr)),
        _ => Err(crate::err!(
            InvalidArgument,
            "unsupported fabric source options"
        )),
    }
}

/// Why a destination is refused; the message is safe to show (no key is ever in a URL).
pub type Refusal = String;

/// Validates a profile's URL for `service` against the policy; returns the parsed URL and the
/// address policy the egress must enforce at connect time.
pub fn validate(
    policy: &Policy,
    service: Service,
    url: &str,
) -> Result<(RtmpUrl, AddressPolicy), Refusal> {
    if !policy.allowed_services.contains(&service) && service != Service::Custom {
        return Err(format!(
            "the service {service:?} is not allowed by the admin policy"
        ));
    }
    let parsed = RtmpUrl::parse(url).map_err(|e| e.message().to_string())?;
    if parsed.scheme == Scheme::Rtmp && !policy.allow_plain_rtmp {
        return Err("plain rtmp:// is not allowed by the admin policy; use rtmps://".into());
    }
    let mut addr = AddressPolicy {
        private_only: policy.private_only,
        cidrs: Vec::new(),
    };
    match service {
        Service::Custom => {
            let host_ok = policy
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&parsed.host));
            let cidrs: Vec<Cidr> = policy
                .allowed_cidrs
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect();
            let ip_ok = parsed
                .host
                .parse::<IpAddr>()
                .is_ok_and(|ip| cidrs.iter().any(|c| c.contains(ip)));
            if !host_ok && !ip_ok {
                if !policy.allowed_services.contains(&Service::Custom)
                    && cidrs.is_empty()
                    && policy.allowed_hosts.is_empty()
                {
                    return Err("custom destinations are not allowed by the admin policy".into());
                }
                return Err(format!(
                    "the host {} is not in the admin policy's allowed destinations",
                    parsed.host
                ));
            }
            if !host_ok {
                addr.cidrs = cidrs;
            }
        }
        s => {
            if let Some(domain) = service_domain(s) {
                let h = parsed.host.as_str();
                if !(h == domain || h.ends_with(&format!(".{domain}"))) {
                    return Err(format!("a {s:?} URL must be under {domain}"));
                }
            } else if let Some((primary, backup)) = preset(s) {
                let same = |p: &str| RtmpUrl::parse(p).is_ok_and(|u| u.host == parsed.host);
                if !same(primary) && !backup.is_some_and(same) {
                    return Err(format!(
                        "a {s:?} profile must use the service's ingest host"
                    ));
                }
            }
        }
    }
    if policy.private_only
        && let Ok(ip) = parsed.host.parse::<IpAddr>()
        && !is_private(ip)
    {
        return Err("this appliance is private-only: public addresses are refused".into());
    }
    Ok((parsed, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        let c = Cidr::parse("192.168.1.7").expect("host");
        assert!(c.contains("192.168.1.7".parse().expect("ip")));
        assert!(!c.contains("192.168.1.8".parse().expect("ip")));
        let c = Cidr::parse("fd00::/8").expect("v6");
        assert!(c.contains("fd12::1".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense/8").is_none());
        assert!(
            Cidr::parse("0.0.0.0/0").is_some_and(|c| c.contains("8.8.8.8".parse().expect("ip")))
        );
    }

    #[test]
    fn presets_and_policy() {
        let p = Policy::default();
        assert!(validate(&p, Service::Youtube, "rtmps://a.rtmps.youtube.com/live2").is_ok());
        assert!(validate(&p, Service::Youtube, "rtmps://evil.example.com/live2").is_err());
        // Twitch is plain RTMP: refused until the admin allows it.
        assert!(validate(&p, Service::Twitch, "rtmp://live.twitch.tv/app").is_err());
        let plain = Policy {
            allow_plain_rtmp: true,
            ..Policy::default()
        };
        assert!(validate(&plain, Service::Twitch, "rtmp://live.twitch.tv/app").is_ok());
        assert!(
            validate(
                &p,
                Service::Linkedin,
                "rtmps://1234.ingest.linkedin.com/live"
            )
            .is_ok()
        );
        assert!(validate(&p, Service::Linkedin, "rtmps://linkedin.com.evil.io/live").is_err());
        assert!(validate(&p, Service::Custom, "rtmps://ingest.corp.example/live").is_err());
    }

    #[test]
    fn custom_hosts_cidrs_and_private_only() {
        let p = Policy {
            allowed_hosts: vec!["ingest.corp.example".into()],
            allowed_cidrs: vec!["10.20.0.0/16".into()],
            private_only: true,
            ..Policy::default()
        };
        let (_, addr) =
            validate(&p, Service::Custom, "rtmps://ingest.corp.example/live").expect("host");
        assert!(addr.private_only && addr.cidrs.is_empty());
        assert!(
            !addr.allows("8.8.8.8".parse().expect("ip")),
            "resolved public address refused"
        );
        assert!(addr.allows("10.9.9.9".parse().expect("ip")));
        let (_, addr) = validate(&p, Service::Custom, "rtmps://10.20.1.1:4443/live").expect("cidr");
        assert!(addr.allows("10.20.1.1".parse().expect("ip")));
        assert!(validate(&p, Service::Custom, "rtmps://10.30.1.1/live").is_err());
        assert!(validate(&p, Service::Custom, "http://ingest.corp.example/live").is_err());
        assert!(validate(&p, Service::Custom, "file:///etc/passwd").is_err());
    }
}
