//! Jupyter's kernels REST and WebSocket API over Pyxis sessions, so that
//! `jupyter server --gateway-url` (the road JupyterLab and Notebook 7 take to remote kernels)
//! runs notebooks on Pyxis. A kernel is a Pyxis session: the same sandbox, limits and pool,
//! listed in `/v1/sessions` too.
//!
//! - [`rest`]: `/api/kernelspecs`, `/api/kernels` (start, list, get, delete, interrupt,
//!   restart);
//! - [`channels`]: `/api/kernels/{id}/channels`, the WebSocket with Jupyter's JSON text frames
//!   (the legacy protocol, which jupyter_server's gateway client speaks): shell, iopub, stdin
//!   and control multiplexed by a top-level `channel`;
//! - [`messages`]: building Jupyter messages from the services' cell events.

pub mod channels;
pub mod messages;
pub mod rest;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// The kernel spec name Pyxis serves.
pub const KERNEL_NAME: &str = "python3";

/// iopub messages kept for a slow WebSocket before it starts missing some.
const IOPUB_BUFFER: usize = 4096;

/// One kernel's door-side state: its iopub fan-out and its open connections.
pub struct KernelState {
    /// The session (and kernel) id.
    pub id: String,
    /// The kernel's Jupyter session id (the `session` of every header it sends).
    pub jupyter_session: String,
    /// iopub messages, to every connection of the kernel.
    pub iopub: broadcast::Sender<Arc<str>>,
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
}

/// The kernels this door started.
#[derive(Default)]
pub struct Kernels {
    map: Mutex<HashMap<String, Arc<KernelState>>>,
}

impl Kernels {
    /// Register a kernel for the session `id` (or return the one there is).
    pub fn register(&self, id: &str) -> Arc<KernelState> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(KernelState {
                    id: id.to_string(),
                    jupyter_session: crate::ids::new_id(),
                    iopub: broadcast::channel(IOPUB_BUFFER).0,
                    connections: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// The kernel of session `id`, if this door knows it.
    pub fn get(&self, id: &str) -> Option<Arc<KernelState>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Forget a kernel.
    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Ids of the kernels this door started, keeping those `alive` says still are.
    pub fn ids(&self, alive: impl Fn(&str) -> bool) -> Vec<String> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|id, _| alive(id));
        let mut ids: Vec<String> = map.keys().cloned().collect();
        ids.sort();
        ids
    }
}
