//! Workspace files as MCP resources: `pyxis://sessions/{id}/files/{path}`. A client lists
//! them (every live session's files, a bounded walk), reads one (text, or a base64 blob
//! by MIME type), and learns the URI shape from the resource template.
//!
//! Paths in URIs are percent-encoded per segment (RFC 3986), so a file named `a b.csv`
//! is `pyxis://sessions/{id}/files/a%20b.csv`; reading decodes them again and the path
//! then goes through the same checks as every file route (no `..`, no escape).

use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};
use rmcp::ErrorData as McpError;

use crate::app::App;
use crate::services::workspace_fs::EntryKind;
use crate::services::ServiceError;

/// The scheme and authority of every resource URI.
const PREFIX: &str = "pyxis://sessions/";

/// At most this many files are listed by one `resources/list` (all sessions together).
const MAX_LISTED: usize = 1000;

/// Directories deeper than this are not walked by `resources/list` (still readable).
const MAX_DEPTH: usize = 8;

/// Largest file `resources/read` returns (base64 inside one JSON-RPC message).
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// The URI of `path` (relative to the workspace) of session `id`.
pub fn file_uri(id: &str, path: &str) -> String {
    format!("{PREFIX}{}/files/{}", encode(id), encode(path))
}

/// The MIME type of a file, guessed from its name.
pub fn mime_of(path: &str) -> String {
    mime_guess::from_path(path)
        .first()
        .map(|m| m.essence_str().to_string())
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// Whether a MIME type is text a client can show as is.
pub fn is_textual(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/json" | "application/xml" | "application/javascript" | "image/svg+xml"
        )
}

/// The one template: a file of a session.
pub fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![ResourceTemplate::new(
        format!("{PREFIX}{{session_id}}/files/{{+path}}"),
        "workspace-file",
    )
    .with_title("A file of a session's workspace")
    .with_description(
        "A file under /workspace of a live session (session_id from create_session or \
         list_sessions; path relative to the workspace, percent-encoded). Text files read \
         as text, others as a base64 blob.",
    )])
}

/// Every live session's workspace files, oldest session first, breadth first, bounded.
pub async fn list(app: &Arc<App>) -> Result<ListResourcesResult, McpError> {
    let mut out = Vec::new();
    'sessions: for session in app.sessions.list() {
        let mut dirs = VecDeque::from([(String::new(), 0usize)]);
        while let Some((dir, depth)) = dirs.pop_front() {
            // A session closed meanwhile, or a directory removed by its code: skip it.
            let Ok(listing) = app.files.list(&session, &dir).await else {
                continue;
            };
            for e in listing.entries {
                match e.kind {
                    EntryKind::Dir if depth + 1 < MAX_DEPTH => dirs.push_back((e.path, depth + 1)),
                    EntryKind::File => {
                        if out.len() >= MAX_LISTED {
                            break 'sessions;
                        }
                        let mime = mime_of(&e.path);
                        out.push(
                            Resource::new(file_uri(&session.id, &e.path), e.path.clone())
                                .with_title(format!("{} (session {})", e.path, session.id))
                                .with_mime_type(mime)
                                .with_size(e.size),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(ListResourcesResult::with_all_items(out))
}

/// Read one file resource.
pub async fn read(app: &Arc<App>, uri: &str) -> Result<ReadResourceResult, McpError> {
    let (id, path) = parse(uri).ok_or_else(|| {
        McpError::invalid_params(
            format!("{uri:?} is not a pyxis://sessions/{{id}}/files/{{path}} URI"),
            None,
        )
    })?;
    let not_found = |m: String| McpError::resource_not_found(m, None);
    let session = app
        .sessions
        .get(&id)
        .map_err(|e| not_found(e.to_string()))?;
    let bytes = app
        .files
        .read_all(&session, &path, MAX_READ_BYTES)
        .await
        .map_err(|e| match e {
            ServiceError::FileNotFound(_) => not_found(e.to_string()),
            ServiceError::Internal(_) => McpError::internal_error("internal error", None),
            e => McpError::invalid_params(e.to_string(), None),
        })?;
    let mime = mime_of(&path);
    let uri = file_uri(&id, &path);
    let contents = match String::from_utf8(bytes) {
        Ok(text)
            if is_textual(&mime)
                || (mime == "application/octet-stream" && !text.contains('\0')) =>
        {
            ResourceContents::text(text, uri).with_mime_type(mime)
        }
        Ok(text) => blob(text.as_bytes(), uri, mime),
        Err(e) => blob(e.as_bytes(), uri, mime),
    };
    Ok(ReadResourceResult::new(vec![contents]))
}

fn blob(bytes: &[u8], uri: String, mime: String) -> ResourceContents {
    ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(bytes), uri)
        .with_mime_type(mime)
}

/// `(session id, path)` of a file URI, decoded.
fn parse(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(PREFIX)?;
    let (id, path) = rest.split_once("/files/")?;
    let id = decode(id)?;
    let path = decode(path)?;
    (!id.is_empty() && !path.is_empty()).then_some((id, path))
}

/// Percent-encode everything but RFC 3986's unreserved characters and `/`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undo [`encode`] (any `%XX`); `None` for a bad escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    crate::doors::percent_decode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        let uri = file_uri("s-1", "data/a b%.csv");
        assert_eq!(uri, "pyxis://sessions/s-1/files/data/a%20b%25.csv");
        assert_eq!(parse(&uri), Some(("s-1".into(), "data/a b%.csv".into())));
        assert_eq!(
            parse(&file_uri("x", "é/ü.txt")),
            Some(("x".into(), "é/ü.txt".into()))
        );
    }

    #[test]
    fn bad_uris() {
        assert_eq!(parse("pyxis://sessions/x/files/"), None);
        assert_eq!(parse("pyxis://sessions//files/a"), None);
        assert_eq!(parse("file:///etc/passwd"), None);
        assert_eq!(parse("pyxis://sessions/x/files/%zz"), None);
        assert_eq!(parse("pyxis://sessions/x/files/%ff"), None);
        assert_eq!(parse("pyxis://sessions/x/files/%4"), None);
    }
}
