//! Bit reader for H.264 RBSP (exp-Golomb), with emulation-prevention removal.
//!
//! STUB: to be filled in (helper B).
