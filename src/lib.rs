//! onair: firmware of an on-prem streaming egress appliance.
//!
//! Layout (see docs/architecture.md):
//! - [`media`]: the pure media core (TS demux, H.264/AAC repack, timeline, FLV). No I/O, no clock.
//! - [`ingest`]: the fabric-facing UDP receiver (io_uring with a plain-socket fallback).
//! - [`egress`]: RTMP/RTMPS publishing (pure session wrapper + thin tokio driver).
//! - [`receive`]: `onair receive`, the private ingest server that records to FLV.
//! - [`board`], [`init`]: board files and `onair init`, PID 1 of the appliance image.
//! - [`fabric_sim`]: `onair fabric-sim`, plays a TS file over UDP paced by its clock.
pub mod api;
pub mod bench;
pub mod board;
pub mod clock;
pub mod config;
pub mod conn_limit;
pub mod control;
pub mod ctl;
pub mod egress;
pub mod error;
pub mod fabric_sim;
pub mod ingest;
#[cfg(target_os = "linux")]
pub mod init;
pub mod media;
pub mod receive;
pub mod relay;
pub mod rtmp_guard;
pub mod run;
pub mod secret;
pub mod store;
