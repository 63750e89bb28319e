//! Peer transport.
