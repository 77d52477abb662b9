//! The route table. Every route is declared once, as an [`Endpoint`]: method, path template, the
//! scope a key needs, the handler, and its documentation. The router, the per-route auth layer and
//! the OpenAPI document are all built from this one list, so the document cannot describe a route
//! that is not served, or require a different scope than the server enforces.

use axum::{
    handler::Handler,
    http::Method,
    routing::{MethodFilter, MethodRouter, on},
};

use super::AppState;
use crate::model::Scope;

/// One query-string parameter, for the document.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    /// A JSON Schema `type` (`string`, `integer`) or `string:<format>` (`string:uuid`).
    pub ty: &'static str,
    pub description: &'static str,
}

/// How a route is described in the OpenAPI document.
#[derive(Clone, Copy, Debug)]
pub struct Doc {
    pub operation_id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// The `{id}` path parameter's description, when the path has one.
    pub path_id: Option<&'static str>,
    /// Path parameters besides `{id}` (e.g. `{whitelistId}`).
    pub path_params: &'static [Param],
    pub query: &'static [Param],
    /// Request body schema (a name under `components/schemas`).
    pub body: Option<&'static str>,
    /// Success status and its body schema; `text/plain` bodies use the schema name `text`.
    pub ok: (u16, &'static str),
    /// Error statuses beyond those implied by scope, path id and body.
    pub errors: &'static [u16],
}

impl Doc {
    pub const DEFAULT: Doc = Doc {
        operation_id: "",
        tag: "",
        summary: "",
        path_id: None,
        path_params: &[],
        query: &[],
        body: None,
        ok: (200, "text"),
        errors: &[],
    };

    /// Every status a client can get from this route, sorted.
    pub fn statuses(&self, scope: Option<Scope>) -> Vec<u16> {
        let mut all = vec![self.ok.0];
        if scope.is_some() {
            all.extend([401, 403]);
        }
        if self.path_id.is_some() {
            all.push(404);
        }
        if self.body.is_some() {
            all.extend([400, 413, 422]);
        }
        if !self.query.is_empty() {
            all.extend([400, 422]);
        }
        all.extend(self.errors);
        all.sort_unstable();
        all.dedup();
        all
    }
}

pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    /// `None`: open to anyone who can reach the listener.
    pub scope: Option<Scope>,
    pub handler: MethodRouter<AppState>,
    pub doc: Doc,
}

/// A route that needs an API key with the scope [`scope_for`] assigns it.
pub fn keyed<H, T>(method: Method, path: &'static str, handler: H, doc: Doc) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let scope = scope_for(&method, path);
    endpoint(method, path, Some(scope), handler, doc)
}

/// A route open without a key (health checks, the API description).
pub fn public<H, T>(method: Method, path: &'static str, handler: H, doc: Doc) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    endpoint(method, path, None, handler, doc)
}

fn endpoint<H, T>(
    method: Method,
    path: &'static str,
    scope: Option<Scope>,
    handler: H,
    doc: Doc,
) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    // Registered for exactly the declared method, so the table and the router cannot disagree.
    let filter = MethodFilter::try_from(method.clone()).expect("a standard HTTP method");
    Endpoint {
        method,
        path,
        scope,
        handler: on(filter, handler),
        doc,
    }
}

/// The scope a route needs, by one rule: reads need `read`, changes `write`, key management
/// `admin`.
pub fn scope_for(method: &Method, path: &str) -> Scope {
    if path.starts_with("/api/keys") {
        Scope::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_method_and_key_routes_need_admin() {
        assert_eq!(scope_for(&Method::GET, "/api/databases"), Scope::Read);
        assert_eq!(scope_for(&Method::POST, "/api/databases"), Scope::Write);
        assert_eq!(
            scope_for(&Method::DELETE, "/api/databases/{id}"),
            Scope::Write
        );
        assert_eq!(scope_for(&Method::GET, "/api/keys"), Scope::Admin);
        assert_eq!(scope_for(&Method::DELETE, "/api/keys/{id}"), Scope::Admin);
    }

    #[test]
    fn statuses_include_what_scope_path_and_body_imply() {
        let doc = Doc {
            path_id: Some("id"),
            body: Some("X"),
            ok: (200, "Y"),
            errors: &[409],
            ..Doc::DEFAULT
        };
        assert_eq!(
            doc.statuses(Some(Scope::Write)),
            vec![200, 400, 401, 403, 404, 409, 413, 422]
        );
        assert_eq!(Doc::DEFAULT.statuses(None), vec![200]);
    }
}
