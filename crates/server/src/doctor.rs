//! `pyxis doctor`: what this host can do for sandboxes, and how to fix what it lacks.

use std::io::Write;

use crate::config::Config;
use crate::runtime;

/// Print the report; exits with status 1 when something needed is missing.
pub fn run(cfg: &Config) -> anyhow::Result<()> {
    let report = pyxis_sandbox::probe();
    let rt = runtime::Runtime::new(&cfg.runtime_dir);
    let mut out = std::io::stdout().lock();
    // A piped core_pattern starts a host helper as root when a sandboxed
    // process crashes, whatever the sandbox's RLIMIT_CORE says.
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let core_pipe = core_pattern.trim_start().starts_with('|');
    writeln!(out, "pyxis doctor: what this host can do for sandboxes\n")?;
    for item in probe_items(&serde_json::to_value(&report)?) {
        let ok = item["ok"].as_bool().unwrap_or(false);
        let name = item["name"].as_str().unwrap_or_default();
        let detail = item["detail"].as_str().unwrap_or_default();
        writeln!(out, "{} {name}: {detail}", if ok { "ok  " } else { "FAIL" })?;
        if let Some(fix) = item["fix"].as_str().filter(|f| !ok && !f.is_empty()) {
            writeln!(out, "       fix: {fix}")?;
        }
    }
    let rt_ok = rt.is_installed();
    writeln!(
        out,
        "{} runtime {}: {}",
        if rt_ok { "ok  " } else { "FAIL" },
        cfg.runtime_dir.display(),
        if rt_ok {
            "installed".to_string()
        } else {
            "missing — run `pyxis setup` (or just start the server)".to_string()
        }
    )?;
    let mut lib_ok = true;
    for (what, path) in [
        ("sandbox library", cfg.sandbox_lib.clone()),
        ("sandbox init", cfg.sandbox_init()),
    ] {
        let found = path.exists();
        lib_ok &= found;
        writeln!(
            out,
            "{} {what} {}: {}",
            if found { "ok  " } else { "FAIL" },
            path.display(),
            if found {
                "found"
            } else {
                "missing — build the workspace (`cargo build --release`) or set PYXIS_SANDBOX_LIB"
            }
        )?;
    }
    if core_pipe {
        writeln!(
            out,
            "WARN core_pattern pipes crashes to a host helper ({}): a crash in a sandbox runs it as root\n       fix: sysctl kernel.core_pattern=core (or a path), or accept the helper",
            core_pattern.trim()
        )?;
    } else {
        writeln!(
            out,
            "ok   core_pattern: {} (no host helper)",
            core_pattern.trim()
        )?;
    }
    // What the server's caps need against the hard limit it can raise its soft one to.
    let need = crate::fdlimit::needed(cfg.max_sessions, cfg.pool_max_idle, cfg.max_connections);
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => match crate::fdlimit::shortfall(hard, need) {
            Some(why) => writeln!(out, "WARN open files: {why}")?,
            None => writeln!(
                out,
                "ok   open files: hard limit {hard}, the caps need about {need} (the server raises its soft limit at start)"
            )?,
        },
        Err(e) => writeln!(out, "WARN open files: cannot read RLIMIT_NOFILE ({e})")?,
    }
    match pyxis_sandbox::dynamic_modifications_favored() {
        Ok(Some(true)) => writeln!(
            out,
            "ok   cgroup favordynmods: on (joining a cgroup takes well under a millisecond)"
        )?,
        Ok(Some(false)) if cfg.cgroup_favordynmods => writeln!(
            out,
            "ok   cgroup favordynmods: off now; the server turns it on at start"
        )?,
        Ok(Some(false)) => writeln!(
            out,
            "WARN cgroup favordynmods: off; every new sandbox waits for an RCU grace period (5-20 ms)\n       fix: PYXIS_CGROUP_FAVORDYNMODS=true"
        )?,
        Ok(None) | Err(_) => writeln!(
            out,
            "WARN cgroup favordynmods: no cgroup2 mount to set it on; every new sandbox waits for an RCU grace period (5-20 ms)"
        )?,
    }
    if !(report.all_ok() && rt_ok && lib_ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// Every `{name, ok, detail, fix}` object in the probe report, in order.
fn probe_items(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    match v {
        serde_json::Value::Object(m) if m.contains_key("ok") && m.contains_key("name") => vec![v],
        serde_json::Value::Object(m) => m.values().flat_map(probe_items).collect(),
        serde_json::Value::Array(a) => a.iter().flat_map(probe_items).collect(),
        _ => Vec::new(),
    }
}
