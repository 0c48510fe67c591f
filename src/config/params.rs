//! `params`: a resource's own agent settings (a camera's stream URL, a VMS camera id, a
//! credential), `params = { url = "rtsp://10.0.5.1/cam-{01..50}", vms_id = 17 }` in a
//! `[[resources]]` block.
//!
//! - Names are lower-case letters, digits and `_`, starting with a letter: they become
//!   `BUDDYGATE_PARAM_<NAME>` for `exec` agents and `{{ params.name }}` in `http` templates.
//! - Values are strings, integers or booleans, kept as text. A value may hold `{server}` and id
//!   ranges; its ranges are zipped with the id's (value `i` of the id gets value `i` of the
//!   param), so one block of 50 cameras can carry 50 URLs.
//! - A value `file:PATH` (relative to the site file) or `env:VAR` is a secret reference, read
//!   each time the agent runs; an inline value under a name that looks like a credential is
//!   warned about, like every inline secret.
//!
//! Checked once per block ([`check`]), rendered per resource ([`render`]); the only disk access
//! is [`missing_secret_files`], which only [`super::load`] calls.

use std::fmt;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, de};

use super::decode::Block;
use super::expand::{self, ExResource, Template};
use super::file::ResourceBlock;
use super::locate::{Issue, KeyPath, Point};
use super::model::{AgentKind, ParamValue, Params, SecretRef};

/// At most this many params per resource.
pub const MAX_PARAMS: usize = 32;

/// Longest param name.
pub const MAX_NAME_LEN: usize = 64;

/// Longest param value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;

/// A `params` value as written: a string, an integer or a boolean, kept as its text.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[schemars(with = "ParamSchema")]
pub struct ParamText(pub String);

/// What the JSON Schema says a value is.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum ParamSchema {
    Text(String),
    Integer(i64),
    Flag(bool),
}

