//! The document-tools door (the function runner's second module, "DataFlow Tools"): OCR,
//! barcodes, format conversion and data analysis, each call one-shot in a fresh sandbox.
//!
//! - `POST /api/ocr/extract` (`lang`, e.g. `eng+chi_sim`) → `{"lang", "text", "pages"}`;
//! - `POST /api/ocr/barcode` → `{"barcodes": [{"type", "data", "page", "rect", "polygon"}]}`;
//! - `POST /api/file/convert` (`to`) → the converted file (several: JSON with base64);
//! - `POST /api/data_analysis/analyze` → `{"shape", "columns", "dtypes", "missing", …}`;
//! - `POST /api/data_analysis/transform` (`expression`) → `{"result"}`.
//!
//! The file comes as multipart (a part named `file`, the other fields as text parts) or
//! as JSON `{"url", …fields}` (fetched under the URL import rules). The door is a thin
//! layer over `pyxis_runtime.tools`, which users can call from a cell: the cell prints one
//! JSON line, and a `ToolError` becomes the error envelope with its status.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::services::files::ImportItem;
use crate::services::{session_options, CellRequest, NewSession};

/// The marker before the cell's one JSON answer line.
const MARKER: &str = "@@pyxis-tool@@ ";
/// Largest uploaded file (the default workspace quota bounds it too).
const MAX_UPLOAD: usize = 64 << 20;

/// The routes of this door.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/ocr/extract", post(ocr_extract))
        .route("/api/ocr/barcode", post(ocr_barcode))
        .route("/api/file/convert", post(file_convert))
        .route("/api/data_analysis/analyze", post(analyze))
        .route("/api/data_analysis/transform", post(transform))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD + (1 << 20)))
}

/// Where the input is: uploaded bytes, or a URL to import.
enum Input {
    Upload(Bytes),
    Url(String),
}

/// A parsed request: the input file, its extension, the other fields.
struct ToolRequest {
    input: Input,
    ext: String,
    fields: BTreeMap<String, String>,
}

fn extension_of(name: &str) -> String {
    let base = name.split(['?', '#']).next().unwrap_or("");
    let ext = base.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    if !ext.is_empty() && ext.len() <= 8 && ext.chars().all(|c| c.is_ascii_alphanumeric()) {
        ext.to_ascii_lowercase()
    } else {
        "bin".into()
    }
}

async fn parse_request(req: Request) -> Result<ToolRequest, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let Json(body): Json<BTreeMap<String, Value>> = Json::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
        let url = body
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("give the file as multipart `file` or `url`"))?
            .to_string();
        let fields = body
            .iter()
            .filter(|(k, _)| k.as_str() != "url")
            .map(|(k, v)| {
                let text = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                (k.clone(), text)
            })
            .collect();
        let ext = body
            .get("filename")
            .and_then(Value::as_str)
            .map(extension_of)
            .unwrap_or_else(|| extension_of(&url));
        return Ok(ToolRequest {
            input: Input::Url(url),
            ext,
            fields,
        });
    }
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("expected multipart/form-data or JSON: {e}")))?;
    let mut file = None;
    let mut fields = BTreeMap::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let ext = extension_of(field.file_name().unwrap_or_default());
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::too_large(format!("reading the file: {e}")))?;
            file = Some((bytes, ext));
        } else {
            let text = field
                .text()
                .await
                .map_err(|e| ApiError::bad_request(format!("field {name}: {e}")))?;
            fields.insert(name, text);
        }
    }
    let (bytes, ext) = file.ok_or_else(|| ApiError::bad_request("no `file` part"))?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the file is empty"));
    }
    Ok(ToolRequest {
        input: Input::Upload(bytes),
        ext,
        fields,
    })
}

