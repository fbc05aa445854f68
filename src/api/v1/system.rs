//! `GET /v1/system` (admin): what the device runs on — PID of the service, the root and data
//! mounts with their read-only flag, the boot slot, the board and the kernel. Lets an admin
//! (and the image test) see that onair is PID 1 on a read-only root.

use axum::extract::State;
use serde::Serialize;

use super::V1;
use crate::api::{ApiError, Principal, Role as ApiRole, Routes, StrictJson, require};

pub fn routes() -> Routes<V1> {
    Routes::new().get("/v1/system", get_system)
}

#[derive(Debug, PartialEq, Serialize)]
pub struct System {
    /// The service's process id (1 on the appliance: onair is the init).
    pub pid: u32,
    pub root: Option<Mount>,
    pub data: Option<Mount>,
    /// `onair.slot=` of the kernel command line, if any.
    pub slot: Option<String>,
    /// The board file's name, if the device has one (/etc/onair/board.toml).
    pub board: Option<String>,
    /// `uname -r`.
    pub kernel: Option<String>,
    pub uptime_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mount {
    pub fstype: String,
    pub source: String,
    pub read_only: bool,
}

async fn get_system(p: Principal, State(_v1): State<V1>) -> Result<StrictJson<System>, ApiError> {
    require(&p, &[ApiRole::Admin])?;
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mountinfo = read("/proc/self/mountinfo").unwrap_or_default();
    let cmdline = read("/proc/cmdline").unwrap_or_default();
    Ok(StrictJson(System {
        pid: std::process::id(),
        root: find_mount(&mountinfo, "/"),
        data: find_mount(&mountinfo, "/data"),
        slot: cmdline
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix("onair.slot="))
            .map(str::to_owned),
        board: crate::board::Board::load(std::path::Path::new("/etc/onair/board.toml"))
            .ok()
            .map(|b| b.name),
        kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
        uptime_s: read("/proc/uptime")
            .and_then(|s| s.split_whitespace().next().and_then(|u| u.parse().ok())),
    }))
}

/// The visible (last) mount on `point` in a /proc/self/mountinfo text (pure).
pub fn find_mount(mountinfo: &str, point: &str) -> Option<Mount> {
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        if left.get(4) != Some(&point) {
            return None;
        }
        let mut right = right.split(' ');
        let fstype = right.next()?.to_owned();
        let source = right.next()?.to_owned();
        let ro = |opts: Option<&&str>| opts.is_some_and(|o| o.split(',').any(|x| x == "ro"));
        let super_opts = right.next();
        Some(Mount {
            fstype,
            source,
            read_only: ro(left.get(5)) || ro(super_opts.as_ref()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPLIANCE: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
20 1 254:2 / / ro,nodev,relatime - squashfs /dev/vda2 ro,errors=continue
21 20 0:5 / /dev rw,nosuid,relatime - devtmpfs devtmpfs rw,size=1000k
25 20 254:4 / /data rw,nosuid,nodev,noatime - ext4 /dev/vda4 rw
";

    #[test]
    fn finds_the_visible_root_and_data() {
        let root = find_mount(APPLIANCE, "/").expect("root");
        assert_eq!((root.fstype.as_str(), root.read_only), ("squashfs", true));
        assert_eq!(root.source, "/dev/vda2");
        let data = find_mount(APPLIANCE, "/data").expect("data");
        assert_eq!((data.fstype.as_str(), data.read_only), ("ext4", false));
        assert_eq!(find_mount(APPLIANCE, "/nope"), None);
    }

    #[test]
    fn garbage_never_panics() {
        for text in ["", "-", " - ", "1 2 3 4 / x - ", "1 2 3 4 /\n - ext4"] {
            let _ = find_mount(text, "/");
        }
    }
}
