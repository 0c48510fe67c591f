//! The agent settings of a `[[resources]]` block: which keys belong to which kind of agent, the
//! templates of `http` agents (compiled here, without I/O), and the resolved [`AgentSpec`] and
//! [`AgentTimings`]. Checked once per block, so a block of 5,000 cameras compiles its templates
//! once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::decode::{Block, closest};
use super::diag::Severity;
use super::file::ResourceBlock;
use super::locate::{Issue, KeyPath, Point};
use super::model::{
    AGENT_VARIABLES, AgentKind, AgentSpec, AgentTimings, Kind, OP_VARIABLES, Standby,
};

/// The minijinja environment agent templates are checked and rendered in: an undefined variable
/// is an error, and nothing is HTML-escaped.
pub fn template_environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// Every problem with the agent settings of `[[resources]]` block number `block`.
pub(crate) fn check(block: usize, raw: &Block<ResourceBlock>) -> Vec<Issue> {
    let mut c = Checker {
        path: KeyPath::root().key("resources").index(block),
        raw,
        issues: Vec::new(),
    };
    c.run();
    c.issues
}

struct Checker<'a> {
    path: KeyPath,
    raw: &'a Block<ResourceBlock>,
    issues: Vec<Issue>,
}

impl Checker<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(Issue::error(&self.path.key(key), message));
    }

    /// Whether `key` is usable: it decoded (an error in it is reported already).
    fn ok(&self, key: &str) -> bool {
        !self.raw.broken.has(key)
    }

    fn run(&mut self) {
        let b = &self.raw.value;
        if self.ok("timeout") && b.timeout.is_zero() {
            self.error("timeout", "must be greater than zero");
        }
        if self.ok("merge_timeout") && b.merge_timeout.is_zero() {
            self.error("merge_timeout", "must be greater than zero");
        }
        if b.ready_timeout.is_some_and(|t| t.is_zero()) {
            self.error(
                "ready_timeout",
                "must be greater than zero; leave it out to take a successful start as ready",
            );
        }
        if !self.ok("agent") {
            // Which keys belong here is unknown.
            return;
        }
        let kind = b.agent;
        let set = [
            ("activation", AgentKind::Simulated, b.activation.is_some()),
            ("fail", AgentKind::Simulated, b.fail.is_some()),
            ("command", AgentKind::Exec, b.command.is_some()),
            ("url", AgentKind::Http, b.url.is_some()),
            ("method", AgentKind::Http, b.method.is_some()),
            ("body", AgentKind::Http, b.body.is_some()),
            ("headers", AgentKind::Http, b.headers.is_some()),
            ("standby_url", AgentKind::Http, b.standby_url.is_some()),
            ("merge_url", AgentKind::Http, b.merge_url.is_some()),
        ];
        for (key, owner, present) in set {
            if present && owner != kind {
                self.error(
                    key,
                    format!(
                        "only for {} agents; this resource's agent is \"{}\"",
                        owner.as_str(),
                        kind.as_str()
                    ),
                );
            }
        }
        match kind {
            AgentKind::Simulated => self.simulated(),
            AgentKind::Exec => self.exec(),
            AgentKind::Http => self.http(),
        }
    }

    fn simulated(&mut self) {
        let b = &self.raw.value;
        let activation = b.activation.unwrap_or(AgentSpec::DEFAULT_ACTIVATION);
        if self.ok("timeout")
            && self.ok("activation")
            && !b.timeout.is_zero()
            && activation >= b.timeout
        {
            let key = if b.activation.is_some() {
                "activation"
            } else {
                "timeout"
            };
            self.issues.push(Issue::warning(
                &self.path.key(key),
                format!(
                    "activation ({}) is not shorter than timeout ({}): every start times out",
                    show(activation),
                    show(b.timeout)
                ),
            ));
        }
    }

    fn exec(&mut self) {
        match &self.raw.value.command {
            None if self.ok("command") => self.error(
                "agent",
                "an exec agent needs `command`: the program to run as `COMMAND start|stop|monitor`",
            ),
            Some(c) if c.as_os_str().is_empty() => self.error("command", "must not be empty"),
            _ => {}
        }
    }

    fn http(&mut self) {
        let b = &self.raw.value;
        match &b.url {
            None if self.ok("url") => self.error(
                "agent",
                "an http agent needs `url`: the template of the request's URL",
            ),
            Some(url) if self.template("url", url) => self.url(url),
            _ => {}
        }
        for (key, url) in [("standby_url", &b.standby_url), ("merge_url", &b.merge_url)] {
            if let Some(url) = url
                && self.template(key, url)
            {
                self.url_at(key, url);
            }
        }
        if let Some(body) = &b.body {
            self.template("body", body);
        }
        if let Some(method) = &b.method {
            self.method(method);
        }
        for (name, value) in b.headers.iter().flatten() {
            let at = self.path.key("headers").key(name);
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.issues.push(Issue::new(
                    Severity::Error,
                    &at,
                    Point::Key,
                    format!("\"{name}\" is not a valid header name"),
                ));
            } else if reqwest::header::HeaderValue::from_str(value).is_err() {
                self.issues.push(Issue::error(
                    &at,
                    "not a valid header value: no control characters or line breaks",
                ));
            }
        }
    }

    /// Compiles the template at `key`; its variables must be agent variables. Returns whether
    /// it is good.
    fn template(&mut self, key: &str, source: &str) -> bool {
        let env = template_environment();
        let template = match env.template_from_str(source) {
            Ok(t) => t,
            Err(e) => {
                self.error(
                    key,
                    format!("invalid template: {}", template_error(&e, source)),
                );
                return false;
            }
        };
        let globals: Vec<&str> = env.globals().map(|(name, _)| name).collect();
        let params = &self.raw.value.params;
        let mut unknown_params: Vec<String> = template
            .undeclared_variables(true)
            .into_iter()
            .filter_map(|v| v.strip_prefix("params.").map(str::to_string))
            .filter(|p| !params.contains_key(p))
            .collect();
        unknown_params.sort();
        for p in &unknown_params {
            let names: Vec<&str> = params.keys().map(String::as_str).collect();
            let message = match closest(p, &names) {
                Some(c) => format!("unknown param `params.{p}`; did you mean `params.{c}`?"),
                None if names.is_empty() => {
                    format!("unknown param `params.{p}`: this resource has no params")
                }
                None => format!(
                    "unknown param `params.{p}`; this resource's params are {}",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.error(key, message);
        }
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| {
                !AGENT_VARIABLES.contains(&v.as_str())
                    && !OP_VARIABLES.contains(&v.as_str())
                    && v != PARAMS_VARIABLE
                    && !globals.contains(&v.as_str())
            })
            .collect();
        unknown.sort();
        for v in &unknown {
            let message = match closest(v, &AGENT_VARIABLES) {
                Some(c) => format!("unknown template variable `{v}`; did you mean `{c}`?"),
                None => format!(
                    "unknown template variable `{v}`; agents see {}",
                    AGENT_VARIABLES.map(|v| format!("`{v}`")).join(", ")
                ),
            };
            self.error(key, message);
        }
        unknown.is_empty() && unknown_params.is_empty()
    }

    /// `url` rendered with sample values must be an `http://` URL.
    fn url(&mut self, source: &str) {
        self.url_at("url", source);
    }

    /// The URL template at `key` rendered with sample values must be an `http://` URL.
    fn url_at(&mut self, key: &str, source: &str) {
        let params: BTreeMap<String, String> = self
            .raw
            .value
            .params
            .iter()
            .map(|(name, value)| (name.clone(), sample_param(&value.0)))
            .collect();
        let mut sample: BTreeMap<&str, minijinja::Value> = AGENT_VARIABLES
            .iter()
            .map(|&v| {
                let value = match v {
                    "epoch" => minijinja::Value::from(1),
                    "address" => minijinja::Value::from("127.0.0.1"),
                    "kind" => minijinja::Value::from("camera"),
                    "op" => minijinja::Value::from("start"),
                    other => minijinja::Value::from(format!("{other}-1")),
                };
                (v, value)
            })
            .collect();
        for v in OP_VARIABLES {
            sample.insert(v, minijinja::Value::from(format!("{v}-1")));
        }
        sample.insert(PARAMS_VARIABLE, minijinja::Value::from_object(params));
        let rendered = match template_environment().render_str(source, sample) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("cannot be rendered: {}", template_error(&e, source));
                return self.error(key, message);
            }
        };
        let message = match reqwest::Url::parse(rendered.trim()) {
            Err(e) => format!("\"{source}\" does not render to a URL: {e}"),
            Ok(u) if u.scheme() == "http" => return,
            Ok(u) if u.scheme() == "https" => {
                "https is not supported (built without TLS); use http:// to the local VMS API"
                    .to_string()
            }
            Ok(u) => format!("`{}:` URLs are not supported; use http://", u.scheme()),
        };
        self.error(key, message);
    }

    fn method(&mut self, method: &str) {
        let upper = method.to_ascii_uppercase();
        if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
            self.error("method", format!("\"{method}\" is not an HTTP method"));
        } else if upper != method {
            self.error(
                "method",
                format!("\"{method}\": HTTP methods are upper case (\"{upper}\")"),
            );
        }
    }
}

