//! The tokio task that runs membership.
