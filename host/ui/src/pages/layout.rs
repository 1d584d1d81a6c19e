//! The frame of every page, and the small pieces pages share.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use taskflow_model::task::TaskStatus;

use crate::PREFIX;
use crate::auth::{FORM_TOKEN, Session};

/// A whole page: head with the embedded assets, navigation, `body`.
pub fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    page_with(title, session, false, body)
}

/// [`page`] that reloads itself every two seconds (a task that runs).
pub fn page_with(title: &str, session: Option<&Session>, live: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if live { meta http-equiv="refresh" content="2"; }
                title { (title) " · TaskFlow" }
                link rel="stylesheet" href={ (PREFIX) "/assets/style.css" };
                script src={ (PREFIX) "/assets/app.js" } defer {}
            }
            body {
                header {
                    a.brand href=(PREFIX) { "TaskFlow" }
                    @if let Some(session) = session {
                        nav {
                            a href=(PREFIX) { "Overview" }
                            a href={ (PREFIX) "/tasks" } { "Tasks" }
                            a href={ (PREFIX) "/submit" } { "Submit" }
                            a href={ (PREFIX) "/plugins" } { "Plugins" }
                        }
                        @if session.signed_in {
                            form.logout method="post" action={ (PREFIX) "/logout" } {
                                (form_token(session))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden field every action's form carries.
pub fn form_token(session: &Session) -> Markup {
    html! { input type="hidden" name=(FORM_TOKEN) value=(session.form_token); }
}

/// A status as a coloured label.
pub fn status(status: TaskStatus) -> Markup {
    html! { span class={ "status status-" (status.as_str()) } { (status.as_str()) } }
}

/// A time, readable, with the exact value in `datetime`.
pub fn time(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S%.3f")) }
    }
}

/// An optional time, or a dash.
pub fn maybe_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { "–" },
    }
}

/// The first 12 characters of a digest, the whole in a tooltip.
pub fn digest(digest: &str) -> Markup {
    html! { code title=(digest) { (digest.chars().take(12).collect::<String>()) } }
}
