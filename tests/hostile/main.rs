//! The attack suite: hostile programs run in real sessions of a real server,
//! each with the outcome it must meet.

mod escape;
mod exhaustion;
mod files_api;
mod network;
mod protocol;
mod util;
