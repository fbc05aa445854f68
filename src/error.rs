//! One error type for the I/O edges, classified by kind.
//!
//! The kind decides what a caller does: the egress retries `Unavailable` (network loss) with
//! backoff, and fails hard on `PermissionDenied` (stream key rejected) and `Certificate`.
//! The later admin API maps kinds to HTTP statuses.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input from a user: config, URL, command line.
    InvalidArgument,
    /// Malformed data from a peer (protocol violation, bad media).
    Protocol,
    /// A transient network failure: refused, reset, timed out, DNS. Worth a retry.
    Unavailable,
    /// The peer refused us for a reason a retry will not fix (stream key rejected).
    PermissionDenied,
    /// TLS certificate verification failed (untrusted, wrong name, pin mismatch).
    Certificate,
    /// Policy forbids it (plain RTMP not allowed, destination not allowed).
    Policy,
    /// A limit was hit (too many connections, message too large).
    ResourceExhausted,
    /// Local I/O failed (disk, socket setup).
    Io,
    /// A bug: a state we believed unreachable.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Certificate => "certificate",
            ErrorKind::Policy => "policy",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
}

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Maps an I/O error from a network operation: connection-level failures are `Unavailable`.
    pub fn from_net(context: &str, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::UnexpectedEof
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
            | K::WouldBlock
            | K::Interrupted => ErrorKind::Unavailable,
            K::InvalidData => ErrorKind::Protocol,
            _ => ErrorKind::Io,
        };
        Error::new(kind, format!("{context}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.msg)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `bail!(Kind, "fmt", args)` returns an [`Error`] of that kind.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)*)))
    };
}

/// `err!(Kind, "fmt", args)` builds an [`Error`] of that kind.
#[macro_export]
macro_rules! err {
    ($kind:ident, $($arg:tt)*) => {
        $crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)*))
    };
}
