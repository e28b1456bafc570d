//! Shared state of the HTTP layer.

use std::sync::Arc;

use crate::config::Config;
use crate::sessions::Sessions;
use crate::zygote::Zygote;

/// Everything a handler may need.
pub struct App {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Sessions and the warm pool.
    pub sessions: Arc<Sessions>,
    /// The zygote (for capabilities).
    pub zygote: Arc<Zygote>,
    /// The API token.
    pub token: String,
    /// The Jupyter-kernel gateway door's `user_uuid → session` map.
    pub gateway: crate::compat::gateway::GatewayUsers,
}

/// Handler state.
pub type AppState = Arc<App>;
