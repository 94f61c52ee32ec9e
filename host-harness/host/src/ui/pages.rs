//! The admin page's HTML (maud: escaped by construction). Every form carries the session's
//! CSRF token; no page ever holds a secret's value (secret fields are empty, with "set"
//! shown beside them).

use maud::{DOCTYPE, Markup, html};

use crate::policy::PolicyConfig;
use crate::status::{MappingCountsView, StatusView, UsersFilter, UsersPageView};

/// An integration's status as the list and the form show it: the product guide's ✓ / ✗ /
/// "No status".
pub(super) enum Mark {
    /// Works (`ok`, or `degraded`: working on the last good read, with its code).
    Ok { code: Option<String>, hint: Option<String> },
    /// Does not work: the code and what to do.
    Bad { code: String, hint: String },
    /// Not known yet (starting, or it did not answer).
    None,
}

impl Mark {
    pub(super) fn of(s: Option<&StatusView>) -> Mark {
        let Some(s) = s else { return Mark::None };
        match s.state.as_str() {
            "ok" => Mark::Ok { code: None, hint: None },
            "degraded" => Mark::Ok { code: s.code.clone(), hint: s.hint.clone() },
            "missing-credentials" => {
                Mark::Bad { code: "Missing credentials".into(), hint: format!("Enter: {}.", s.missing.join(", ")) }
            }
            "error" => Mark::Bad {
                code: s.code.clone().unwrap_or_else(|| "error".into()),
                hint: s.hint.clone().unwrap_or_default(),
            },
            _ => Mark::None,
        }
    }

    /// The mark of a status as the API shows it (an integration another host runs).
    pub(super) fn of_json(s: &serde_json::Value) -> Mark {
        let text = |k: &str| s[k].as_str().map(str::to_string);
        match s["state"].as_str() {
            Some("ok") => Mark::Ok { code: None, hint: None },
            Some("degraded") => Mark::Ok { code: text("code"), hint: text("hint") },
            Some("missing-credentials") => {
                let missing: Vec<&str> =
                    s["missing"].as_array().map(|a| a.iter().filter_map(|m| m.as_str()).collect()).unwrap_or_default();
                Mark::Bad { code: "Missing credentials".into(), hint: format!("Enter: {}.", missing.join(", ")) }
            }
            Some("error") => Mark::Bad {
                code: text("code").unwrap_or_else(|| "error".into()),
                hint: text("hint").unwrap_or_default(),
            },
            _ => Mark::None,
        }
    }

    fn render(&self) -> Markup {
        match self {
            Mark::Ok { code: None, .. } => html! { span.ok title="Ok" { "✓" } " Ok" },
            Mark::Ok { code: Some(c), hint } => html! {
                span.ok title="Ok" { "✓" } " Ok " span.muted { "(" (c) ": " (hint.as_deref().unwrap_or("")) ")" }
            },
            Mark::Bad { code, hint } => {
                html! { span.bad title="Error" { "✗" } " " strong { (code) } " " span.hint { (hint) } }
            }
            Mark::None => html! { span.muted { "No status" } },
        }
    }

    fn short(&self) -> Markup {
        match self {
            Mark::Ok { .. } => html! { span.ok title="Ok" { "✓" } },
            Mark::Bad { code, .. } => html! { span.bad title=(code) { "✗" } },
            Mark::None => html! { span.muted { "No status" } },
        }
    }
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – Teams presence" }
                link rel="stylesheet" href="/ui/style.css";
                script src="/ui/app.js" defer {}
            }
            body { (body) }
        }
    }
}

pub(super) fn login(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        html! {
            h1 { "Teams presence: sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/ui/login" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="off" autofocus;
                p { button type="submit" { "Sign in" } }
            }
        },
    )
}

fn nav(csrf: &str) -> Markup {
    html! {
        nav {
            a href="/ui" { "Integrations" }
            " · "
            form method="post" action="/ui/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Sign out" }
            }
        }
    }
}

/// A row of the integration list.
pub(super) struct Row {
    pub(super) name: String,
    pub(super) display_name: String,
    pub(super) users: Option<u32>,
    pub(super) mark: Mark,
}

