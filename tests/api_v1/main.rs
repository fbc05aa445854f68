//! The v1 admin API end to end through real HTTP on loopback against the real service
//! (`run::start`): the OpenAPI document against the full route table, the authorization matrix
//! (every endpoint × every wrong caller, state unchanged, refusals audited), bad input, and
//! secrets (stream keys and tokens never in responses, logs, the store or the process's
//! command line).

#![allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report

mod bad_input;
mod fabric_streams;
mod harness;
mod matrix;
mod openapi;
mod secrets;
