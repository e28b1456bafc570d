//! A fake launcher for in-process tests of the services and doors: no namespaces, no
//! Python. Its "kernel" is a task on the other end of a socket pair that speaks the real
//! framed protocol: it echoes a cell's code as stdout, raises for code that starts with
//! `raise`, sleeps for `sleep <ms>`, and counts executions.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use pyxis_protocol::{encode, FrameDecoder, KernelEvent, KernelRequest, ReplyStatus};
use pyxis_sandbox::{CgroupUsage, ResourceLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::kernel::KernelConn;
use super::zygote::ZygoteInfo;
use super::{Created, Launcher, SandboxError, SandboxHandle};

/// Makes fake sandboxes with a temporary workspace each.
#[derive(Default)]
pub struct FakeLauncher {
    /// Sandboxes made and not yet destroyed.
    pub live: Mutex<Vec<String>>,
    /// Kernels started (first starts and restarts).
    pub kernels_started: Arc<AtomicU64>,
}

/// One fake sandbox.
pub struct FakeSandbox {
    id: String,
    dir: tempfile::TempDir,
    launcher: Arc<AtomicU64>,
    kernel: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

async fn fake_kernel(mut sock: tokio::net::UnixStream) {
    let mut dec = FrameDecoder::new(1 << 24);
    let mut buf = vec![0u8; 65536];
    let mut count = 0u64;
    let send = |ev: KernelEvent| encode(&ev).unwrap_or_default();
    if sock.write_all(&send(KernelEvent::Ready {})).await.is_err() {
        return;
    }
    loop {
        let msg = match dec.next_message::<KernelRequest>() {
            Ok(Some(m)) => m,
            Ok(None) => match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    dec.extend(&buf[..n]);
                    continue;
                }
            },
            Err(_) => return,
        };
        let mut out = Vec::new();
        match msg {
            KernelRequest::ExecuteRequest { id, code, .. } => {
                count += 1;
                if let Some(ms) = code.strip_prefix("sleep ") {
                    let ms: u64 = ms.trim().parse().unwrap_or(0);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                out.extend(send(KernelEvent::Stream {
                    id: id.clone(),
                    name: "stdout".into(),
                    text: code.clone(),
                }));
                let status = if code.starts_with("raise") {
                    out.extend(send(KernelEvent::Error {
                        id: id.clone(),
                        ename: "ValueError".into(),
                        evalue: "fake".into(),
                        traceback: vec!["Traceback".into()],
                    }));
                    ReplyStatus::Error
                } else {
                    ReplyStatus::Ok
                };
                out.extend(send(KernelEvent::ExecuteReply {
                    id,
                    status,
                    execution_count: count,
                    truncated: false,
                    user_expressions: Default::default(),
                }));
            }
            KernelRequest::Configure { id, .. } => {
                out.extend(send(KernelEvent::ConfigureReply {
                    id,
                    status: "ok".into(),
                }));
            }
            KernelRequest::Shutdown {} => return,
            _ => {}
        }
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
}

impl FakeSandbox {
    fn spawn_kernel(&self) -> Result<KernelConn, SandboxError> {
        let (ours, theirs) = tokio::net::UnixStream::pair()?;
        let task = tokio::spawn(fake_kernel(theirs));
        if let Ok(mut k) = self.kernel.lock() {
            if let Some(old) = k.replace(task) {
                old.abort();
            }
        }
        self.launcher.fetch_add(1, Ordering::Relaxed);
        Ok(KernelConn::new(ours, 1 << 24))
    }
}

impl SandboxHandle for FakeSandbox {
    fn id(&self) -> &str {
        &self.id
    }
    fn interrupt(&self) {}
    fn kill_processes(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(k) = self.kernel.lock().ok().and_then(|mut k| k.take()) {
                k.abort();
            }
        })
    }
    fn start_kernel(
        self: Arc<Self>,
        _kernel: Option<super::KernelExec>,
    ) -> BoxFuture<'static, Result<KernelConn, SandboxError>> {
        Box::pin(async move { self.spawn_kernel() })
    }
    fn start_context(
        self: Arc<Self>,
        req: super::joined::ExecRequest,
    ) -> BoxFuture<'static, Result<(KernelConn, super::joined::Joined), SandboxError>> {
        Box::pin(async move {
            // A context's kernel is one more fake kernel; its "process" never exits.
            let _ = req;
            let (ours, theirs) = tokio::net::UnixStream::pair()?;
            tokio::spawn(fake_kernel(theirs));
            let (exit_tx, exit) = tokio::sync::watch::channel(None);
            std::mem::forget(exit_tx);
            let joined = super::joined::Joined {
                pid: 0,
                ns_pid: 0,
                stdin: None,
                stdout: None,
                stderr: None,
                kernel: None,
                exit,
            };
            Ok((KernelConn::new(ours, 1 << 24), joined))
        })
    }
    fn oom_kills(&self) -> u64 {
        0
    }
    fn usage(&self) -> Option<CgroupUsage> {
        None
    }
    fn uid(&self) -> u32 {
        nix::unistd::getuid().as_raw()
    }
    fn workspace_path(&self) -> &Path {
        self.dir.path()
    }
    fn disk_usage(&self) -> Option<(u64, u64)> {
        Some((0, 1 << 30))
    }
    fn set_limits(&self, _: &ResourceLimits) -> Result<(), SandboxError> {
        Ok(())
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Launcher for FakeLauncher {
    fn create<'a>(
        &'a self,
        _limits: &'a ResourceLimits,
        // A fake kernel answers for every language.
        _kernel: Option<&'a super::KernelExec>,
    ) -> BoxFuture<'a, Result<Created, SandboxError>> {
        Box::pin(async move {
            let sb = Arc::new(FakeSandbox {
                id: crate::ids::new_uuid(),
                dir: tempfile::tempdir()?,
                launcher: self.kernels_started.clone(),
                kernel: Mutex::new(None),
            });
            let mut conn = sb.spawn_kernel()?;
            // The real launcher hands out a kernel that has said ready.
            conn.next_event().await?;
            if let Ok(mut l) = self.live.lock() {
                l.push(sb.id.clone());
            }
            Ok((sb as Arc<dyn SandboxHandle>, conn))
        })
    }
    fn destroy(&self, sb: Arc<dyn SandboxHandle>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(mut l) = self.live.lock() {
                l.retain(|id| id != sb.id());
            }
            sb.kill_processes().await;
        })
    }
    fn default_limits(&self) -> ResourceLimits {
        ResourceLimits {
            memory_bytes: 1 << 30,
            pids: 256,
            cpu_millicores: 1000,
        }
    }
    fn cgroup_version(&self) -> String {
        "fake".into()
    }
    fn runtime_info(&self) -> ZygoteInfo {
        ZygoteInfo {
            python: "3.11.2".into(),
            libraries: Default::default(),
        }
    }
    fn wait_all_released(&self, _: std::time::Duration) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn cleanup_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
