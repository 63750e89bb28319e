//! Herald controller: allocates LoadBalancer addresses from `IPAddressPool`s and writes them to
//! Services.
//!
//! # Layout
//! - [`allocator`]: the pure address allocator (pools, requests, sharing, counters).
#![forbid(unsafe_code)]

pub mod allocator;