pub(super) fn list(rows: &[Row], notice: Option<&str>, csrf: &str) -> Markup {
    layout(
        "Integrations",
        html! {
            (nav(csrf))
            h1 { "Teams Presence integration" }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            table #integrations {
                thead { tr { th { "Name ▲" } th { "Type" } th { "Users" } th { "Status" } } }
                tbody {
                    @for r in rows {
                        tr data-name=(r.name) {
                            td { a href={ "/ui/integrations/" (r.name) } { (r.display_name) } }
                            td { "MS Teams Presence integration" }
                            td.users { @if let Some(u) = r.users { (u) } @else { "–" } }
                            td.status { (r.mark.short()) }
                        }
                    }
                }
            }
            p { a #add href="/ui/integrations/new" { "Add integration" } }
        },
    )
}

/// What the form shows.
pub(super) struct FormView {
    /// `None`: a new integration.
    pub(super) name: Option<String>,
    pub(super) display_name: String,
    pub(super) tenant_id: String,
    pub(super) client_id: String,
    pub(super) secret_set: bool,
    pub(super) secret_expires: String,
    pub(super) push_line_status: bool,
    /// "Manual client setup".
    pub(super) manual: bool,
    /// The host has an app of its own (the automated setup can be chosen).
    pub(super) automated_available: bool,
    /// Where "Grant admin consent" goes (automated setup).
    pub(super) consent_url: Option<String>,
    /// Username, and whether a password is set.
    pub(super) users: Vec<(String, bool)>,
    pub(super) mark: Option<Mark>,
    /// The switchboard's users by outcome.
    pub(super) counts: Option<MappingCountsView>,
    /// A refused save: the field and why.
    pub(super) error: Option<String>,
    pub(super) notice: Option<String>,
    /// The sync policy as the form shows it.
    pub(super) policy: PolicyConfig,
    /// How the policy applies now, and polling (from the status).
    pub(super) policy_status: Option<crate::status::PolicyView>,
}

/// "Sync policy: ..." — how the policy applies now, and the users polled.
fn policy_line(p: &crate::status::PolicyView) -> Markup {
    html! {
        p #policy-status {
            "Sync policy: " (p.in_scope) " in scope"
            @if p.outside_groups > 0 { ", " (p.outside_groups) " outside the groups" }
            @if p.excluded > 0 { ", " (p.excluded) " excluded" }
            @if p.teams_to_switchboard_only > 0 { ", " (p.teams_to_switchboard_only) " Teams to switchboard only" }
            @if !p.within_working_hours { "; outside working hours: calls are not pushed now" }
            @if let Some(h) = &p.groups_hint { span.bad { "; groups not read: " (h) } }
            @if !p.unknown_entries.is_empty() { span.bad { "; naming nobody: " (p.unknown_entries.join(", ")) } }
            @if p.polled_users > 0 {
                "; " (p.polled_users) " polled every " (format!("{:.1}", p.poll_interval_ms as f64 / 1000.0)) " s"
            }
            "."
        }
    }
}

const WEEKDAYS: [(&str, &str); 7] =
    [("mon", "Mon"), ("tue", "Tue"), ("wed", "Wed"), ("thu", "Thu"), ("fri", "Fri"), ("sat", "Sat"), ("sun", "Sun")];

/// The "Sync policy" part of the form: who syncs, which way, and when calls are pushed.
fn policy_fields(p: &PolicyConfig) -> Markup {
    let hours = p.working_hours.as_ref();
    let day_on = |d: &str| hours.is_some_and(|w| w.days.iter().any(|x| x.eq_ignore_ascii_case(d)));
    html! {
        h2 { "Sync policy" }
        label for="policy_groups" { "Only members of these Entra groups " span.muted { "(object ids, one per line; nested groups count; empty: everyone; needs GroupMember.Read.All)" } }
        textarea #policy_groups name="policy_groups" rows="2" { (p.groups.join("\n")) }
        label for="policy_excluded" { "Users who do not sync " span.muted { "(switchboard user id, Microsoft user id or email, one per line)" } }
        textarea #policy_excluded name="policy_excluded" rows="2" { (p.excluded_users.join("\n")) }
        label for="policy_teams_only" { "Users whose calls are not shown in Teams " span.muted { "(Teams to switchboard only; one per line)" } }
        textarea #policy_teams_only name="policy_teams_only" rows="2" { (p.teams_to_switchboard_only.join("\n")) }
        label for="policy_call_replaces" { "A call may replace " span.muted { "(Teams availabilities, comma-separated; empty: Available, Busy)" } }
        input #policy_call_replaces type="text" name="policy_call_replaces" value=(p.call_replaces.join(", ")) placeholder="Available, Busy";
        label.toggle {
            input #policy_dnd type="checkbox" name="policy_dnd" checked[p.do_not_disturb_in_call];
            " Show calls as Do not disturb " span.muted { "(Teams silences notifications during calls)" }
        }
        fieldset #working-hours {
            legend { "Working hours " span.muted { "(calls are pushed only within them; no time zone: at any hour)" } }
            label for="policy_time_zone" { "Time zone " span.muted { "(IANA, e.g. Europe/Copenhagen)" } }
            input #policy_time_zone type="text" name="policy_time_zone" value=(hours.map_or("", |w| w.time_zone.as_str()));
            p.days {
                @for (value, label) in WEEKDAYS {
                    label.toggle { input type="checkbox" name="policy_days" value=(value) checked[day_on(value)]; " " (label) " " }
                }
            }
            label for="policy_start" { "From" }
            input #policy_start type="text" name="policy_start" placeholder="08:00" value=(hours.map_or("", |w| w.start.as_str()));
            label for="policy_end" { "To" }
            input #policy_end type="text" name="policy_end" placeholder="17:00" value=(hours.map_or("", |w| w.end.as_str()));
        }
    }
}

