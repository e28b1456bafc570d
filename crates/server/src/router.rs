//! Every route of the server, and the OpenAPI document generated from the
//! handlers.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;

use crate::app::{App, AppState};
use crate::doors::v1::{
    commands, contexts, execute, files, model, notebook, packages, sessions, system,
};
use crate::doors::{gateway, jupyter, pool, runner};
use crate::error::ApiError;

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Pyxis", description = "Stateful, sandboxed Python over HTTP."),
    paths(
        sessions::create_session, sessions::list_sessions, sessions::get_session,
        sessions::delete_session, sessions::interrupt_session, sessions::restart_session,
        notebook::get_notebook,
        packages::install_packages, packages::list_packages, packages::remove_package,
        execute::execute_cell, execute::execute_one_shot,
        contexts::create_context, contexts::list_contexts, contexts::delete_context,
        contexts::restart_context, contexts::interrupt_context,
        commands::run_command, commands::list_commands, commands::get_command,
        commands::write_stdin, commands::kill_command,
        files::download_file, files::upload_file, files::delete_file, files::list_files,
        files::upload_files, files::post_file_path, files::export_files,
        system::healthz, system::readyz, system::status, system::capabilities, system::openapi,
        system::metrics,
        jupyter::rest::list_kernelspecs, jupyter::rest::get_kernelspec, jupyter::rest::list_kernels,
        jupyter::rest::start_kernel, jupyter::rest::get_kernel, jupyter::rest::delete_kernel,
        jupyter::rest::interrupt_kernel, jupyter::rest::restart_kernel, jupyter::channels::channels,
        execute_dispatch, pool::get_image, pool::get_file, pool::capabilities,
        gateway::release_v1_route, gateway::upload_files, gateway::delete_files,
        gateway::export_files, gateway::status_v1, gateway::execute_v0_route,
        gateway::release_v0_route, gateway::status_v0,
        runner::execute, runner::run_by_params, runner::async_run_by_params, runner::health,
        runner::ready, runner::alive,
        runner::packages::install, runner::packages::list, runner::packages::uninstall,
    ),
    components(schemas(
        model::CreateSession, model::LimitsRequest, model::Limits, model::Usage,
        model::SessionInfo, model::SessionList, model::ExecuteRequest, model::OneShotRequest,
        model::ExecStatus, model::ResultItem, model::ExecError, model::Execution,
        model::InterruptReply, model::Status, model::Capabilities, model::McpInfo, model::ErrorBody,
        model::ErrorDetail, model::FileChange, model::FileKind, model::FileEntry,
        model::FileList, model::UploadedFile, model::UploadedFiles, model::ImportItem,
        model::ImportRequest, model::OneShotFile, model::ExportMethod, model::ExportItem,
        model::ExportRequest, model::ExportResult, model::ExportResults, model::ExecuteReply,
        jupyter::rest::KernelModel, jupyter::rest::StartKernel,
        contexts::CreateContext, contexts::ContextInfo, contexts::ContextList,
        contexts::ContextInterrupted, commands::RunCommand, commands::CommandResult,
        commands::CommandEntry, commands::CommandList, commands::StdinRequest,
        commands::KillRequest, commands::KillReply,
        packages::InstallRequest, crate::services::packages::PackagesOutcome,
        crate::services::packages::Package, model::NetworkRequest,
        crate::services::egress::NetworkView,
    )),
    modifiers(&Security),
    tags(
        (name = "pool", description = "The Docker-pool interpreter's API (COMPAT.md §1)."),
        (name = "gateway", description = "The Jupyter-kernel gateway's API (COMPAT.md §2)."),
        (name = "runner", description = "The function runner's API (COMPAT.md §3)."),
    ),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "x_auth_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
        add_common_responses(api);
    }
}

