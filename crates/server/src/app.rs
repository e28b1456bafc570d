//! Shared state of the doors: the services, and each door's own small state.

use std::sync::Arc;

use crate::config::Config;
use crate::services::{Files, Sessions};

/// Everything a door may need.
pub struct App {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Sessions and the warm pool.
    pub sessions: Arc<Sessions>,
    /// Workspace files.
    pub files: Files,
    /// The API token.
    pub token: String,
    /// Who may call: the token's tenant and the keys file's (see `tenants.rs`).
    pub tenants: Arc<crate::tenants::Tenants>,
    /// The Jupyter-kernel gateway door's `user_uuid → session` map.
    pub gateway: crate::doors::gateway::GatewayUsers,
    /// The Jupyter door's kernels (their channels and message state).
    pub jupyter: crate::doors::jupyter::Kernels,
    /// The E2B door's sandboxes (tokens, metadata, deadlines).
    pub e2b: crate::doors::e2b::Sandboxes,
}

impl App {
    /// The state over the services.
    pub fn new(
        config: Arc<Config>,
        sessions: Arc<Sessions>,
        files: Files,
        token: String,
    ) -> Arc<Self> {
        let tenants = crate::tenants::Tenants::single(token.clone());
        Self::with_tenants(config, sessions, files, token, tenants)
    }

    /// The state over the services, with the tenants of a keys file.
    pub fn with_tenants(
        config: Arc<Config>,
        sessions: Arc<Sessions>,
        files: Files,
        token: String,
        tenants: Arc<crate::tenants::Tenants>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            sessions,
            files,
            token,
            tenants,
            gateway: Default::default(),
            jupyter: Default::default(),
            e2b: Default::default(),
        })
    }
}

/// Handler state.
pub type AppState = Arc<App>;
