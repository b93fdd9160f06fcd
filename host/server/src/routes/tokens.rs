//! `/v1/tokens`: minting, listing and revoking API tokens (admin only).

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::{Scope, new_token};
use crate::body::read_body;
use crate::error::ApiError;
use crate::state::AppState;

/// The token routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    scope: Scope,
    #[serde(default)]
    name: String,
}

/// Creates a token; the answer holds its secret, shown only this once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = crate::openapi::TokenRequest,
    responses(
        (status = 201, description = "Created", body = crate::openapi::Token),
        (status = 400, description = "Invalid input", body = crate::openapi::Error),
        crate::openapi::AuthErrors))]
async fn create(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, 64 * 1024).await?;
    let wanted: CreateToken = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(
            "invalid_token_request",
            format!(
                "expected {{\"scope\": \"{}\", \"name\": \"...\"}}: {error}",
                Scope::ALL.map(Scope::as_str).join("|")
            ),
        )
    })?;
    let token = new_token().map_err(ApiError::internal)?;
    let record = state
        .auth
        .create(&token, wanted.scope, &wanted.name)
        .await
        .map_err(storage_error)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": record.id,
            "scope": record.scope,
            "name": record.name,
            "created": record.created,
            "token": token,
        })),
    )
        .into_response())
}

/// Every token, without secrets.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses(
        (status = 200, description = "Tokens", body = crate::openapi::TokenList),
        crate::openapi::AuthErrors))]
async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tokens = state.auth.list().map_err(ApiError::internal)?;
    Ok(axum::Json(json!({"tokens": tokens})).into_response())
}

/// Revokes token `id`.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, description = "Revoked", body = crate::openapi::Revoked),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such token", body = crate::openapi::Error)))]
async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !state.auth.revoke(&id).await.map_err(storage_error)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "token_not_found",
            format!("token {id:?} not found"),
        ));
    }
    Ok(axum::Json(json!({"revoked": id})).into_response())
}

/// A store failure as its own answer (503 when storage or the cluster is
/// unavailable), anything else as a 500.
fn storage_error(error: anyhow::Error) -> ApiError {
    match error.downcast::<sluice_store::StoreError>() {
        Ok(error) => error.into(),
        Err(error) => ApiError::internal(error),
    }
}