/// The answers any operation can give besides its own: 401 where a token is
/// needed, 404 where the path names a session, 422 where it names something
/// else too, 413/415/422 where a body is read. Declared once here rather than on every handler.
fn add_common_responses(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in api.paths.paths.iter_mut() {
        let names_session = path.contains("{id}");
        // A path parameter other than the session id (a context, pid, package name,
        // file path) is validated by the handler: a malformed one is a 422.
        let names_more = path.matches('{').count() > usize::from(names_session);
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            let mut add = |code: &str, description: &str| {
                responses
                    .entry(code.to_string())
                    .or_insert_with(|| error(description));
            };
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add("401", "missing or wrong token");
            }
            if names_session {
                add("404", "no such session (or file)");
            }
            if names_more {
                add("422", "invalid path parameter");
            }
            if op.request_body.is_some() {
                add("413", "request body too large");
                add("415", "unsupported content type");
                add("422", "invalid request");
            }
        }
    }
}

/// The complete application: every route of every door.
pub fn build(app: Arc<App>) -> Router {
    let routes = Router::new()
        // ops
        .merge(crate::doors::playground::routes())
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/openapi.json", get(system::openapi))
        .route("/metrics", get(system::metrics))
        // v1: the native API
        .route("/v1/status", get(system::status))
        .route("/v1/capabilities", get(system::capabilities))
        .route(
            "/v1/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session).delete(sessions::delete_session),
        )
        .route("/v1/sessions/{id}/execute", post(execute::execute_cell))
        .route(
            "/v1/sessions/{id}/interrupt",
            post(sessions::interrupt_session),
        )
        .route("/v1/sessions/{id}/restart", post(sessions::restart_session))
        .route("/v1/sessions/{id}/notebook", get(notebook::get_notebook))
        .route(
            "/v1/sessions/{id}/packages",
            post(packages::install_packages).get(packages::list_packages),
        )
        .route(
            "/v1/sessions/{id}/packages/{name}",
            axum::routing::delete(packages::remove_package),
        )
        .route("/v1/execute", post(execute::execute_one_shot))
        // Uploads are limited by the session's workspace quota, not by the
        // request body limit.
        .route(
            "/v1/sessions/{id}/files",
            get(files::list_files)
                .post(files::upload_files)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(files::download_file)
                .put(files::upload_file)
                .delete(files::delete_file)
                .post(files::post_file_path)
                .layer(DefaultBodyLimit::disable()),
        )
        // jupyter: the kernels REST and WebSocket API
        .route("/api/kernelspecs", get(jupyter::rest::list_kernelspecs))
        .route(
            "/api/kernelspecs/{name}",
            get(jupyter::rest::get_kernelspec),
        )
        .route(
            "/api/kernels",
            get(jupyter::rest::list_kernels).post(jupyter::rest::start_kernel),
        )
        .route(
            "/api/kernels/{id}",
            get(jupyter::rest::get_kernel).delete(jupyter::rest::delete_kernel),
        )
        .route(
            "/api/kernels/{id}/interrupt",
            post(jupyter::rest::interrupt_kernel),
        )
        .route(
            "/api/kernels/{id}/restart",
            post(jupyter::rest::restart_kernel),
        )
        .route(
            "/api/kernels/{id}/channels",
            get(jupyter::channels::channels),
        )
        // the Docker-pool interpreter and the kernel gateway share POST /api/v1/execute
        .route("/api/v1/execute", post(execute_dispatch))
        .route("/images/{name}", get(pool::get_image))
        .route("/files/{name}", get(pool::get_file))
        .route("/capabilities", get(pool::capabilities))
        // the Jupyter-kernel gateway
        .route("/api/v1/release", post(gateway::release_v1_route))
        .route(
            "/api/v1/files",
            post(gateway::upload_files)
                .delete(gateway::delete_files)
                .layer(DefaultBodyLimit::max(1024 * 1024)),
        )
        .route("/api/v1/files/export", post(gateway::export_files))
        .route("/api/v1/status", get(gateway::status_v1))
        .route("/execute", post(gateway::execute_v0_route))
        .route("/release", post(gateway::release_v0_route))
        .route("/status", get(gateway::status_v0))
        // the function runner
        .route("/api/runner/execute", post(runner::execute))
        .route(
            "/api/coderunner/v1/pycode/run-by-params",
            post(runner::run_by_params),
        )
        .route(
            "/api/coderunner/v1/pycode/async-run-by-params",
            post(runner::async_run_by_params),
        )
        .route("/api/health", get(runner::health))
        .route("/health/ready", get(runner::ready))
        .route("/health/alive", get(runner::alive))
        .route("/api/pypkg/install", post(runner::packages::install))
        .route("/api/pypkg/list", get(runner::packages::list))
        .route(
            "/api/pypkg/uninstall",
            axum::routing::delete(runner::packages::uninstall),
        )
        // the document tools (OCR, barcodes, conversion, data analysis)
        .merge(crate::doors::v1::contexts::routes())
        .merge(crate::doors::tools::routes())
        // the MCP door (Streamable HTTP)
        .merge(crate::doors::mcp::routes(app.clone()))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|| async { ApiError::not_found() });
    // E2B addresses sandboxes by header or host name, before any route: its door goes first.
    crate::doors::e2b::front(crate::middleware::apply(routes, app.clone()), app)
}

