//! The bounded queue between the media core and one egress. Pure.
//!
//! Congestion policy (never a corrupt stream): when a push would exceed the byte or frame
//! bound, first the oldest droppable (non-reference) video frame goes; if there is none, the
//! oldest whole GOP (everything up to the next queued keyframe) goes; if no later keyframe is
//! queued, every queued media frame goes and the queue skips incoming media until the next
//! keyframe. Header frames (metadata, sequence headers) are never dropped. Every drop is counted.

use std::collections::VecDeque;

use crate::media::core::{FrameKind, MediaFrame};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub frames_in: u64,
    pub frames_dropped: u64,
    pub gops_dropped: u64,
    pub bytes_queued: u64,
    pub frames_queued: u64,
}

#[derive(Debug)]
pub struct FrameQueue {
    frames: VecDeque<MediaFrame>,
    bytes: usize,
    max_bytes: usize,
    max_frames: usize,
    /// Dropping incoming media until the next keyframe.
    skipping: bool,
    /// A video frame was ever queued (audio-only streams resume on any frame).
    has_video: bool,
    stats: QueueStats,
}

impl FrameQueue {
    pub fn new(max_bytes: usize, max_frames: usize) -> Self {
        FrameQueue {
            frames: VecDeque::new(),
            bytes: 0,
            max_bytes: max_bytes.max(1),
            max_frames: max_frames.max(2),
            skipping: false,
            has_video: false,
            stats: QueueStats::default(),
        }
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            bytes_queued: self.bytes as u64,
            frames_queued: self.frames.len() as u64,
            ..self.stats.clone()
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn push(&mut self, f: MediaFrame) {
        self.stats.frames_in += 1;
        if f.kind == FrameKind::Video {
            self.has_video = true;
        }
        if f.kind.is_header() {
            self.push_header(f);
            return;
        }
        if self.skipping {
            if self.is_resume_point(&f) {
                self.skipping = false;
            } else {
                self.stats.frames_dropped += 1;
                return;
            }
        }
        while self.over(f.body.len()) && self.make_room() {}
        if self.over(f.body.len()) {
            // Only headers left and still no room: this frame cannot fit, and what follows it
            // cannot be decoded without it.
            self.stats.frames_dropped += 1;
            self.skipping = true;
            return;
        }
        self.bytes += f.body.len();
        self.frames.push_back(f);
    }

    /// Where a stream can resume after a drop: a video keyframe, or any audio frame when the
    /// stream has no video.
    fn is_resume_point(&self, f: &MediaFrame) -> bool {
        match f.kind {
            FrameKind::Video => f.keyframe,
            FrameKind::Audio => !self.has_video,
            _ => true,
        }
    }

    /// Headers are never dropped, but one that no media frame has followed yet is superseded
    /// by a newer one of its kind (bounds a source that changes its config on every frame).
    fn push_header(&mut self, f: MediaFrame) {
        let trailing = self
            .frames
            .iter()
            .rev()
            .take_while(|x| x.kind.is_header())
            .count();
        let start = self.frames.len() - trailing;
        if let Some(i) = (start..self.frames.len()).find(|&i| self.frames[i].kind == f.kind) {
            self.remove_at(i);
        }
        self.bytes += f.body.len();
        self.frames.push_back(f);
    }

    pub fn pop(&mut self) -> Option<MediaFrame> {
        let f = self.frames.pop_front()?;
        self.bytes -= f.body.len();
        Some(f)
    }

    /// After a reconnect: drop queued media before the newest queued keyframe (stale after an
    /// outage) and skip incoming media until a keyframe if none is queued. Headers stay.
    pub fn resume_at_latest_keyframe(&mut self) {
        if !self.has_video {
            // Audio only: every frame is a resume point; keep what is queued.
            return;
        }
        let newest_key = self
            .frames
            .iter()
            .rposition(|f| f.kind == FrameKind::Video && f.keyframe);
        let cut = newest_key.unwrap_or(self.frames.len());
        self.drop_media_before(cut);
        if newest_key.is_none() {
            self.skipping = true;
        }
    }

    fn over(&self, extra: usize) -> bool {
        self.bytes + extra > self.max_bytes || self.frames.len() + 1 > self.max_frames
    }

    /// Frees room by the policy above; false when nothing droppable is left.
    fn make_room(&mut self) -> bool {
        if let Some(i) = self.frames.iter().position(|f| f.droppable) {
            self.remove_at(i);
            self.stats.frames_dropped += 1;
            return true;
        }
        let first_media = self.frames.iter().position(|f| !f.kind.is_header());
        let Some(first) = first_media else {
            return false;
        };
        let next_key = self
            .frames
            .iter()
            .enumerate()
            .skip(first + 1)
            .find(|(_, f)| !f.kind.is_header() && self.is_resume_point(f))
            .map(|(i, _)| i);
        match next_key {
            Some(k) => self.drop_media_before(k),
            None => {
                self.drop_media_before(self.frames.len());
                self.skipping = true;
            }
        }
        self.stats.gops_dropped += 1;
        true
    }

    /// Removes every non-header frame in `[0, end)`.
    fn drop_media_before(&mut self, end: usize) {
        let mut kept = VecDeque::with_capacity(self.frames.len());
        for (i, f) in self.frames.drain(..).enumerate() {
            if i < end && !f.kind.is_header() {
                self.bytes -= f.body.len();
                self.stats.frames_dropped += 1;
            } else {
                kept.push_back(f);
            }
        }
        self.frames = kept;
    }

    fn remove_at(&mut self, i: usize) {
        if let Some(f) = self.frames.remove(i) {
            self.bytes -= f.body.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(kind: FrameKind, ts: u32, size: usize, key: bool, droppable: bool) -> MediaFrame {
        MediaFrame {
            kind,
            ts_ms: ts,
            body: Bytes::from(vec![0u8; size]),
            metadata: None,
            keyframe: key,
            droppable,
            rx_ns: 0,
        }
    }

    fn video(ts: u32, key: bool) -> MediaFrame {
        frame(FrameKind::Video, ts, 100, key, false)
    }

    /// The stream in the queue decodes: after any drop, video resumes at a keyframe.
    fn assert_decodable(q: &mut FrameQueue) -> Vec<u32> {
        let mut out = Vec::new();
        let mut need_key = true;
        while let Some(f) = q.pop() {
            if f.kind == FrameKind::Video {
                if need_key {
                    assert!(f.keyframe, "video at {} before any keyframe", f.ts_ms);
                    need_key = false;
                }
                out.push(f.ts_ms);
            }
        }
        out
    }

    #[test]
    fn droppable_frames_go_first() {
        let mut q = FrameQueue::new(350, 100);
        q.push(video(0, true));
        q.push(frame(FrameKind::Video, 40, 100, false, true));
        q.push(video(80, false));
        q.push(video(120, false)); // over 350 bytes: the droppable frame at 40 goes
        assert_eq!(q.stats().frames_dropped, 1);
        assert_eq!(assert_decodable(&mut q), vec![0, 80, 120]);
    }

    #[test]
    fn whole_gop_dropped_not_half() {
        let mut q = FrameQueue::new(10_000, 6);
        q.push(frame(FrameKind::VideoHeader, 0, 10, false, false));
        for (ts, key) in [
            (0, true),
            (40, false),
            (80, false),
            (120, true),
            (160, false),
        ] {
            q.push(video(ts, key));
        }
        q.push(video(200, false)); // 7th frame: GOP 0..80 dropped
        let st = q.stats();
        assert_eq!(st.gops_dropped, 1);
        assert_eq!(st.frames_dropped, 3);
        assert_eq!(q.pop().map(|f| f.kind), Some(FrameKind::VideoHeader));
        assert_eq!(assert_decodable(&mut q), vec![120, 160, 200]);
    }

    #[test]
    fn no_later_keyframe_skips_until_next() {
        let mut q = FrameQueue::new(250, 100);
        q.push(video(0, true));
        q.push(video(40, false));
        q.push(video(80, false)); // no room, no later keyframe: all media dropped, skipping
        q.push(video(120, false)); // skipped
        q.push(frame(FrameKind::Audio, 130, 10, false, false)); // skipped too
        q.push(video(160, true)); // resumes
        q.push(video(200, false));
        assert_eq!(assert_decodable(&mut q), vec![160, 200]);
    }

    #[test]
    fn resume_after_reconnect() {
        let mut q = FrameQueue::new(100_000, 1000);
        q.push(frame(FrameKind::Metadata, 0, 0, false, false));
        for i in 0..10u32 {
            q.push(video(i * 40, i % 4 == 0));
        }
        q.resume_at_latest_keyframe();
        assert_eq!(q.pop().map(|f| f.kind), Some(FrameKind::Metadata));
        assert_eq!(assert_decodable(&mut q), vec![320, 360]);
        // Nothing queued: skip until the next keyframe arrives.
        q.resume_at_latest_keyframe();
        q.push(video(400, false));
        q.push(video(440, true));
        assert_eq!(assert_decodable(&mut q), vec![440]);
    }

    #[test]
    fn bounded_under_random_load() {
        let mut q = FrameQueue::new(5_000, 50);
        let mut x: u32 = 12345;
        for i in 0..10_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let kind = if x.is_multiple_of(5) {
                FrameKind::Audio
            } else {
                FrameKind::Video
            };
            q.push(frame(
                kind,
                i,
                (x % 900) as usize,
                x.is_multiple_of(30),
                x.is_multiple_of(3),
            ));
            assert!(q.stats().bytes_queued <= 5_000);
            assert!(q.len() <= 50);
            if x.is_multiple_of(7) {
                q.pop();
            }
        }
        assert_decodable(&mut q);
    }

    #[test]
    fn a_keyframe_that_cannot_fit_makes_the_queue_skip_its_gop() {
        // Regression: the refused keyframe left `skipping` off, so its P-frames were queued.
        let mut q = FrameQueue::new(150, 100);
        q.push(video(0, true));
        q.push(frame(FrameKind::Video, 40, 400, true, false)); // larger than the whole queue
        q.pop();
        q.push(video(80, false)); // belongs to the refused keyframe's GOP
        q.push(video(120, true));
        assert_eq!(assert_decodable(&mut q), vec![120]);
    }

    #[test]
    fn audio_only_streams_resume_after_reconnect_and_overflow() {
        // Regression: only a video keyframe ended skip mode, so audio-only streams went silent.
        let audio = |ts| frame(FrameKind::Audio, ts, 100, false, false);
        let mut q = FrameQueue::new(250, 100);
        q.push(audio(0));
        q.push(audio(21));
        q.resume_at_latest_keyframe();
        q.push(audio(42)); // overflow: the oldest goes
        q.push(audio(64));
        let got: Vec<u32> = std::iter::from_fn(|| q.pop()).map(|f| f.ts_ms).collect();
        assert_eq!(got, vec![42, 64]);
    }

    #[test]
    fn headers_without_media_between_are_superseded() {
        // A source changing its config on every frame must not grow the queue without bound.
        let mut q = FrameQueue::new(10_000, 100);
        q.push(video(0, true));
        for i in 0..10_000u32 {
            q.push(frame(FrameKind::AudioHeader, i, 4, false, false));
            q.push(frame(FrameKind::Metadata, i, 0, false, false));
        }
        assert_eq!(
            q.len(),
            3,
            "one video frame and the newest of each header kind"
        );
        q.pop();
        assert_eq!(
            q.pop().map(|f| (f.kind, f.ts_ms)),
            Some((FrameKind::AudioHeader, 9_999))
        );
    }
}
