//! Black-box tests: each one starts (or shares) a real `pyxis` server with
//! real sandboxes and the real Python runtime, and asserts what a client sees.

mod api;
mod bursts;
mod cgroups;
mod commands;
mod compat;
mod contexts;
mod datastack;
mod egress;
mod execution;
mod files;
mod isolation;
mod javascript;
mod js_cold;
mod js_pool;
mod lifecycle;
mod streaming;
mod tenants;
