//! The native API, v1: JSON over HTTP, and server-sent events for live output. One file
//! per resource; each handler's doc comment is its API documentation.

pub mod commands;
pub mod contexts;
pub mod execute;
pub mod files;
pub mod model;
pub mod notebook;
pub mod packages;
pub mod sessions;
pub mod system;