fn user_row(username: &str, password_set: bool, sign_in: Option<&str>) -> Markup {
    html! {
        tr {
            td { input type="text" name="username" value=(username) aria-label="Username"; }
            td {
                input type="password" name="password" autocomplete="new-password" aria-label="Password"
                    placeholder=(if password_set { "set (leave empty to keep)" } else { "" });
            }
            td {
                button.remove-user type="button" title="Remove" { "✕" }
                @if let Some(action) = sign_in {
                    " " button.sign-in type="submit" formaction=(action) name="user" value=(username)
                        title="Sign in with a code, for a user who must use multi-factor authentication" { "Sign in (MFA)" }
                }
            }
        }
    }
}

pub(super) fn form(v: &FormView, csrf: &str) -> Markup {
    let action = match &v.name {
        Some(n) => format!("/ui/integrations/{n}"),
        None => "/ui/integrations/new".to_string(),
    };
    let title = if v.display_name.is_empty() { "New integration".to_string() } else { v.display_name.clone() };
    layout(
        &title,
        html! {
            (nav(csrf))
            h1 { (title) }
            @if let Some(e) = &v.error { p.error role="alert" { (e) } }
            @if let Some(n) = &v.notice { p.notice role="status" { (n) } }
            form #integration method="post" action=(action) autocomplete="off" {
                input type="hidden" name="csrf" value=(csrf);
                label for="display_name" { "Name" }
                input #display_name type="text" name="display_name" value=(v.display_name) required;
                @if let Some(n) = &v.name {
                    p.muted { "Integration id: " code { (n) } }
                } @else {
                    label for="name" { "Integration id " span.muted { "(a-z, 0-9, '-'; from the name when empty)" } }
                    input #name type="text" name="name" value="";
                }
                label.toggle {
                    input #push_line_status type="checkbox" name="push_line_status" checked[v.push_line_status];
                    " Push line status to Teams"
                }
                label.toggle {
                    @if v.automated_available {
                        input #manual type="checkbox" name="manual_client_setup" checked[v.manual];
                        " Manual client setup "
                        span.muted { "(off: this service's own application; on Save you are sent to Microsoft to consent for your organization)" }
                    } @else {
                        input #manual type="checkbox" name="manual_client_setup" checked disabled;
                        " Manual client setup "
                        span.muted { "(this host has no application of its own for the automated setup)" }
                    }
                }
                @if let Some(u) = &v.consent_url {
                    p { a #consent href=(u) { "Grant admin consent" } span.muted { " (an administrator of the tenant consents for the organization)" } }
                }
                label for="tenant_id" { "Tenant ID" }
                input #tenant_id type="text" name="tenant_id" value=(v.tenant_id);
                label for="client_id" { "Client ID " @if v.automated_available { span.muted { "(manual client setup only)" } } }
                input #client_id type="text" name="client_id" value=(v.client_id);
                label for="client_secret" { "Client Secret" }
                input #client_secret type="password" name="client_secret" autocomplete="new-password"
                    placeholder=(if v.secret_set { "set (leave empty to keep)" } else { "" });
                label for="client_secret_expires" { "Client Secret expires " span.muted { "(optional; the status warns 30 days ahead)" } }
                input #client_secret_expires type="date" name="client_secret_expires" value=(v.secret_expires);
                @if let Some(m) = &v.mark { p #status { "Status " (m.render()) } }
                @if let Some(p) = &v.policy_status { (policy_line(p)) }
                @if let (Some(n), Some(c)) = (&v.name, &v.counts) {
                    p #counts { (counts_line(c)) " " a #users-link href={ "/ui/integrations/" (n) "/users" } { "Teams Presence users" } }
                }
                h2 { "Integration users " span.info title="Each integration user holds one subscription of up to 650 users: add one per 650 users" { "i" } }
                table {
                    thead { tr { th { "Username" } th { "Password" } th { button.add-user type="button" title="Add" { "+" } } } }
                    tbody #users {
                        @for (u, set) in &v.users {
                            (user_row(u, *set, v.name.as_ref().map(|n| format!("/ui/integrations/{n}/sign-in")).as_deref()))
                        }
                        @if v.users.is_empty() { (user_row("", false, None)) }
                    }
                }
                template #user-row { (user_row("", false, None)) }
                (policy_fields(&v.policy))
                p.actions {
                    button #save type="submit" name="action" value="save" { "Save" }
                    @if v.name.is_some() {
                        button #sync type="submit" name="action" value="sync-now" { "Sync now" }
                        button #delete type="submit" name="action" value="delete" { "Delete" }
                    }
                }
            }
        },
    )
}

