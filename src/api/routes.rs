//! `Routes`: an axum `Router` that remembers what was registered.
//!
//! axum does not list a router's routes, so every route goes through this builder, which
//! records `(method, path template)`. The table drives the OpenAPI sync check
//! ([`crate::api::openapi::check_sync`]). Path templates use axum 0.8's `{param}` syntax, which
//! is also OpenAPI's.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodRouter, delete, get, patch, post, put};

/// One registered route: an upper-case method and a path template such as `/v1/sessions/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: String,
}

/// A router under construction plus its route table.
///
/// # Panics
/// Like axum's `Router::route`, registering the same method and path twice panics (at start,
/// never per request).
pub struct Routes<S = ()> {
    router: Router<S>,
    table: Vec<RouteSpec>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! method_fn {
    ($name:ident, $method:literal, $ctor:ident) => {
        #[doc = concat!("Registers `", $method, " path`.")]
        pub fn $name<H, T>(self, path: &str, handler: H) -> Self
        where
            H: Handler<T, S>,
            T: 'static,
        {
            self.add($method, path, $ctor(handler))
        }
    };
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    method_fn!(get, "GET", get);
    method_fn!(post, "POST", post);
    method_fn!(put, "PUT", put);
    method_fn!(patch, "PATCH", patch);
    method_fn!(delete, "DELETE", delete);

    fn add(mut self, method: &'static str, path: &str, route: MethodRouter<S>) -> Self {
        self.table.push(RouteSpec {
            method,
            path: path.to_owned(),
        });
        self.router = self.router.route(path, route);
        self
    }

    /// Adds all routes of `other` (e.g. one resource's routes).
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.table.extend(other.table);
        self.router = self.router.merge(other.router);
        self
    }

    /// Provides the handlers' state, turning `Routes<S>` into `Routes<S2>` (usually `()`).
    pub fn with_state<S2>(self, state: S) -> Routes<S2> {
        Routes {
            router: self.router.with_state(state),
            table: self.table,
        }
    }

    /// The routes registered so far, in registration order.
    pub fn table(&self) -> &[RouteSpec] {
        &self.table
    }

    /// The router and its table.
    pub fn into_parts(self) -> (Router<S>, Vec<RouteSpec>) {
        (self.router, self.table)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    #[test]
    fn records_methods_and_templates() {
        let r: Routes = Routes::new()
            .get("/v1/things", || async { "list" })
            .post("/v1/things", || async { "create" })
            .merge(Routes::new().delete("/v1/things/{id}", || async { "gone" }));
        let t: Vec<(&str, &str)> = r
            .table()
            .iter()
            .map(|s| (s.method, s.path.as_str()))
            .collect();
        assert_eq!(
            t,
            [
                ("GET", "/v1/things"),
                ("POST", "/v1/things"),
                ("DELETE", "/v1/things/{id}")
            ]
        );
    }
}
