//! The pure media core: bytes and timestamps in, frames out. No sockets, files or clocks
//! (scripts/check-pure.sh enforces this on `src/media`).
//!
//! Flow: [`rtp`] unwraps RTP/TS when present → [`ts::Demuxer`] yields PES → [`h264`] /
//! [`aac`] repack to AVCC / raw AAC → [`timeline`] maps 90 kHz to RTMP ms → [`flv`] builds tag
//! bodies. [`core::MediaCore`] wires them together.
pub mod aac;
pub mod bits;
pub mod core;
pub mod crc;
pub mod dedup;
pub mod flv;
pub mod h264;
pub mod pes;
pub mod psi;
pub mod rtp;
pub mod timeline;
pub mod ts;
