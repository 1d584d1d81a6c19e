//! Sign-in and cross-site protection.
//!
//! With an API token configured, the login form takes it (or the admin
//! token) and keeps it in a cookie the page's scripts cannot read
//! (`HttpOnly`), that no other site's request carries (`SameSite=Strict`),
//! sent to `/ui` only, and over HTTPS only when the request came that way.
//! The token never appears in a URL. Without a token the dashboard is as
//! open as the API.
//!
//! Every action is a POST from a form of the dashboard: it must come from
//! this origin (`Sec-Fetch-Site: same-origin`, or an `Origin` naming this
//! host) and carry the form token, a hash of the session's token that a
//! page of another origin cannot know.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::pages::layout;
use crate::{PREFIX, UiAuth, UiState};

/// The session cookie's name.
pub const COOKIE: &str = "taskflow_session";
/// The form field carrying the form token.
pub const FORM_TOKEN: &str = "form_token";

/// The session of a request that passed [`require_session`]: what its
/// forms must carry.
#[derive(Debug, Clone)]
pub struct Session {
    /// The form token.
    pub form_token: String,
    /// Whether a login is needed at all (a logout button then makes sense).
    pub signed_in: bool,
    /// Whether it may administer plugins: signed in with the admin token,
    /// or with the API token on a host without one, or on an open host.
    pub admin: bool,
}

impl Session {
    fn new(token: Option<&str>, auth: &UiAuth) -> Self {
        let admin = match (token, auth.admin_token.as_deref()) {
            (Some(token), Some(admin)) => taskflow_http::tokens_match(token, admin),
            (None, Some(_)) => false,
            (_, None) => true,
        };
        Self {
            form_token: form_token(token.unwrap_or_default()),
            signed_in: token.is_some(),
            admin,
        }
    }
}

/// The form token of a session token: a hash that names the session
/// without revealing its token, the same on every host of the fleet.
pub fn form_token(session: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"taskflow-ui-form-token\0")
        .chain_update(session.as_bytes())
        .finalize();
    hex::encode(digest)
}

/// The session token a request carries, if any.
fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| hex::decode(value).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Whether `presented` is one of the host's tokens.
fn accepted(state: &UiState, presented: &str) -> bool {
    [&state.auth.api_token, &state.auth.admin_token]
        .into_iter()
        .flatten()
        .any(|token| taskflow_http::tokens_match(presented, token))
}

/// Lets a request through when no token is configured or its session
/// cookie holds one; pages send others to the login form, data and
/// actions refuse them. Every POST must also pass [`check_same_origin`].
pub async fn require_session(
    State(state): State<UiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = match &state.auth.api_token {
        None => Session::new(None, &state.auth),
        Some(_) => match session_token(request.headers()) {
            Some(token) if accepted(&state, &token) => Session::new(Some(&token), &state.auth),
            _ => {
                if request.method() == axum::http::Method::GET
                    && !request.uri().path().contains("/api/")
                    && !request.uri().path().ends_with(".json")
                {
                    return Redirect::to(&format!("{PREFIX}/login")).into_response();
                }
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "sign in at /ui/login with the API token first",
                );
            }
        },
    };
    if request.method() == axum::http::Method::POST
        && let Err(why) = check_same_origin(request.headers())
    {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

/// Refuses a request from a page of another origin: `Sec-Fetch-Site` must
/// say `same-origin` where the browser sends it, and `Origin`, where sent,
/// must name this host (as the client addressed it: `X-Forwarded-Host`
/// behind `taskflow lb`, else `Host`).
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A browser that says where the request comes from is believed.
    match text("sec-fetch-site") {
        Some("same-origin") => return Ok(()),
        Some(_) => return Err("this action must come from a page of the dashboard itself"),
        None => {}
    }
    if let Some(origin) = text("origin") {
        let origin_host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        let host = text("x-forwarded-host")
            .and_then(|hosts| hosts.split(',').next())
            .or_else(|| text("host"))
            .map(str::trim);
        if host != Some(origin_host) {
            return Err("this action must come from a page of the dashboard itself");
        }
    }
    Ok(())
}

