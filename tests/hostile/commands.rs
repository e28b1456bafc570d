//! The roads issue 15 opened: commands and contexts joined to a live sandbox. A bash fork
//! bomb, processes that try to outlive their sandbox, a look at another session's
//! workspace, and floods of commands and contexts.

use std::time::Duration;

use pyxis_tests::{scaled, Session};
use serde_json::{json, Value};

use crate::util::{attack, server, victim_recovers, wait_no_process_with_uid_in};

fn command(s: &Session<'_>, body: Value) -> (u16, Value) {
    let r = s
        .server
        .post(&format!("/v1/sessions/{}/commands", s.id), &body);
    let status = r.status().as_u16();
    (status, r.json().expect("json"))
}

fn bash_context(s: &Session<'_>) -> String {
    let r = s.server.post(
        &format!("/v1/sessions/{}/contexts", s.id),
        &json!({"language": "bash"}),
    );
    assert_eq!(r.status(), 201);
    let v: Value = r.json().expect("json");
    v["id"].as_str().expect("id").to_string()
}

/// The sandbox's uid, as a command sees it.
fn sandbox_uid(s: &Session<'_>) -> u32 {
    let (_, v) = command(s, json!({"cmd": "id -u"}));
    v["stdout"]
        .as_str()
        .unwrap_or("")
        .trim()
        .parse()
        .expect("uid")
}

#[test]
fn a_bash_fork_bomb_stays_inside_its_pids_limit() {
    let s = server();
    let victim = s.session();
    victim.ok("kept = 41");
    let bash = bash_context(&victim);
    attack(s, &victim, |v| {
        let out = v.exec_with(json!({
            "code": "bomb() { bomb | bomb & }; bomb; sleep 3",
            "context": bash,
            "timeout_s": 6,
        }));
        // The sandbox's pids limit is what stops it: bash reports its failed forks.
        let stderr = out["stderr"].as_str().unwrap_or("");
        assert!(stderr.contains("fork"), "{out:#}");
    });
    // The Python context never noticed; a restart of the bash context (its process group)
    // ends what is left of the bomb.
    assert_eq!(victim.ok("print(kept + 1)"), "42\n");
    let r = s.post(
        &format!("/v1/sessions/{}/contexts/{bash}/restart", victim.id),
        &json!({}),
    );
    assert_eq!(r.status(), 200);
    let out = victim.exec_with(json!({"code": "echo back", "context": bash}));
    assert_eq!(out["stdout"], "back\n", "{out:#}");
    victim_recovers(&victim);
}

#[test]
fn processes_that_try_to_outlive_their_sandbox_are_gone_after_delete() {
    let s = server();
    let sess = s.session();
    let uid = sandbox_uid(&sess);
    let escapes = [
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 &",
        "nohup sleep 1001 >/dev/null 2>&1 &",
        "( ( sleep 1002 </dev/null >/dev/null 2>&1 & ) & )",
        "trap '' HUP TERM; exec sleep 1003",
    ];
    for cmd in escapes {
        let (status, v) = command(&sess, json!({"cmd": cmd, "background": true}));
        assert_eq!(status, 201, "{cmd}: {v}");
    }
    // A context's kernel that double-forks too.
    let bash = bash_context(&sess);
    let out = sess.exec_with(json!({
        "code": "( setsid sleep 1004 </dev/null >/dev/null 2>&1 & ); echo forked",
        "context": bash,
    }));
    assert_eq!(out["stdout"], "forked\n", "{out:#}");
    let (_, v) = command(
        &sess,
        json!({"cmd": "sleep 0.5; cat /proc/[0-9]*/comm | grep -c '^sleep$'"}),
    );
    assert_eq!(v["stdout"], "5\n", "every escapee runs: {v}");
    drop(sess);
    let left = wait_no_process_with_uid_in(uid, uid + 1, scaled(Duration::from_secs(10)));
    assert!(left.is_empty(), "left running after delete: {left:?}");
}

#[test]
fn a_command_cannot_reach_another_sessions_workspace() {
    let s = server();
    let a = s.session();
    a.ok("open('secret-of-a.txt', 'w').write('the secret')");
    let b = s.session();
    let (_, v) = command(
        &b,
        json!({"cmd": format!(
            "ls -a /workspace; find / -xdev -name 'secret-of-a.txt' 2>/dev/null; \
             cat /proc/*/root/workspace/secret-of-a.txt 2>/dev/null; \
             ls {}/workspaces 2>&1; echo done",
            s.data_dir.display()
        )}),
    );
    let out = v["stdout"].as_str().unwrap_or("");
    assert!(!out.contains("secret"), "{v}");
    assert!(out.ends_with("done\n"), "{v}");
    assert!(!out.contains(&a.id), "sees the other session's id: {v}");
}

#[test]
fn floods_of_commands_and_contexts_are_bounded() {
    let s = server();
    let sess = s.session();
    let mut started = 0;
    let refused = loop {
        let (status, v) = command(&sess, json!({"cmd": "sleep 60", "background": true}));
        if status != 201 {
            break (status, v);
        }
        started += 1;
        assert!(started <= 64, "no bound on commands");
    };
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "too_many");
    assert_eq!(started, 16);
    // Contexts: at most 8, the first included.
    let mut made = 1;
    loop {
        let r = s.post(
            &format!("/v1/sessions/{}/contexts", sess.id),
            &json!({"language": "bash"}),
        );
        if r.status() != 201 {
            assert_eq!(r.status(), 429);
            break;
        }
        made += 1;
        assert!(made <= 64, "no bound on contexts");
    }
    assert_eq!(made, 8);
    // The session still answers.
    assert_eq!(sess.ok("print('alive')"), "alive\n");
}
