//! `GET /v1/sessions/{id}/notebook`: the session's history as a Jupyter
//! notebook (nbformat 4.5), so work done through the API, an agent or the
//! playground opens in JupyterLab afterwards.
//!
//! Every cell the session kept (its history is bounded by
//! `PYXIS_HISTORY_MAX_KB`, oldest cells dropped first; a cell whose outputs
//! alone exceed it keeps its code and a note) becomes a code cell with its
//! execution count and its outputs in the order the kernel sent them:
//! streams, display data, the result, the error with its traceback. Images
//! stay base64 as in the kernel's MIME bundles.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::app::AppState;
use crate::error::ApiError;
use crate::services::sessions::CellRecord;
use crate::services::OutputItem;

/// Download the session's history as an `.ipynb` (nbformat 4).
#[utoipa::path(get, path = "/v1/sessions/{id}/notebook", params(("id" = String, Path)),
    responses(
        (status = 200, description = "nbformat 4 notebook (application/x-ipynb+json)", content_type = "application/x-ipynb+json"),
        (status = 404, body = crate::doors::v1::model::ErrorBody),
    ), security(("token" = [])), tag = "sessions")]
pub async fn get_notebook(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let session = app.sessions.get(&id)?;
    let view = app.sessions.info(&session);
    let python = app.sessions.launcher().runtime_info().python;
    let nb = notebook(&session.history(), &view.language, &python, &id);
    let body = serde_json::to_vec_pretty(&nb).map_err(|e| {
        tracing::error!(?e, "notebook encoding");
        ApiError::internal("notebook encoding failed")
    })?;
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ipynb+json"),
    );
    // The id is checked by the session lookup: letters and digits only.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"pyxis-{}.ipynb\"",
        id.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect::<String>()
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// The notebook of `cells`, for a session of `language`.
pub fn notebook(cells: &[CellRecord], language: &str, python_version: &str, id: &str) -> Value {
    let (kernelspec, language_info) = if language == "python" {
        (
            json!({"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}),
            json!({
                "name": "python",
                "version": python_version,
                "mimetype": "text/x-python",
                "file_extension": ".py",
                "pygments_lexer": "ipython3",
                "codemirror_mode": {"name": "ipython", "version": 3},
                "nbconvert_exporter": "python",
            }),
        )
    } else {
        (
            json!({"name": language, "display_name": language, "language": language}),
            json!({"name": language}),
        )
    };
    let cells: Vec<Value> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "cell_type": "code",
                "id": format!("pyxis-{i}"),
                "metadata": {},
                "execution_count": (c.execution_count > 0).then_some(c.execution_count),
                "source": c.code,
                "outputs": c.outputs.iter().map(output).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": kernelspec,
            "language_info": language_info,
            "pyxis": {"session": id},
        },
        "cells": cells,
    })
}

fn output(o: &OutputItem) -> Value {
    match o {
        OutputItem::Stream { name, text } => {
            json!({"output_type": "stream", "name": name, "text": text})
        }
        OutputItem::DisplayData { data, metadata, .. } => json!({
            "output_type": "display_data",
            "data": bundle(data),
            "metadata": metadata,
        }),
        OutputItem::ExecuteResult {
            execution_count,
            data,
            metadata,
        } => json!({
            "output_type": "execute_result",
            "execution_count": (*execution_count > 0).then_some(*execution_count),
            "data": bundle(data),
            "metadata": metadata,
        }),
        OutputItem::Error {
            ename,
            evalue,
            traceback,
        } => json!({
            "output_type": "error",
            "ename": ename,
            "evalue": evalue,
            "traceback": traceback,
        }),
    }
}

/// A MIME bundle as nbformat wants it: JSON types (`application/json`,
/// `…+json`) as JSON, every other type as a string (a value of another
/// shape is written as its JSON text).
fn bundle(data: &Map<String, Value>) -> Map<String, Value> {
    data.iter()
        .map(|(mime, v)| {
            let json_type = mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"));
            let v = match v {
                _ if json_type => v.clone(),
                Value::String(_) => v.clone(),
                Value::Array(a) if a.iter().all(Value::is_string) => v.clone(),
                other => Value::String(other.to_string()),
            };
            (mime.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::CellStatus;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        }
    }

    #[test]
    fn cells_keep_their_outputs_in_order() {
        let cells = vec![
            CellRecord {
                code: "print('a')\n1/0".into(),
                execution_count: 1,
                status: CellStatus::Error,
                outputs: vec![
                    OutputItem::Stream {
                        name: "stdout".into(),
                        text: "a\n".into(),
                    },
                    OutputItem::Error {
                        ename: "ZeroDivisionError".into(),
                        evalue: "division by zero".into(),
                        traceback: vec!["Traceback".into(), "ZeroDivisionError".into()],
                    },
                ],
            },
            CellRecord {
                code: "x".into(),
                execution_count: 2,
                status: CellStatus::Ok,
                outputs: vec![
                    OutputItem::DisplayData {
                        data: map(json!({"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})),
                        metadata: Map::new(),
                        transient: map(json!({"display_id": "d1"})),
                    },
                    OutputItem::ExecuteResult {
                        execution_count: 2,
                        data: map(json!({
                            "text/plain": "42",
                            "application/json": {"a": 1},
                            "application/vnd.plotly.v1+json": {"data": []},
                            "text/x-odd": {"not": "a string"},
                        })),
                        metadata: Map::new(),
                    },
                ],
            },
            CellRecord {
                code: "%%capture".into(),
                execution_count: 0,
                status: CellStatus::Ok,
                outputs: vec![],
            },
        ];
        let nb = notebook(&cells, "python", "3.11.2", "abc");
        assert_eq!(nb["nbformat"], 4);
        assert_eq!(nb["metadata"]["kernelspec"]["name"], "python3");
        let c = nb["cells"].as_array().expect("cells");
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["source"], "print('a')\n1/0");
        assert_eq!(c[0]["execution_count"], 1);
        assert_eq!(c[0]["outputs"][0]["output_type"], "stream");
        assert_eq!(c[0]["outputs"][1]["output_type"], "error");
        assert_eq!(c[0]["outputs"][1]["traceback"][1], "ZeroDivisionError");
        let display = &c[1]["outputs"][0];
        assert_eq!(display["output_type"], "display_data");
        assert_eq!(display["data"]["image/png"], "iVBORw0KGgo=");
        assert!(
            display.get("transient").is_none(),
            "nbformat has no transient"
        );
        let result = &c[1]["outputs"][1];
        assert_eq!(result["execution_count"], 2);
        assert_eq!(result["data"]["application/json"]["a"], 1);
        assert!(result["data"]["application/vnd.plotly.v1+json"].is_object());
        assert_eq!(result["data"]["text/x-odd"], "{\"not\":\"a string\"}");
        assert!(c[2]["execution_count"].is_null());
        let ids: Vec<_> = c.iter().map(|c| c["id"].as_str().expect("id")).collect();
        assert_eq!(ids, ["pyxis-0", "pyxis-1", "pyxis-2"]);
    }
}
