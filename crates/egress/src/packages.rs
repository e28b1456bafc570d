//! What a sandbox needs to use the proxy and install packages: its environment, where
//! installed packages live, and which requirement strings may reach `pip install`.

use crate::mirror::{normalize_project, MIRROR_HOST};

/// Where a session's packages are installed: `pip install --prefix` of this, inside the
/// workspace (so they count against its quota, survive a kernel restart and die with the
/// session). `--prefix` rather than `--target`: pip then sees what the runtime already has
/// and installs only what is missing.
pub const PACKAGES_PREFIX: &str = "/workspace/.pyxis/packages";

/// The `site-packages` directory under [`PACKAGES_PREFIX`] for a Python `major.minor`.
pub fn site_packages(python_version: &str) -> String {
    format!("{PACKAGES_PREFIX}/lib/python{python_version}/site-packages")
}

/// The environment of a sandbox whose init listens on `127.0.0.1:port`: the proxy for pip,
/// uv, requests, urllib, httpx, curl, git and npm (both spellings: curl reads only the
/// lowercase `http_proxy`), pip and uv pointed at the index mirror, and installs going to
/// [`PACKAGES_PREFIX`]. The kernel itself puts that prefix's `site-packages` on `sys.path`
/// (and `PYTHONPATH`) ahead of the runtime's, and its `bin` on `PATH`: it knows its Python's
/// version (see `runtime/python/pyxis_runtime/sysenv.py`).
pub fn sandbox_env(port: u16) -> Vec<(String, String)> {
    let proxy = format!("http://127.0.0.1:{port}");
    let no_proxy = "localhost,127.0.0.1,::1".to_owned();
    let index = format!("http://{MIRROR_HOST}/simple/");
    let mut env: Vec<(String, String)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "npm_config_proxy",
        "npm_config_https_proxy",
    ]
    .iter()
    .map(|name| ((*name).to_owned(), proxy.clone()))
    .collect();
    env.extend([
        ("NO_PROXY".to_owned(), no_proxy.clone()),
        ("no_proxy".to_owned(), no_proxy),
        ("PIP_INDEX_URL".to_owned(), index.clone()),
        // Plain HTTP to the proxy, which is on this host; TLS to the index is the server's.
        ("PIP_TRUSTED_HOST".to_owned(), MIRROR_HOST.to_owned()),
        ("PIP_PREFIX".to_owned(), PACKAGES_PREFIX.to_owned()),
        ("PIP_DISABLE_PIP_VERSION_CHECK".to_owned(), "1".to_owned()),
        ("PIP_NO_INPUT".to_owned(), "1".to_owned()),
        // The workspace is no place for pip's HTTP cache; the server keeps the files.
        ("PIP_NO_CACHE_DIR".to_owned(), "1".to_owned()),
        ("UV_DEFAULT_INDEX".to_owned(), index.clone()),
        ("UV_INDEX_URL".to_owned(), index),
        // uv's cache is in the sandbox's /tmp, another file system than the workspace.
        ("UV_LINK_MODE".to_owned(), "copy".to_owned()),
        ("UV_NO_PROGRESS".to_owned(), "1".to_owned()),
    ]);
    env
}

/// A requirement a client may ask to install: a project name, optional extras and version
/// specifiers (`pandas`, `requests[socks]==2.32.3`, `numpy>=1.26,<2`). Nothing that pip would
/// read as an option, a URL, a path or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// As given (trimmed), which is what pip gets.
    pub text: String,
    /// The project, normalized (PEP 503).
    pub project: String,
}

/// Longest requirement accepted.
const MAX_REQUIREMENT: usize = 200;

impl Requirement {
    /// Parses and checks one requirement; the reason when it is refused.
    pub fn parse(text: &str) -> Result<Requirement, String> {
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_REQUIREMENT {
            return Err(format!(
                "a requirement is 1 to {MAX_REQUIREMENT} characters"
            ));
        }
        let name_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(text.len());
        let (name, mut rest) = text.split_at(name_end);
        let starts_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric());
        let project = normalize_project(name)
            .filter(|_| starts_ok)
            .ok_or_else(|| format!("{text:?} does not start with a project name"))?;
        if let Some(extras) = rest.strip_prefix('[') {
            let (inside, after) = extras
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unclosed ["))?;
            let extras_ok = inside.split(',').all(|e| {
                let e = e.trim();
                !e.is_empty()
                    && e.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            });
            if !extras_ok {
                return Err(format!("{text:?}: bad extras"));
            }
            rest = after;
        }
        // Version specifiers only: operators, versions, commas, spaces.
        let specifiers_ok = rest.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'=' | b'<' | b'>' | b'!' | b'~' | b'.' | b'*' | b',' | b' ' | b'+'
                )
        });
        if !specifiers_ok {
            return Err(format!(
                "{text:?}: only a project name, extras and version specifiers are accepted"
            ));
        }
        let rest = rest.trim();
        if !rest.is_empty() && !rest.starts_with(['=', '<', '>', '!', '~']) {
            return Err(format!(
                "{text:?}: a version specifier starts with an operator"
            ));
        }
        Ok(Requirement {
            text: text.to_owned(),
            project,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_names_extras_and_versions_only() {
        for (ok, project) in [
            ("pandas", "pandas"),
            ("Requests[socks]==2.32.3", "requests"),
            ("numpy>=1.26,<2", "numpy"),
            ("zope.interface ~= 6.0", "zope-interface"),
            ("pyxis_tiny==1.0", "pyxis-tiny"),
            ("a[x, y]!=1.*", "a"),
        ] {
            let r = Requirement::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(r.project, project);
        }
        for bad in [
            "",
            "-r requirements.txt",
            "--index-url=http://evil/",
            "pkg --extra-index-url http://evil",
            "pkg @ https://evil/pkg.whl",
            "https://evil/pkg.whl",
            "./local",
            "/etc/passwd",
            "pkg; os_name == 'posix'",
            "pkg\n--pre",
            "pkg[",
            "pkg[a b]",
            "pkg 1.0",
            "_pkg",
            "pkg==1.0 && rm -rf /",
        ] {
            assert!(Requirement::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Requirement::parse(&"a".repeat(201)).is_err());
    }

    #[test]
    fn the_environment_points_every_client_at_the_proxy() {
        let env = sandbox_env(3128);
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{name} unset"))
        };
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "npm_config_proxy",
        ] {
            assert_eq!(get(name), "http://127.0.0.1:3128");
        }
        assert_eq!(get("NO_PROXY"), "localhost,127.0.0.1,::1");
        assert_eq!(get("PIP_INDEX_URL"), "http://pyxis-index/simple/");
        assert_eq!(get("UV_DEFAULT_INDEX"), "http://pyxis-index/simple/");
        assert_eq!(get("PIP_TRUSTED_HOST"), "pyxis-index");
        assert_eq!(get("PIP_PREFIX"), PACKAGES_PREFIX);
        assert!(!get("NO_PROXY").contains(MIRROR_HOST));
    }
}