pub(super) fn confirm_delete(name: &str, display_name: &str, csrf: &str) -> Markup {
    layout(
        "Delete",
        html! {
            (nav(csrf))
            h1 { "Delete " (display_name) "?" }
            p {
                "Its users stop showing Teams presence in the switchboard, the \"In a call\" it set in Teams is \
                 cleared, its subscriptions at Microsoft are deleted, and its settings and state are removed."
            }
            form method="post" action={ "/ui/integrations/" (name) } {
                input type="hidden" name="csrf" value=(csrf);
                p.actions {
                    button #confirm-delete type="submit" name="action" value="delete-confirmed" { "Delete" }
                    a href={ "/ui/integrations/" (name) } { "Cancel" }
                }
            }
        },
    )
}

/// "N of M switchboard users synced (by ...); not synced: ..." — what explains "OK, but 0 users".
pub(super) fn counts_line(c: &MappingCountsView) -> Markup {
    let by: Vec<String> =
        [("mail", c.by_mail), ("alias", c.by_alias), ("UPN", c.by_upn), ("explicit mapping", c.by_override)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(w, n)| format!("{w} {n}"))
            .collect();
    let not: Vec<String> = [
        ("no email address", c.no_address),
        ("no Microsoft user has the address", c.no_match),
        ("address in a conflict", c.conflict),
        ("explicit mapping names nobody", c.unresolved_override),
        ("Microsoft's directory not read (see the status)", c.directory_not_read),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(w, n)| format!("{w}: {n}"))
    .collect();
    html! {
        span { (c.mapped) " of " (c.switchboard_users) " switchboard users synced" }
        @if !by.is_empty() { " (by " (by.join(", ")) ")" }
        @if !not.is_empty() { span.bad { "; not synced: " (not.join("; ")) } }
        @if c.uncovered > 0 { "; " (c.uncovered) " polled " span.muted { "(no subscription covers them: an integration user per 650 users shows them within seconds)" } }
        "."
    }
}

fn filter_name(f: UsersFilter) -> &'static str {
    match f {
        UsersFilter::All => "all",
        UsersFilter::Unmatched => "unmatched",
        UsersFilter::Uncovered => "uncovered",
        UsersFilter::Conflicts => "conflicts",
    }
}

/// What the users page was asked for.
pub(super) struct UsersAsk<'a> {
    pub(super) search: &'a str,
    pub(super) filter: UsersFilter,
    pub(super) page: u32,
    pub(super) per_page: u32,
}