/// The code one call runs: `call` is a Python expression over `_t` (the tools), `_a` (the
/// fields) and `_p` (the input path).
fn cell_code(call: &str, path: &str, fields: &BTreeMap<String, String>) -> String {
    // A JSON string literal is a valid Python string literal: the fields reach Python as
    // data, never as code.
    let args = serde_json::to_string(fields).unwrap_or_else(|_| "{}".into());
    let args = serde_json::to_string(&args).unwrap_or_else(|_| "\"{}\"".into());
    let path = serde_json::to_string(path).unwrap_or_else(|_| "\"input.bin\"".into());
    let marker = serde_json::to_string(MARKER).unwrap_or_default();
    format!(
        "import json as _j\n\
         from pyxis_runtime import tools as _t\n\
         _a = _j.loads({args})\n\
         _p = {path}\n\
         try:\n    _r = {{'ok': {call}}}\n\
         except _t.ToolError as _e:\n    _r = {{'error': _e.as_dict()}}\n\
         print({marker} + _j.dumps(_r, default=str, ensure_ascii=False))\n"
    )
}

/// Run one tool call in a one-shot sandbox; the cell's JSON answer (`ok` or `error`).
async fn run_tool(app: &App, req: ToolRequest, call: &str) -> Result<Value, ApiError> {
    let opts = session_options(&app.config, NewSession::default())?;
    let timeout = opts.timeout;
    let path = format!("input.{}", req.ext);
    let code = cell_code(call, &path, &req.fields);
    let input = req.input;
    if let Input::Url(url) = &input {
        app.files.import_targets(&[ImportItem {
            url: url.clone(),
            path: Some(path.clone()),
        }])?;
    }
    let prepare = {
        let path = path.clone();
        move |session| async move {
            match input {
                Input::Upload(bytes) => {
                    app.files.write_bytes(&session, &path, bytes).await?;
                }
                Input::Url(url) => {
                    let item = ImportItem {
                        url,
                        path: Some(path),
                    };
                    app.files.import(&session, vec![item]).await?;
                }
            }
            Ok(())
        }
    };
    let handle = app
        .sessions
        .one_shot(opts, CellRequest::new(code, timeout), prepare)
        .await?;
    let out = handle.collect().await?;
    let line = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(MARKER.trim_end()).map(str::trim_start));
    let Some(line) = line else {
        let why = out.error_text();
        tracing::warn!(status = ?out.summary.status, error = %why, "document tool failed");
        return Err(ApiError::with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tool_failed",
            format!("the tool did not finish ({:?})", out.summary.status).to_lowercase(),
        ));
    };
    let v: Value = serde_json::from_str(line).map_err(ApiError::internal)?;
    if let Some(err) = v.get("error") {
        return Err(tool_error(err));
    }
    Ok(v.get("ok").cloned().unwrap_or(Value::Null))
}