impl<'de> Deserialize<'de> for ParamText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Visitor)
    }
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = ParamText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, integer or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamText, E> {
        Ok(ParamText(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamText, E> {
        Ok(ParamText(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamText, E> {
        Ok(ParamText(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParamText, E> {
        Ok(ParamText(v.to_string()))
    }
}

/// Every problem with the `params` of `[[resources]]` block number `block`.
pub(crate) fn check(block: usize, raw: &Block<ResourceBlock>) -> Vec<Issue> {
    let b = &raw.value;
    let path = KeyPath::root().key("resources").index(block).key("params");
    let mut issues = Vec::new();
    if b.params.is_empty() || raw.broken.has("params") {
        return issues;
    }
    if !raw.broken.has("agent") && b.agent == AgentKind::Simulated {
        issues.push(Issue::warning(
            &path,
            "a simulated agent ignores params; they are for exec and http agents",
        ));
    }
    if b.params.len() > MAX_PARAMS {
        issues.push(Issue::error(
            &path,
            format!("{} params; at most {MAX_PARAMS}", b.params.len()),
        ));
        return issues;
    }
    // The id's range length, when the id and server parse (otherwise reported elsewhere).
    let id_len = Template::parse(&b.id, true).ok().map(|t| t.range_len());
    let servers = expand::expand(&b.server).ok();
    let first_server = servers
        .as_ref()
        .and_then(|s| s.first())
        .map_or("", String::as_str);
    let mut bytes: u64 = 0;
    for (name, ParamText(value)) in &b.params {
        let at = path.key(name);
        if let Some(message) = bad_name(name) {
            issues.push(Issue::new(
                super::diag::Severity::Error,
                &at,
                Point::Key,
                message,
            ));
            continue;
        }
        if value.len() > MAX_VALUE_LEN {
            issues.push(Issue::error(
                &at,
                format!("{} bytes; at most {MAX_VALUE_LEN}", value.len()),
            ));
            continue;
        }
        bytes += value.len() as u64;
        let template = match Template::parse(value, true) {
            Ok(t) => t,
            Err(e) => {
                issues.push(Issue::error(&at, e.to_string()));
                continue;
            }
        };
        match (template.range_len(), id_len) {
            (Some(n), Some(None)) => issues.push(Issue::error(
                &at,
                format!(
                    "has a range of {n} values but id has none; a range in a param is zipped \
                     with the id's (e.g. id = \"cam-{{01..{n:02}}}\")"
                ),
            )),
            (Some(n), Some(Some(m))) if n != m => issues.push(Issue::error(
                &at,
                format!(
                    "has a range of {n} values but id has {m}; a range in a param is zipped \
                     with the id's and must have the same length"
                ),
            )),
            _ => {}
        }
        let sample = template.render(0, first_server);
        issues.extend(secret(&at, name, &sample));
    }
    // A long value times a large block could exhaust memory: the same bound as ranges.
    let count = servers
        .map_or(1, |s| s.len() as u64)
        .saturating_mul(id_len.flatten().unwrap_or(1));
    if count.saturating_mul(bytes) > expand::MAX_TEXT {
        issues.push(Issue::error(
            &path,
            format!(
                "expand to too much text ({count} resources x {bytes} bytes); the whole site \
                 may expand to at most {} MiB",
                expand::MAX_TEXT >> 20
            ),
        ));
    }
    issues
}

/// Why `name` cannot be a param name.
fn bad_name(name: &str) -> Option<String> {
    let good = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !good {
        let fixed: String = name
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '_',
            })
            .collect();
        let hint =
            if fixed.starts_with(|c: char| c.is_ascii_lowercase()) && fixed.len() <= MAX_NAME_LEN {
                format!(" (\"{fixed}\")")
            } else {
                String::new()
            };
        Some(format!(
            "param name \"{name}\": use lower-case letters, digits and `_`, starting with a \
             letter{hint}; agents get BUDDYGATE_PARAM_<NAME>"
        ))
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "param name \"{name}\" is longer than {MAX_NAME_LEN} characters"
        ))
    } else {
        None
    }
}

/// Names under which an inline value is warned about.
fn looks_secret(name: &str) -> bool {
    ["password", "passwd", "pass", "secret", "token", "key"]
        .iter()
        .any(|w| name.split('_').any(|part| part == *w))
}

/// A secret reference's problems, or the warning for an inline credential.
fn secret(at: &KeyPath, name: &str, sample: &str) -> Option<Issue> {
    match parse(sample) {
        ParsedValue::Secret(SecretRef::File(p)) if p.as_os_str().is_empty() => {
            Some(Issue::error(at, "`file:` needs a path"))
        }
        ParsedValue::Secret(SecretRef::Env(var)) if var.is_empty() => {
            Some(Issue::error(at, "`env:` needs a variable name"))
        }
        ParsedValue::Secret(SecretRef::Env(var))
            if var.starts_with(|c: char| c.is_ascii_digit())
                || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Some(Issue::error(
                at,
                format!("\"{var}\" is not an environment variable name"),
            ))
        }
        ParsedValue::Text if looks_secret(name) && !sample.is_empty() => Some(Issue::warning(
            at,
            "inline secret; use file:PATH or env:VAR in production",
        )),
        _ => None,
    }
}

enum ParsedValue {
    Text,
    Secret(SecretRef),
}

/// `file:` and `env:` values are secret references; anything else is text.
fn parse(value: &str) -> ParsedValue {
    if value.starts_with("file:") || value.starts_with("env:") {
        ParsedValue::Secret(SecretRef::parse(value))
    } else {
        ParsedValue::Text
    }
}

/// `url` -> `URL`: the end of `BUDDYGATE_PARAM_<NAME>`.
pub fn env_suffix(name: &str) -> String {
    name.to_ascii_uppercase()
}

/// The params of resource `r` of block `raw`, which [`check`] found no error in. `base` is the
/// site file's folder, for relative `file:` secrets.
pub(crate) fn render(raw: &ResourceBlock, r: &ExResource, base: Option<&Path>) -> Params {
    let base = base.unwrap_or(Path::new("")).to_path_buf();
    let values = raw
        .params
        .iter()
        .map(|(name, ParamText(value))| {
            let text = match Template::parse(value, true) {
                Ok(t) => t.render(r.index, &r.server),
                Err(_) => value.clone(),
            };
            let value = match parse(&text) {
                ParsedValue::Secret(written) => ParamValue::Secret {
                    written,
                    base: base.clone(),
                },
                ParsedValue::Text => ParamValue::Text(text),
            };
            (name.clone(), value)
        })
        .collect();
    Params(values)
}

/// Warnings for `file:` secrets in params that do not exist, relative to `base`. Checked for
/// the first resource of each block (a templated path is checked as its first value).
pub(crate) fn missing_secret_files(
    blocks: &[Option<Block<ResourceBlock>>],
    base: &Path,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let Some(Block { value: b, .. }) = block else {
            continue;
        };
        let server = expand::expand(&b.server)
            .ok()
            .and_then(|s| s.into_iter().next())
            .unwrap_or_default();
        for (name, ParamText(value)) in &b.params {
            let Ok(template) = Template::parse(value, true) else {
                continue;
            };
            let ParsedValue::Secret(SecretRef::File(p)) = parse(&template.render(0, &server))
            else {
                continue;
            };
            if !p.as_os_str().is_empty() && !base.join(&p).exists() {
                let at = KeyPath::root()
                    .key("resources")
                    .index(i)
                    .key("params")
                    .key(name);
                issues.push(Issue::warning(
                    &at,
                    format!("secret file {} does not exist", base.join(&p).display()),
                ));
            }
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_environment_variables() {
        assert_eq!(bad_name("url"), None);
        assert_eq!(bad_name("vms_id2"), None);
        assert_eq!(env_suffix("vms_id2"), "VMS_ID2");
        for name in ["Url", "2nd", "_x", "vms-id", "", "ü"] {
            assert!(bad_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn the_schema_states_the_same_limits() {
        let schema = crate::config::file::schema();
        let params = &schema.as_value()["$defs"]["ResourceBlock"]["properties"]["params"];
        assert_eq!(params["maxProperties"], MAX_PARAMS);
        assert_eq!(params["propertyNames"]["maxLength"], MAX_NAME_LEN);
    }

    #[test]
    fn credential_names_are_recognised_by_their_words() {
        for name in ["password", "camera_password", "api_key", "token", "pass"] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["url", "keyframe", "passage", "vms_id"] {
            assert!(!looks_secret(name), "{name}");
        }
    }
}
