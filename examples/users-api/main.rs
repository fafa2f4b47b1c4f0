//! users-api — the application half of the example: an HTTP API whose `POST /users` writes
//! the user and its `user.created` event in one PostgreSQL transaction. The relay
//! (`outboxd run` with `[sink] kind = "redis"`) publishes the event to the Redis stream
//! `user:events`; `welcome-mailer` consumes it.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app LISTEN=127.0.0.1:8080 \
//!     cargo run --example users-api
//! curl -d '{"name":"Ada","email":"ada@example.com"}' -H 'content-type: application/json' \
//!     127.0.0.1:8080/users
//! ```
//!
//! `POST /users` → 201 with the user; `GET /users/{id}` → 200 or 404; `GET /health` → 200
//! when the database answers, else 503. Errors are JSON: `{"error": "..."}`.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// The stream the relay writes `user.created` events to (the row's `topic`).
const TOPIC: &str = "user:events";
/// The longest name taken, in characters.
const MAX_NAME: usize = 200;
/// The longest email address taken (RFC 5321's limit on a path), in characters.
const MAX_EMAIL: usize = 254;

#[derive(Deserialize)]
struct NewUser {
    name: String,
    email: String,
}

/// A user as stored, returned and published (the event's payload).
#[derive(Serialize, sqlx::FromRow)]
struct User {
    id: Uuid,
    name: String,
    email: String,
    created_at: DateTime<Utc>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let database_url = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("set DATABASE_URL to the PostgreSQL URL of the users"))?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());

    // Lazy: the API serves while the database is down — /health says 503, requests fail
    // fast (a short acquire timeout) — and works as soon as it is back.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(&database_url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
    tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut delay = Duration::from_millis(200);
            while let Err(e) = create_tables(&pool).await {
                tracing::warn!(error = %e, "Cannot create the tables yet; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    });

    let app = Router::new()
        .route("/users", post(create_user))
        .route("/users/{id}", get(get_user))
        .route("/health", get(health))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (LISTEN): {e}"))?;
    tracing::info!(%listen, "Serving.");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

/// The outbox tables (outboxd's migrations: an application may run them itself) and the
/// API's own `users` table.
async fn create_tables(pool: &PgPool) -> anyhow::Result<()> {
    outboxd::MIGRATOR.run(pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
             id         uuid        PRIMARY KEY,
             name       text        NOT NULL,
             email      text        NOT NULL UNIQUE,
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    // Ada@example.com and ada@example.com are one mailbox in practice: one user, one mail.
    sqlx::query("CREATE UNIQUE INDEX IF NOT EXISTS users_email_key_ci ON users (lower(email))")
        .execute(pool)
        .await?;
    Ok(())
}

async fn create_user(
    State(pool): State<PgPool>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], Json<User>), ApiError> {
    // axum's own rejections (not JSON, wrong content type, missing field) keep their
    // status (400, 415, 422); only the body becomes JSON like every other error here.
    let Json(new) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let name = new.name.trim();
    let email = new.email.trim();
    let invalid = |why: String| Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, why));
    if name.is_empty() {
        return invalid("name must not be empty".into());
    }
    // PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database.
    if name.contains('\0') || email.contains('\0') {
        return invalid("name and email must not contain NUL characters".into());
    }
    if name.chars().count() > MAX_NAME {
        return invalid(format!("name is longer than {MAX_NAME} characters"));
    }
    if email.chars().count() > MAX_EMAIL {
        return invalid(format!("email is longer than {MAX_EMAIL} characters"));
    }
    if !email_address::EmailAddress::is_valid(email) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("email {email:?} is not a valid address"),
        ));
    }

    // The point of the pattern: the user and its event commit together or not at all.
    // No dual write: if the transaction commits the relay will publish the event, if it
    // does not there is neither a user nor an event.
    let mut tx = pool.begin().await?;
    let user: User = sqlx::query_as(
        "INSERT INTO users (id, name, email) VALUES ($1, $2, $3) \
         RETURNING id, name, email, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(email)
    .fetch_one(&mut *tx)
    .await?;
    let event = outboxd::NewEvent::builder("user", user.id.to_string())
        .event_type("user.created")
        .topic(TOPIC)
        .json(&user)
        .build()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    outboxd::enqueue(&mut *tx, &event).await?;
    tx.commit().await?;

    tracing::info!(user_id = %user.id, "Created user.");
    let location = format!("/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(user),
    ))
}

async fn get_user(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no user {id:?}"));
    // Not a UUID: no such user either.
    let uuid = id.parse::<Uuid>().map_err(|_| not_found())?;
    sqlx::query_as("SELECT id, name, email, created_at FROM users WHERE id = $1")
        .bind(uuid)
        .fetch_optional(&pool)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}

async fn health(State(pool): State<PgPool>) -> Response {
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&pool),
    );
    // The database's own words (host names, user names, server versions) go to the log,
    // not to whoever asks.
    match answer.await {
        Ok(Ok(_)) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Health check: the database refused.");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable".into(),
            )
            .into_response()
        }
        Err(_) => {
            tracing::warn!("Health check: the database did not answer within 2 s.");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable".into(),
            )
            .into_response()
        }
    }
}

/// An error answer: a status and `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        if let Some(db) = e.as_database_error()
            && db.is_unique_violation()
        {
            // The only unique column a client chooses is the email.
            return ApiError(StatusCode::CONFLICT, "a user with this email exists".into());
        }
        tracing::warn!(error = %e, "Database error.");
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable, try again".into(),
            ),
            _ => ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
