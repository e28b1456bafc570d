//! The mount namespace sandboxes copy (issue 21): each zygote holds a private copy of the
//! host's mounts made when it started, and every sandbox's init copies that one rather than
//! the host's. The workspaces of the sessions live at the time (one tmpfs mount each in the
//! host) are not in it, so a sandbox's namespace neither carries nor pays for them.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use pyxis_tests::procfs;

use crate::util::server;

/// Mount points (field 5 of `mountinfo`) under `dir` in `mountinfo`.
fn mounts_under(mountinfo: &str, dir: &Path) -> BTreeSet<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// The zygote's open descriptors that are mount namespaces: (`/proc/Z/fd/N`, `mnt:[inode]`).
fn mount_namespace_fds(zygote: i32) -> Vec<(String, String)> {
    let dir = format!("/proc/{zygote}/fd");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_string_lossy().into_owned();
            link.starts_with("mnt:[")
                .then(|| (e.path().display().to_string(), link))
        })
        .collect()
}

#[test]
fn sandboxes_copy_a_namespace_without_the_live_workspaces() {
    let s = server();
    let a = s.session();
    assert_eq!(
        a.ok("open('/workspace/a.txt', 'w').write('a'); print(1)"),
        "1\n"
    );
    let b = s.session();
    assert_eq!(b.ok("print(2)"), "2\n");
    let workspaces = s.data_dir.join("workspaces");
    let host = std::fs::read_to_string("/proc/self/mountinfo").expect("host mountinfo");
    let live = mounts_under(&host, &workspaces);
    assert!(
        live.len() >= 2,
        "the live sessions' workspaces are host mounts: {live:?}"
    );
    let own = std::fs::read_link("/proc/self/ns/mnt").expect("own mount namespace");
    let zygotes = procfs::zygotes_under(s.pid());
    assert!(!zygotes.is_empty(), "no zygote of server {}", s.pid());
    for zygote in zygotes {
        let held = mount_namespace_fds(zygote);
        assert_eq!(
            held.len(),
            1,
            "zygote {zygote} holds one mount namespace for its sandboxes: {held:?}"
        );
        let (path, name) = &held[0];
        assert_ne!(*name, own.to_string_lossy(), "not the host's namespace");
        let out = Command::new("nsenter")
            .arg(format!("--mount={path}"))
            .args(["cat", "/proc/self/mountinfo"])
            .output()
            .expect("nsenter (util-linux) runs");
        assert!(out.status.success(), "nsenter: {out:?}");
        let copied = String::from_utf8_lossy(&out.stdout);
        assert!(
            copied
                .lines()
                .any(|l| l.split_whitespace().nth(4) == Some("/")),
            "the namespace has a root: {copied}"
        );
        let seen = mounts_under(&copied, &workspaces);
        assert!(
            seen.is_empty(),
            "zygote {zygote}'s namespace carries live workspaces: {seen:?}"
        );
        // Private: no mount of it propagates from or to the host (no `shared:` tag).
        let shared: Vec<&str> = copied.lines().filter(|l| l.contains(" shared:")).collect();
        assert!(shared.is_empty(), "shared mounts: {shared:?}");
    }
    // Both sessions still see their own workspace, and only it.
    assert_eq!(a.ok("print(open('/workspace/a.txt').read())"), "a\n");
    assert_eq!(
        b.ok("import os\nprint(os.path.exists('/workspace/a.txt'))"),
        "False\n"
    );
}
