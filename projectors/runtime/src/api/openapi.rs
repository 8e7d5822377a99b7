//! `/openapi.json` for a projector's query API, from a `utoipa` description.
//!
//! A projector derives `utoipa::OpenApi` over its handlers (as `prism-command` does) and
//! merges [`router`] into its query router. The route is outside the bearer-token check,
//! like `/healthz`: the description holds no data, and clients need it to learn the API.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi;

/// The path every service serves its description at.
pub const PATH: &str = "/openapi.json";

/// Adds the `bearer` security scheme that the handlers' `security(("bearer" = []))`
/// refers to. Use as `#[openapi(modifiers(&BearerAuth))]`.
#[derive(Debug, Clone, Copy)]
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /openapi.json` answering `doc` (rendered once, here).
pub fn router(doc: &OpenApi) -> Router {
    // An `OpenApi` is plain data: rendering it cannot fail, but an empty object beats a
    // panic if it ever did.
    let body = doc.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering the OpenAPI description");
        "{}".to_owned()
    });
    Router::new().route(
        PATH,
        get(move || {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body).into_response() }
        }),
    )
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi as _;

    use super::*;

    #[utoipa::path(get, path = "/v1/things", responses((status = 200)), security(("bearer" = [])))]
    #[allow(dead_code)]
    async fn things() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(things), modifiers(&BearerAuth))]
    struct Doc;

    #[tokio::test]
    async fn the_description_is_served_as_json_with_the_bearer_scheme() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let address = listener.local_addr().expect("its address");
        let app = router(&Doc::openapi());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connects");
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream
            .write_all(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("sends");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("reads");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).expect("a body");
        let doc: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert!(doc["paths"]["/v1/things"]["get"].is_object(), "{doc}");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
