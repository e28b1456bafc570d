//! Running code: a cell in a session, or one-shot in a throwaway sandbox; as one JSON
//! Execution, or streamed as server-sent events with `Accept: text/event-stream`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;

use crate::app::AppState;
use crate::doors::v1::model::{
    wants_sse, CreateSession, ErrorBody, ExecuteReply, ExecuteRequest, Execution, OneShotRequest,
};
use crate::error::ApiError;
use crate::services::{
    session_options, timeout_from, validate_env, CellEvent, CellHandle, CellRequest, NewSession,
};

/// Seconds between SSE keep-alive comments.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Run one cell in the session. State (variables, imports) carries over to the next cell. A
/// Python error is a 200 with `status: "error"`.
///
/// With `Accept: text/event-stream` the answer is `200 text/event-stream`: one event per
/// kernel event as it happens (`event:` its Jupyter message type — `status`,
/// `execute_input`, `stream`, `display_data`, `update_display_data`, `clear_output`,
/// `execute_result`, `error` —, `id:` a sequence number, `data:` its content as JSON), a
/// comment every 15 s, and last `execute_reply` whose data is the Execution without its
/// outputs. The same output cap, time limit and interrupt apply. A client that disconnects
/// mid-cell does not stop it (interrupt it for that); one that disconnects while the cell
/// is queued drops it.
#[utoipa::path(post, path = "/v1/sessions/{id}/execute", params(("id" = String, Path)),
    request_body = ExecuteRequest,
    responses(
        (status = 200, body = Execution, description = "the whole cell (JSON), or its events \
            (`text/event-stream`, when asked with `Accept`); the last event, `execute_reply`, \
            carries an ExecuteReply",
            content(
                (Execution = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "too many cells waiting"),
        (status = 422, body = ErrorBody),
    ), security(("token" = [])), tag = "execute")]
pub async fn execute_cell(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ExecuteRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let session = app.sessions.get(&id)?;
    let timeout = timeout_from(
        req.timeout_s,
        session.default_timeout().min(app.config.max_exec_timeout),
        app.config.max_exec_timeout,
    )?;
    let cell = CellRequest {
        context: req.context,
        ..CellRequest::new(req.code, timeout)
    };
    let handle = app.sessions.execute(&session, cell)?;
    answer(handle, wants_sse(&headers)).await
}

/// Run code once in a fresh sandbox that is destroyed afterwards. `files` (URLs, or `{url,
/// path}`) are downloaded into its workspace first, with the rules of
/// `POST /v1/sessions/{id}/files/import`; the Execution's `files` then list what the code
/// wrote. Streams as server-sent events with `Accept: text/event-stream`, like a session's
/// `execute`.
#[utoipa::path(post, path = "/v1/execute", request_body = OneShotRequest,
    responses(
        (status = 200, body = Execution, description = "the Execution (JSON), or its events",
            content(
                (Execution = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 403, body = ErrorBody, description = "a file URL resolves to a non-public address"),
        (status = 413, body = ErrorBody, description = "a file is larger than the import limit"),
        (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "a file could not be fetched"),
        (status = 503, body = ErrorBody),
        (status = 507, body = ErrorBody, description = "workspace quota exhausted"),
    ), security(("token" = [])), tag = "execute")]
pub async fn execute_one_shot(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<OneShotRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    validate_env(&req.env)?;
    let opts = session_options(
        &app.config,
        NewSession::from(CreateSession {
            env: req.env,
            timeout_s: req.timeout_s,
            ..Default::default()
        }),
    )?;
    let timeout = opts.timeout;
    let files: Vec<crate::services::files::ImportItem> = req
        .files
        .into_iter()
        .map(|f| crate::doors::v1::model::ImportItem::from(f).into())
        .collect();
    // Refuse what can be refused before a sandbox is taken.
    app.files.import_targets(&files)?;
    let prepare = {
        let app = app.clone();
        move |session| async move {
            if !files.is_empty() {
                app.files.import(&session, files).await?;
            }
            Ok(())
        }
    };
    let handle = app
        .sessions
        .one_shot(opts, CellRequest::new(req.code, timeout), prepare)
        .await?;
    answer(handle, wants_sse(&headers)).await
}

/// The cell as one Execution, or as its event stream.
async fn answer(handle: CellHandle, sse: bool) -> Result<Response, ApiError> {
    if sse {
        return Ok(Sse::new(event_stream(handle))
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
            .into_response());
    }
    Ok(Json(Execution::from(handle.collect().await?)).into_response())
}

/// One SSE event per cell event, numbered from 1; `execute_reply` last.
fn event_stream(handle: CellHandle) -> impl Stream<Item = Result<Event, Infallible>> {
    let guard = crate::metrics::stream_open("sse");
    futures_util::stream::unfold(
        (handle, 0u64, false, guard),
        |(mut handle, seq, done, guard)| async move {
            if done {
                return None;
            }
            let ev = handle.events.recv().await?;
            let seq = seq + 1;
            let last = matches!(ev, CellEvent::Reply(_));
            let data = match &ev {
                CellEvent::Reply(summary) => {
                    serde_json::to_string(&ExecuteReply::from(summary.clone())).unwrap_or_default()
                }
                other => other.content().to_string(),
            };
            let event = Event::default()
                .event(ev.msg_type())
                .id(seq.to_string())
                .data(data);
            Some((Ok(event), (handle, seq, last, guard)))
        },
    )
}
