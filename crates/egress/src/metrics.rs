//! Counters of the proxy, for the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a refusal was, as a stable code (the `reason` label of the refusal counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The session's policy is `none`.
    PolicyNone,
    /// Not on the session's allow-list.
    NotAllowed,
    /// Resolves to a loopback, private, link-local, CGNAT or metadata address.
    NotPublic,
    /// One of the server's own listen addresses.
    ServerAddress,
    /// The name does not resolve.
    Resolve,
    /// Connecting to the checked address failed.
    Connect,
    /// Not a request the proxy serves.
    BadRequest,
    /// Too many connections open at once.
    OpenLimit,
    /// Too many new connections per second.
    RateLimit,
    /// The session's byte limit is used up.
    ByteLimit,
}

impl RefusalKind {
    /// Every kind, in the order of [`EgressCounters::refused`].
    pub const ALL: [RefusalKind; 10] = [
        RefusalKind::PolicyNone,
        RefusalKind::NotAllowed,
        RefusalKind::NotPublic,
        RefusalKind::ServerAddress,
        RefusalKind::Resolve,
        RefusalKind::Connect,
        RefusalKind::BadRequest,
        RefusalKind::OpenLimit,
        RefusalKind::RateLimit,
        RefusalKind::ByteLimit,
    ];

    /// The code, as in the proxy's answer (`X-Pyxis-Egress-Refusal`) and in metrics.
    pub fn code(self) -> &'static str {
        match self {
            RefusalKind::PolicyNone => "policy_none",
            RefusalKind::NotAllowed => "not_allowed",
            RefusalKind::NotPublic => "address_not_public",
            RefusalKind::ServerAddress => "server_address",
            RefusalKind::Resolve => "resolve_failed",
            RefusalKind::Connect => "connect_failed",
            RefusalKind::BadRequest => "bad_request",
            RefusalKind::OpenLimit => "open_connections_limit",
            RefusalKind::RateLimit => "connection_rate_limit",
            RefusalKind::ByteLimit => "byte_limit",
        }
    }

    fn index(self) -> usize {
        RefusalKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_default()
    }
}

/// Counters shared by every session of a proxy.
#[derive(Debug, Default)]
pub struct EgressMetrics {
    connections: AtomicU64,
    requests: AtomicU64,
    tunnels: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    refused: [AtomicU64; RefusalKind::ALL.len()],
}

/// A copy of the counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EgressCounters {
    /// Connections from sandboxes to the proxy.
    pub connections: u64,
    /// Plain HTTP requests forwarded.
    pub requests: u64,
    /// `CONNECT` tunnels opened.
    pub tunnels: u64,
    /// Bytes sent to upstream servers.
    pub bytes_sent: u64,
    /// Bytes received from upstream servers.
    pub bytes_received: u64,
    /// Refusals by code, one per [`RefusalKind::ALL`], in that order.
    pub refused: Vec<(&'static str, u64)>,
}

impl EgressMetrics {
    pub(crate) fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tunnel(&self) {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, kind: RefusalKind) {
        self.refused[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals of one kind so far.
    pub fn refusals(&self, kind: RefusalKind) -> u64 {
        self.refused[kind.index()].load(Ordering::Relaxed)
    }

    /// The counters now.
    pub fn snapshot(&self) -> EgressCounters {
        EgressCounters {
            connections: self.connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            tunnels: self.tunnels.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            refused: RefusalKind::ALL
                .iter()
                .map(|k| (k.code(), self.refusals(*k)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_kind() {
        let metrics = EgressMetrics::default();
        metrics.refused(RefusalKind::NotAllowed);
        metrics.refused(RefusalKind::NotAllowed);
        metrics.refused(RefusalKind::ByteLimit);
        let snap = metrics.snapshot();
        assert_eq!(snap.refused.len(), RefusalKind::ALL.len());
        assert!(snap.refused.contains(&("not_allowed", 2)));
        assert!(snap.refused.contains(&("byte_limit", 1)));
        assert!(snap.refused.contains(&("policy_none", 0)));
        let codes: std::collections::HashSet<_> =
            RefusalKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), RefusalKind::ALL.len(), "codes are distinct");
    }
}
