//! The admin API's HTTP infrastructure (DESIGN.md §3): TLS server, errors, strict JSON,
//! bearer auth, metrics and the OpenAPI document. Resource handlers plug in as [`Routes`].
//!
//! ```ignore
//! let routes = api::base_router()
//!     .merge(sessions::routes().with_state(sessions_state));   // Routes<()>
//! let app = api::App::new(Arc::new(store_tokens)).build(routes);
//! let handle = api::serve(config, app.router, shutdown).await?;
//! ```
//!
//! A handler: `async fn create(p: Principal, StrictJson(cmd): StrictJson<CreateSession>)
//! -> Result<StrictJson<Session>, ApiError>` with `auth::require(&p, &[Role::Subscriber])?`.

pub mod auth;
pub mod error;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod tls;
pub mod v1;

use std::sync::Arc;

use axum::extract::Extension;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};

pub use auth::{AuthState, LimiterConfig, MemoryTokens, Principal, Role, TokenResolver, require};
pub use error::ApiError;
pub use json::StrictJson;
pub use metrics::Metrics;
pub use routes::{RouteSpec, Routes};
pub use server::{ApiConfig, ServerHandle, TlsMode, serve};

/// The infrastructure routes: `GET /healthz`, `GET /metrics`, `GET /openapi.json`.
pub fn base_router() -> Routes {
    Routes::new()
        .get("/healthz", healthz)
        .get("/metrics", metrics_text)
        .get("/openapi.json", openapi::serve_document)
}

async fn healthz() -> Response {
    StrictJson(serde_json::json!({ "status": "ok" })).into_response()
}

async fn metrics_text(Extension(metrics): Extension<Arc<Metrics>>) -> Response {
    let mut resp = metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed("this route does not support this method")
}

/// What every route shares: the token resolver and failed-auth limiter, the metrics registry.
pub struct App {
    pub auth: AuthState,
    pub metrics: Arc<Metrics>,
}

/// A finished application: the router to [`serve`] and its route table.
pub struct BuiltApp {
    pub router: Router,
    pub routes: Vec<RouteSpec>,
    pub metrics: Arc<Metrics>,
}

impl App {
    /// Default limiter and a fresh metrics registry.
    pub fn new(resolver: Arc<dyn TokenResolver>) -> Self {
        App {
            auth: AuthState::new(resolver, LimiterConfig::default()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Adds the JSON 404/405 fallbacks, request metrics, JSON error normalization and the
    /// extensions the extractors need ([`AuthState`], [`Metrics`]).
    pub fn build(self, routes: Routes) -> BuiltApp {
        let (router, table) = routes.into_parts();
        let router = router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(
                self.metrics.clone(),
                metrics::track,
            ))
            .layer(middleware::map_response(error::normalize))
            .layer(Extension(self.auth))
            .layer(Extension(self.metrics.clone()));
        BuiltApp {
            router,
            routes: table,
            metrics: self.metrics,
        }
    }
}