/// The template variable that holds a resource's params: `{{ params.url }}`.
pub const PARAMS_VARIABLE: &str = "params";

/// A param's value for rendering a sample URL: its first value, `secret` for a secret.
fn sample_param(value: &str) -> String {
    if value.starts_with("file:") || value.starts_with("env:") {
        return "secret".to_string();
    }
    super::expand::Template::parse(value, true)
        .map(|t| t.render(0, "server-1"))
        .unwrap_or_else(|_| value.to_string())
}

/// "syntax error: unexpected end of input, expected end of variable block", with the template's
/// line when it has several.
fn template_error(e: &minijinja::Error, source: &str) -> String {
    let mut message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let (true, Some(line)) = (source.contains('\n'), e.line()) {
        message.push_str(&format!(" (template line {line})"));
    }
    message
}

/// The agent of a block that [`check`] found no error in. `base` is the site file's folder, for
/// a relative `command`; without it the path stays as written. `None` when a required key is
/// missing (a rule [`check`] reports).
pub(crate) fn resolve(b: &ResourceBlock, base: Option<&Path>) -> Option<(AgentSpec, AgentTimings)> {
    let timings = AgentTimings {
        timeout: b.timeout,
        monitor_interval: (!b.monitor_interval.is_zero()).then_some(b.monitor_interval),
        retries: b.retries,
        ready_timeout: b.ready_timeout,
        standby: b.standby.unwrap_or(match b.kind {
            Kind::Camera => Standby::Warm,
            _ => Standby::Off,
        }),
        merge_timeout: b.merge_timeout,
    };
    let spec = match b.agent {
        AgentKind::Simulated => AgentSpec::Simulated {
            activation: b.activation.unwrap_or(AgentSpec::DEFAULT_ACTIVATION),
            fail: b.fail,
        },
        AgentKind::Exec => {
            let written = b.command.clone()?;
            AgentSpec::Exec {
                command: command_path(&written, base),
                written,
            }
        }
        AgentKind::Http => AgentSpec::Http {
            url: b.url.clone()?,
            method: b
                .method
                .clone()
                .unwrap_or_else(|| AgentSpec::DEFAULT_METHOD.to_string()),
            body: b.body.clone(),
            headers: b.headers.clone().unwrap_or_default().into_iter().collect(),
            standby_url: b.standby_url.clone(),
            merge_url: b.merge_url.clone(),
        },
    };
    Some((spec, timings))
}

/// `command` relative to the site file's folder.
pub(super) fn command_path(command: &Path, base: Option<&Path>) -> PathBuf {
    match base {
        Some(base) if command.is_relative() => base.join(command),
        _ => command.to_path_buf(),
    }
}

/// `200ms`, `1s`, `1m 30s`.
fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_defaults_are_the_model_defaults() {
        assert_eq!(show(AgentSpec::DEFAULT_ACTIVATION), "50ms");
        assert_eq!(AgentSpec::DEFAULT_METHOD, "POST");
    }

    #[test]
    fn templates_render_agent_variables_strictly_and_unescaped() {
        let env = template_environment();
        let ctx = BTreeMap::from([("resource", "cam<1>&"), ("op", "start")]);
        assert_eq!(
            env.render_str("/{{ resource }}/{{ op }}", &ctx)
                .expect("renders"),
            "/cam<1>&/start"
        );
        assert!(env.render_str("{{ nope }}", &ctx).is_err());
    }
}
