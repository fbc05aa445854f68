//! Ingest URLs: `rtmps://host[:443]/app` and `rtmp://host[:1935]/app`. The stream key is never
//! part of the URL (it is a [`crate::secret::Secret`] held apart), so a URL is safe to log.

use std::fmt;

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Rtmp,
    Rtmps,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtmpUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// The RTMP application ("live2", "rtmp", "app"...), may contain '/'.
    pub app: String,
}

impl RtmpUrl {
    /// Parses and validates. Userinfo, query strings and fragments are refused: they are where
    /// keys leak into logs.
    pub fn parse(s: &str) -> Result<RtmpUrl> {
        let (scheme, rest) = if let Some(r) = s.strip_prefix("rtmps://") {
            (Scheme::Rtmps, r)
        } else if let Some(r) = s.strip_prefix("rtmp://") {
            (Scheme::Rtmp, r)
        } else {
            crate::bail!(
                InvalidArgument,
                "ingest URL must start with rtmps:// or rtmp://"
            );
        };
        // The one query accepted: YouTube's backup ingest (`…/live2?backup=1`), kept in the
        // app name as encoders do.
        let rest_checked = rest.strip_suffix("?backup=1").unwrap_or(rest);
        if rest_checked.contains(['?', '#', '@'])
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            crate::bail!(
                InvalidArgument,
                "ingest URL must not contain credentials, a query, a fragment or spaces; put the stream key in the key field"
            );
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let app = path.trim_end_matches('/').to_string();
        if app.is_empty() {
            crate::bail!(
                InvalidArgument,
                "ingest URL has no application path (e.g. /live2)"
            );
        }
        let (host, port) = split_host_port(authority, scheme)?;
        Ok(RtmpUrl {
            scheme,
            host,
            port,
            app,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Rtmps
    }

    /// The tcUrl sent in `connect` (no key).
    pub fn tc_url(&self) -> String {
        self.to_string()
    }
}

fn split_host_port(authority: &str, scheme: Scheme) -> Result<(String, u16)> {
    let default_port = match scheme {
        Scheme::Rtmp => 1935,
        Scheme::Rtmps => 443,
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| crate::err!(InvalidArgument, "unterminated IPv6 address in URL"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        crate::bail!(InvalidArgument, "ingest URL has no host");
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| crate::err!(InvalidArgument, "invalid port {p:?} in ingest URL"))?,
    };
    Ok((host.to_ascii_lowercase(), port))
}

impl fmt::Display for RtmpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Rtmp => "rtmp",
            Scheme::Rtmps => "rtmps",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}/{}", self.host, self.port, self.app)
        } else {
            write!(f, "{scheme}://{}:{}/{}", self.host, self.port, self.app)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn youtube_backup_query_is_the_only_query() {
        let u = RtmpUrl::parse("rtmps://b.rtmps.youtube.com:443/live2?backup=1").expect("backup");
        assert_eq!(u.app, "live2?backup=1");
        assert!(RtmpUrl::parse("rtmps://b.rtmps.youtube.com/live2?backup=2").is_err());
        assert!(RtmpUrl::parse("rtmps://h/live?key=x&backup=1").is_err());
    }

    #[test]
    fn presets_parse() {
        let u = RtmpUrl::parse("rtmps://a.rtmps.youtube.com/live2").expect("valid");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.app.as_str()),
            (Scheme::Rtmps, "a.rtmps.youtube.com", 443, "live2")
        );
        let u = RtmpUrl::parse("rtmps://live-api-s.facebook.com:443/rtmp/").expect("valid");
        assert_eq!(u.app, "rtmp");
        let u = RtmpUrl::parse("rtmp://live.twitch.tv/app").expect("valid");
        assert_eq!(u.port, 1935);
        let u = RtmpUrl::parse("rtmp://[::1]:1936/live/sub").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.app.as_str()),
            ("::1", 1936, "live/sub")
        );
        assert_eq!(u.to_string(), "rtmp://[::1]:1936/live/sub");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "http://x/live",
            "rtmp://x",
            "rtmp:///live",
            "rtmp://x:0/live",
            "rtmp://x:99999/live",
            "rtmp://user:pass@x/live",
            "rtmp://x/live?key=abc",
            "rtmp://x/live#frag",
            "rtmp://x/li ve",
        ] {
            let e = RtmpUrl::parse(bad).expect_err(bad);
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument, "{bad}");
            assert!(!e.message().contains("abc"), "error echoes the query: {e}");
        }
    }
}
