//! Pyxis: a code interpreter service. Clients send code over HTTP (or Jupyter's protocol,
//! or the APIs of the services Pyxis replaces); it runs in a sandbox that keeps its state
//! between calls, and what the code printed, displayed and raised comes back.
//!
//! The layers, top to bottom (see `DESIGN.md`):
//!
//! - [`doors`]: one folder per protocol, side by side, none importing another: each turns
//!   its requests into service calls and the services' events into its answers;
//! - [`services`]: sessions (table, warm pool, reaper), cells as streams of events, files;
//!   no HTTP;
//! - [`sandboxes`]: cgroups, workspaces, the zygote, kernel connections, behind the
//!   [`sandboxes::Launcher`] trait.
//!
//! The binary `pyxis` is [`cli::main`].
//!
//! ```no_run
//! // What `pyxis serve` does, in short.
//! fn main() -> anyhow::Result<()> {
//!     pyxis_server::cli::main()
//! }
//! ```

#![deny(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod conns;
pub mod doctor;
pub mod doors;
pub mod error;
pub mod fdlimit;
pub mod ids;
pub mod metrics;
pub mod middleware;
pub mod router;
pub mod runtime;
pub mod sandboxes;
pub mod services;
pub mod tenants;

#[cfg(test)]
mod tests;
