//! Prometheus metrics of membership.
