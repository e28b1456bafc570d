//! Name resolution, done by the server for the sandbox (which has no resolver).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// The future a [`Resolver`] returns.
pub type Resolving<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves host names to addresses.
pub trait Resolver: Send + Sync + 'static {
    /// Every address of `name` (for `port`, which system resolvers take as a service).
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> Resolving<'a>;
}

/// The host's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> Resolving<'a> {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name, port)).await?;
            Ok(found.map(|a| a.ip()).collect())
        })
    }
}

/// A fixed table, for tests and for hosts an operator pins.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    table: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty table: every name fails.
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Adds `name` (lowercase) with its addresses.
    pub fn with(mut self, name: &str, addrs: &[IpAddr]) -> StaticResolver {
        self.table.insert(name.to_ascii_lowercase(), addrs.to_vec());
        self
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str, _port: u16) -> Resolving<'a> {
        let found = self.table.get(name).cloned();
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown name"))
        })
    }
}
