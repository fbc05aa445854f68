//! The config parsers: `onair run`'s config (src/config.rs), board files (src/board.rs) and the
//! receiver's config. Input: `[which][TOML text]`. Invariants: no panic; a board's shell
//! variables parse back (single-quoted, one `KEY='value'` each) to the board's values.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use onair::board::Board;
use onair::config::RunConfig;
use onair::receive::config::ReceiverConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(c) = RunConfig::from_toml(text) {
                c.validate().expect("a parsed config validates");
                let _ = c.api_tls();
                let _ = c.egress_options();
            }
        }
        1 => {
            if let Ok(b) = Board::from_toml(text) {
                let vars = parse_shell_vars(&b.shell_vars());
                let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                assert_eq!(get("BOARD_NAME"), Some(b.name.as_str()));
                assert_eq!(get("KERNEL_CMDLINE"), Some(b.kernel.cmdline.as_str()));
                assert_eq!(get("DISK_DEVICE"), Some(b.disk.device.as_str()));
            }
        }
        _ => {
            if let Ok(c) = ReceiverConfig::from_toml(text, Path::new("/nonexistent")) {
                let _ = c.limits.guard_limits();
                // key_file would read the file system: only inline keys here.
                if c.streams.iter().all(|s| s.key_file.is_none()) {
                    let _ = c.stream_entries();
                }
            }
        }
    }
});

/// Parses `KEY='v'\n` lines where `'` inside a value is written `'\''`; panics on anything a
/// shell would read differently.
fn parse_shell_vars(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("='").expect("KEY='");
        assert!(
            !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit()),
            "bad variable name {key:?}"
        );
        let mut value = String::new();
        let mut r = after;
        loop {
            let end = r.find('\'').expect("closing quote");
            value.push_str(&r[..end]);
            r = &r[end + 1..];
            if let Some(more) = r.strip_prefix("\\''") {
                value.push('\'');
                r = more;
            } else {
                break;
            }
        }
        rest = r.strip_prefix('\n').expect("newline after the value");
        out.push((key.to_owned(), value));
    }
    out
}