/// Checks the form token an action carries against its session.
pub fn check_form_token(session: &Session, presented: Option<&str>) -> Result<(), StaleForm> {
    match presented {
        Some(token) if taskflow_http::tokens_match(token, &session.form_token) => Ok(()),
        _ => Err(StaleForm),
    }
}

/// An action without its session's form token.
#[derive(Debug)]
pub struct StaleForm;

impl IntoResponse for StaleForm {
    fn into_response(self) -> Response {
        refuse(
            StatusCode::FORBIDDEN,
            "the form is stale or came from elsewhere: reload the page and try again",
        )
    }
}

/// A refusal as a short page (or JSON for the data endpoints' callers,
/// which ask for it).
fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": status.canonical_reason(), "message": message })),
    )
        .into_response()
}

/// `GET /ui/login`.
pub async fn login_page(State(state): State<UiState>) -> Response {
    if state.auth.api_token.is_none() {
        return Redirect::to(PREFIX).into_response();
    }
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, problem: Option<&str>) -> Response {
    let body = html! {
        section.login {
            h1 { "Sign in" }
            p { "This host needs its API token (" code { "TASKFLOW_API_TOKEN" } ") or its admin token." }
            @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
            form method="post" action={ (PREFIX) "/login" } {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    };
    (status, layout::page("Sign in", None, body)).into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /ui/login`: a right token sets the session cookie.
pub async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(why) = check_same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    if state.auth.api_token.is_none() {
        return Redirect::to(PREFIX).into_response();
    }
    if !accepted(&state, form.token.trim()) {
        return login_form(
            StatusCode::UNAUTHORIZED,
            Some("That is not this host's API or admin token."),
        );
    }
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={}; Path={PREFIX}; HttpOnly; SameSite=Strict{}",
        hex::encode(form.token.trim()),
        if secure { "; Secure" } else { "" }
    );
    see_other_with_cookie(PREFIX, &cookie)
}

/// `POST /ui/logout`: forgets the session cookie.
pub async fn logout(
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = check_form_token(&session, field(&form, FORM_TOKEN)) {
        return refused.into_response();
    }
    let cookie = format!("{COOKIE}=; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age=0");
    see_other_with_cookie(&format!("{PREFIX}/login"), &cookie)
}

fn see_other_with_cookie(location: &str, cookie: &str) -> Response {
    let mut response = Redirect::to(location).into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The first value of `name` in a posted form.
pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn actions_from_other_origins_are_refused() {
        assert!(check_same_origin(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(check_same_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(check_same_origin(&headers(&[("sec-fetch-site", "same-site")])).is_err());
        assert!(
            check_same_origin(&headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080")
            ]))
            .is_ok()
        );
        assert!(
            check_same_origin(&headers(&[
                ("origin", "https://evil.example"),
                ("host", "127.0.0.1:8080")
            ]))
            .is_err()
        );
        // Behind the load balancer, the host the browser addressed.
        assert!(
            check_same_origin(&headers(&[
                ("origin", "http://lb:9000"),
                ("host", "10.0.0.5:8080"),
                ("x-forwarded-host", "lb:9000")
            ]))
            .is_ok()
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let token = hex::encode("s3cret");
        let value = format!("a=b; {COOKIE}={token}; c=d");
        let mut map = HeaderMap::new();
        map.insert(
            header::COOKIE,
            HeaderValue::from_str(&value).expect("ascii"),
        );
        assert_eq!(session_token(&map).as_deref(), Some("s3cret"));
        assert_eq!(session_token(&HeaderMap::new()), None);
    }

    #[test]
    fn form_tokens_differ_by_session_and_do_not_reveal_it() {
        assert_ne!(form_token("a"), form_token("b"));
        assert!(!form_token("s3cret").contains("s3cret"));
        assert_eq!(form_token("a").len(), 64);
    }
}
