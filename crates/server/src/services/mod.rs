//! The services: sessions (table, pool, reaper), cells as streams of events, and workspace
//! files. No HTTP here: every door (see `crate::doors`) translates its protocol into these
//! typed calls and the events back into its protocol.

mod cell_checks;
pub mod commands;
pub mod contexts;
pub mod egress;
pub mod error;
pub mod events;
pub mod export;
pub mod files;
pub mod options;
pub mod packages;
pub mod pool;
pub mod sessions;
pub mod url_import;
pub mod workspace_fs;

pub use error::{Result, ServiceError};
pub use events::{CellEvent, CellOutcome, CellStatus, CellSummary, ExecutionState, OutputItem};
pub use files::Files;
pub use options::{session_options, timeout_from, validate_env, NewSession};
pub use sessions::{CellHandle, CellRequest, Session, SessionOptions, SessionView, Sessions};