pub(super) fn users(
    name: &str,
    display_name: &str,
    list: &UsersPageView,
    counts: &MappingCountsView,
    ask: &UsersAsk<'_>,
    csrf: &str,
) -> Markup {
    let pages = list.total.div_ceil(ask.per_page).max(1);
    let link = |filter: UsersFilter, page: u32| {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("search", ask.search)
            .append_pair("filter", filter_name(filter))
            .append_pair("page", &page.to_string())
            .finish();
        format!("/ui/integrations/{name}/users?{q}")
    };
    layout(
        "Teams Presence users",
        html! {
            (nav(csrf))
            h1 { "Teams Presence users: " a href={ "/ui/integrations/" (name) } { (display_name) } }
            p #counts { (counts_line(counts)) }
            form method="get" action={ "/ui/integrations/" (name) "/users" } {
                input type="hidden" name="filter" value=(filter_name(ask.filter));
                input #search type="text" name="search" value=(ask.search) placeholder="Name, address or id" aria-label="Search";
                " " button #search-button type="submit" { "Search" }
            }
            p.filters {
                @for f in [UsersFilter::All, UsersFilter::Unmatched, UsersFilter::Uncovered, UsersFilter::Conflicts] {
                    @if f == ask.filter { strong { (filter_name(f)) } } @else { a.filter href=(link(f, 1)) { (filter_name(f)) } }
                    " "
                }
            }
            table #user-list {
                thead { tr { th { "Switchboard user" } th { "Email" } th { "Microsoft user" } th { "Matched by" } th { "Presence" } th { "Subscription" } } }
                tbody {
                    @for r in &list.rows {
                        tr data-id=(r.switchboard_user_id) {
                            td { (r.name) br; span.muted { (r.switchboard_user_id) @if !r.active { " (passive)" } } }
                            td { (r.emails.join(", ")) }
                            td.ms { @if let Some(m) = &r.microsoft_user { (m) } @else { span.bad { "–" } } }
                            td.how {
                                @if let Some(m) = &r.matched_by { (m) }
                                @if let Some(u) = &r.unmatched { span.bad { (u) } }
                                @if let Some(c) = &r.conflict { br; span.muted { "conflict: " (c) } }
                            }
                            td { @if let Some((a, act)) = &r.presence { (a) " / " (act) } }
                            td { @if let Some(u) = &r.integration_user { (u) } @else if r.microsoft_user_id.is_some() { span.muted title="No subscription covers this user: its presence is polled" { "polled" } } }
                        }
                    }
                }
            }
            p #paging {
                (list.total) @if list.total == 1 { " user" } @else { " users" } " · page " (ask.page) " of " (pages) " "
                @if ask.page > 1 { a #prev href=(link(ask.filter, ask.page - 1)) { "‹ previous" } " " }
                @if ask.page < pages { a #next href=(link(ask.filter, ask.page + 1)) { "next ›" } }
            }
        },
    )
}

/// Microsoft's answer to an admin consent: granted, or refused with the code and what to do.
pub(super) fn consent(integration: Option<(&str, &str)>, outcome: Result<(), (String, String)>) -> Markup {
    layout(
        "Admin consent",
        html! {
            h1 { "Admin consent" @if let Some((_, d)) = integration { ": " (d) } }
            @match &outcome {
                Ok(()) => p #consent-result .notice role="status" { span.ok { "✓" } " Admin consent granted: the integration signs in now." },
                Err((code, hint)) => p #consent-result .error role="alert" { span.bad { "✗" } " " strong { (code) } " " (hint) },
            }
            @if let Some((n, _)) = integration {
                p { a #continue href={ "/ui/integrations/" (n) } { "Continue to the integration" } }
            } @else {
                p { a #continue href="/ui" { "Continue" } }
            }
        },
    )
}

/// A device code sign-in: the code to enter and where, or how it ended.
pub(super) fn sign_in(name: &str, user: &str, state: &crate::signin::SignIn, csrf: &str) -> Markup {
    use crate::signin::SignIn;
    layout(
        "Sign in",
        html! {
            (nav(csrf))
            h1 { "Sign in " (user) }
            @match state {
                SignIn::Pending { user_code, verification_uri, .. } => {
                    p { "On any device, open " a #verification href=(verification_uri) target="_blank" rel="noopener noreferrer" { (verification_uri) }
                        ", enter the code below and sign in as " strong { (user) } " (with its second factor)." }
                    p #user-code .notice { code { (user_code) } }
                    p { a #check href={ "/ui/integrations/" (name) "/sign-in?user=" (user) } { "Check again" } span.muted { " (the code is valid for 15 minutes)" } }
                }
                SignIn::SignedIn => p #sign-in-result .notice role="status" { span.ok { "✓" } " Signed in: the integration uses this user now." },
                SignIn::Failed { code, detail } => p #sign-in-result .error role="alert" { span.bad { "✗" } " " strong { (code) } " " (detail) },
            }
            p { a #continue href={ "/ui/integrations/" (name) } { "Back to the integration" } }
        },
    )
}
