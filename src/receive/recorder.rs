//! One recording on disk: FLV header, then tags through a buffered writer; `finish` flushes and
//! fsyncs the file and its directory. The file name holds the stream name, never its key.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::error::{Error, ErrorKind, Result};
use crate::media::flv;

/// Write buffer per recording.
const BUF_BYTES: usize = 256 << 10;

/// A recording that was closed cleanly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedFile {
    pub name: String,
    pub path: PathBuf,
    pub tags: u64,
    pub bytes: u64,
}

pub struct Recorder {
    name: String,
    path: PathBuf,
    dir: PathBuf,
    out: BufWriter<File>,
    scratch: BytesMut,
    tags: u64,
    bytes: u64,
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

impl Recorder {
    /// Creates `<dir>/<name>-<UTC YYYYmmddTHHMMSS>-<seq>.flv` (never overwrites) and writes the
    /// FLV header.
    pub async fn create(dir: &Path, name: &str, seq: u64, now: SystemTime) -> Result<Recorder> {
        let path = dir.join(format!("{name}-{}-{seq}.flv", utc_stamp(now)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_err("create", &path, &e))?;
        let mut r = Recorder {
            name: name.to_owned(),
            path,
            dir: dir.to_owned(),
            out: BufWriter::with_capacity(BUF_BYTES, file),
            scratch: BytesMut::with_capacity(64 << 10),
            tags: 0,
            bytes: 0,
        };
        let header = flv::file_header(true, true);
        r.write(&header).await?;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .await
            .map_err(|e| io_err("write", &self.path, &e))?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    pub async fn write_tag(&mut self, tag_type: u8, ts_ms: u32, body: &[u8]) -> Result<()> {
        self.scratch.clear();
        if !flv::put_tag(&mut self.scratch, tag_type, ts_ms, body) {
            return Err(Error::new(
                ErrorKind::Protocol,
                "tag body too large for FLV",
            ));
        }
        let tag = std::mem::take(&mut self.scratch);
        let r = self.write(&tag).await;
        self.scratch = tag;
        self.tags += 1;
        r
    }

    /// Flushes, fsyncs the file, then fsyncs the directory so the entry is durable too.
    pub async fn finish(mut self) -> Result<CompletedFile> {
        self.out
            .flush()
            .await
            .map_err(|e| io_err("flush", &self.path, &e))?;
        self.out
            .get_mut()
            .sync_all()
            .await
            .map_err(|e| io_err("fsync", &self.path, &e))?;
        let dir = File::open(&self.dir)
            .await
            .map_err(|e| io_err("open dir", &self.dir, &e))?;
        dir.sync_all()
            .await
            .map_err(|e| io_err("fsync dir", &self.dir, &e))?;
        Ok(CompletedFile {
            name: self.name,
            path: self.path,
            tags: self.tags,
            bytes: self.bytes,
        })
    }
}

/// `YYYYmmddTHHMMSS` in UTC.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56 UTC
        assert_eq!(utc_stamp(t), "20240229T123456");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31 23:59:59
        assert_eq!(utc_stamp(t), "20991231T235959");
    }
}