/// `/metrics` alone, for `PYXIS_METRICS_LISTEN` (no token: bind it where only the
/// monitoring system reaches).
pub fn metrics_only() -> Router {
    Router::new().route("/metrics", get(system::metrics))
}

/// `POST /api/v1/execute`: the gateway with `?user_uuid=`, else the Docker-pool
/// interpreter.
#[utoipa::path(post, path = "/api/v1/execute",
    params(("user_uuid" = Option<String>, Query,
        description = "given: the gateway runs `code` in this user's session; absent: the \
            Docker-pool interpreter runs it once with `files`")),
    request_body = pool::PoolRequest,
    responses(
        (status = 200, description = "the pool's `PoolReply` (always 200, also when the code \
            failed), or the gateway's `ExecuteReply`",
            body = inline(ExecuteAnswer)),
        (status = 413, body = inline(ExecuteError)), (status = 415, body = inline(ExecuteError)),
        (status = 422, body = inline(ExecuteError), description = "invalid request"),
        (status = 503, body = inline(ExecuteError),
            description = "no capacity, or the gateway's code timed out or was killed"),
    ), security(("token" = [])), tags = ["pool", "gateway"])]
async fn execute_dispatch(
    State(app): State<AppState>,
    uri: axum::http::Uri,
    q: gateway::ExecQuery,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    if !crate::doors::wants_gateway(uri.query()) {
        return pool::execute(app, body).await;
    }
    let r = match gateway::user_of(&q) {
        Some(user) => gateway::execute_v1(app, user, body).await,
        None => Err(ApiError::bad_request(
            "user_uuid must be given once, as a string",
        )),
    };
    Ok(gateway::detailed(r).await)
}

/// What `POST /api/v1/execute` answers: the pool's reply or the gateway's. `anyOf`, not
/// `oneOf`: every field of the gateway's reply is optional, so a pool reply matches both.
struct ExecuteAnswer;

impl utoipa::PartialSchema for ExecuteAnswer {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        any_of::<pool::PoolReply, gateway::ExecuteReply>()
    }
}

impl utoipa::ToSchema for ExecuteAnswer {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        collect::<pool::PoolReply, gateway::ExecuteReply>(schemas);
    }
}

/// What `POST /api/v1/execute` refuses with: the native error (pool) or `{"detail"}`
/// (gateway).
struct ExecuteError;

impl utoipa::PartialSchema for ExecuteError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        any_of::<model::ErrorBody, gateway::GatewayDetail>()
    }
}

impl utoipa::ToSchema for ExecuteError {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        collect::<model::ErrorBody, gateway::GatewayDetail>(schemas);
    }
}

/// `anyOf` references to the schemas `A` and `B`.
fn any_of<A: utoipa::ToSchema, B: utoipa::ToSchema>(
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{AnyOfBuilder, Schema};
    use utoipa::openapi::{Ref, RefOr};
    RefOr::T(Schema::AnyOf(
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(A::name()))
            .item(Ref::from_schema_name(B::name()))
            .build(),
    ))
}

/// Register `A` and `B` (and what they use) as components.
fn collect<A: utoipa::ToSchema, B: utoipa::ToSchema>(
    schemas: &mut Vec<(
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    )>,
) {
    for (name, schema) in [
        (A::name().into_owned(), A::schema()),
        (B::name().into_owned(), B::schema()),
    ] {
        schemas.push((name, schema));
    }
    A::schemas(schemas);
    B::schemas(schemas);
}