/// A `ToolError` of the cell as the error envelope, with its status.
fn tool_error(err: &Value) -> ApiError {
    let status = err["status"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    let code = match err["code"].as_str().unwrap_or_default() {
        "file_not_found" => "file_not_found",
        "bad_lang" => "bad_lang",
        "unknown_lang" => "unknown_lang",
        "bad_expression" => "bad_expression",
        "expression_failed" => "expression_failed",
        "image_too_large" => "image_too_large",
        "document_too_large" => "document_too_large",
        "unsupported_conversion" => "unsupported_conversion",
        "unsupported_format" => "unsupported_format",
        "unsafe_xml" => "unsafe_xml",
        "unreadable_image" => "unreadable_image",
        "unreadable_pdf" => "unreadable_pdf",
        "unreadable_document" => "unreadable_document",
        "unreadable_table" => "unreadable_table",
        "conversion_failed" => "conversion_failed",
        "ocr_failed" => "ocr_failed",
        "timeout" => "timeout",
        _ => "tool_failed",
    };
    let message = err["message"].as_str().unwrap_or("the tool failed");
    ApiError::with_status(status, code, message)
}

/// `POST /api/ocr/extract`: text and word boxes of an image or PDF (`lang`, default `eng`).
pub async fn ocr_extract(
    State(app): State<AppState>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let req = parse_request(req).await?;
    let v = run_tool(
        &app,
        req,
        "_t.ocr_extract(_p, lang=_a.get('lang') or 'eng')",
    )
    .await?;
    Ok(Json(v))
}

/// `POST /api/ocr/barcode`: barcodes and QR codes with type, data and position.
pub async fn ocr_barcode(
    State(app): State<AppState>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let req = parse_request(req).await?;
    let v = run_tool(&app, req, "_t.barcode_decode(_p)").await?;
    Ok(Json(json!({ "barcodes": v })))
}

/// `POST /api/data_analysis/analyze`: shape, dtypes, describe, missing values of a table.
pub async fn analyze(State(app): State<AppState>, req: Request) -> Result<Json<Value>, ApiError> {
    let req = parse_request(req).await?;
    Ok(Json(run_tool(&app, req, "_t.analyze(_p)").await?))
}

/// `POST /api/data_analysis/transform`: a pandas `expression` over the table `df`.
pub async fn transform(State(app): State<AppState>, req: Request) -> Result<Json<Value>, ApiError> {
    let req = parse_request(req).await?;
    if !req.fields.contains_key("expression") {
        return Err(ApiError::bad_request("no `expression`"));
    }
    let call = "(lambda _v: _j.loads(_v.to_json(orient='split', date_format='iso', \
                default_handler=str)) if hasattr(_v, 'to_json') else _v)\
                (_t.transform(_p, _a['expression']))";
    let v = run_tool(&app, req, call).await?;
    Ok(Json(json!({ "result": v })))
}

/// `POST /api/file/convert`: the file converted to `to` (one file: its bytes; several, as
/// PDF → PNG pages: `{"files": [{"name", "data_base64"}]}`).
pub async fn file_convert(State(app): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let req = parse_request(req).await?;
    let to = req.fields.get("to").cloned().unwrap_or_default();
    if to.is_empty() {
        return Err(ApiError::bad_request("no `to` format"));
    }
    let call = "[{'name': _x.name, 'data_base64': __import__('base64').b64encode(_x.read_bytes())\
                .decode()} for _x in _t.convert(_p, _a['to'], 'out')]";
    let v = run_tool(&app, req, call).await?;
    let files = v.as_array().cloned().unwrap_or_default();
    if files.len() != 1 {
        return Ok(Json(json!({ "files": files })).into_response());
    }
    let name = files[0]["name"].as_str().unwrap_or("output").to_string();
    let data = base64::engine::general_purpose::STANDARD
        .decode(files[0]["data_base64"].as_str().unwrap_or_default())
        .map_err(ApiError::internal)?;
    let mime = match extension_of(&name).as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "html" | "htm" => "text/html; charset=utf-8",
        "md" | "markdown" => "text/markdown; charset=utf-8",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _ => "application/octet-stream",
    };
    let disposition = format!(
        "attachment; filename=\"{}\"",
        name.replace(['"', '\\', '\r', '\n'], "_")
    );
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        data,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_short_and_alphanumeric() {
        assert_eq!(extension_of("scan.PNG"), "png");
        assert_eq!(extension_of("https://h/x/report.docx?sig=1"), "docx");
        assert_eq!(extension_of("../../etc/passwd"), "bin");
        assert_eq!(extension_of("a.b/c"), "bin");
        assert_eq!(extension_of("x.verylongext"), "bin");
    }

    #[test]
    fn the_cell_quotes_its_fields() {
        let mut fields = BTreeMap::new();
        fields.insert(
            "lang".to_string(),
            "eng'); import os; os.system('x".to_string(),
        );
        let code = cell_code(
            "_t.ocr_extract(_p, lang=_a.get('lang'))",
            "input.png",
            &fields,
        );
        // The field only ever reaches Python as a JSON string inside a string literal.
        assert!(code.contains("_a = _j.loads(\"{\\\"lang\\\":"));
        assert!(!code.contains("\nimport os"));
    }
}
