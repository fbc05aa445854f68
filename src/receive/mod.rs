//! `onair receive`: the private RTMP/RTMPS ingest server that records publishes to FLV files.
pub mod guard;
pub mod session;
