//! envd's `process.Process` Connect service (`spec/envd/process/process.proto`): commands in
//! the sandbox. Served on the commands service once it exists; until then every method
//! answers Connect's `unimplemented`, in the shape the SDKs read (an end-of-stream error for
//! the streaming methods, a JSON error with 501 for the unary ones), never a fake process.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::connect::{self, ConnectError};
use crate::app::{App, AppState};

pub fn routes(_app: &Arc<App>) -> Router<AppState> {
    Router::new().route("/process.Process/{method}", post(process))
}

/// `POST /process.Process/{method}`.
async fn process(Path(method): Path<String>, headers: HeaderMap) -> Response {
    let e = ConnectError::unimplemented(format!(
        "process.Process/{method}: commands are not served by this Pyxis build"
    ));
    if connect::content_type(&headers) == connect::STREAM_JSON {
        e.stream()
    } else {
        e.unary()
    }
}
