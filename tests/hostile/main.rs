//! The attack suite: hostile programs run in real sessions of a real server,
//! each with the outcome it must meet.

mod commands;
mod egress;
mod escape;
mod exhaustion;
mod files_api;
mod host_counters;
mod javascript;
mod kernel_memory;
mod mount_namespace;
mod network;
mod protocol;
mod shared_locks;
mod slow_clients;
mod tenants;
mod util;
