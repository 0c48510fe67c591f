//! The `http` agent: one request to the local VMS API per operation, its URL and body rendered
//! from the resource's minijinja templates (`{{ resource }}`, `{{ epoch }}`, `{{ op }}`,
//! `{{ params.url }}`, `{{ cover_from }}`...; `standby_url` and `merge_url` for those
//! operations). A 2xx answer is success; any other answer, or no answer, is an error
//! that says why.

use std::collections::BTreeMap;

use minijinja::Value;

use super::{AgentError, Op, ResourceEnv};
use crate::config::{OP_VARIABLES, PARAMS_VARIABLE, template_environment};

/// Bytes of an error answer's body kept for the error message.
const BODY_BYTES: usize = 200;

/// The request of an `http` agent, as the site file gives it.
pub(super) struct Request<'a> {
    pub(super) url: &'a str,
    pub(super) method: &'a str,
    pub(super) body: Option<&'a str>,
    pub(super) headers: &'a [(String, String)],
}

/// The client every `http` agent of a node shares. Proxy settings of the environment are
/// ignored: agents talk to the VMS on this server or its LAN.
pub(super) fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| chain(&e))
}

pub(super) async fn run(
    client: &reqwest::Client,
    request: &Request<'_>,
    env: &ResourceEnv,
    op: Op,
) -> Result<(), AgentError> {
    let templates = template_environment();
    let context = context(env, op);
    let render = |key: &'static str, source: &str| {
        templates
            .render_str(source, &context)
            .map_err(|e| AgentError::Template {
                key,
                message: e.to_string(),
            })
    };
    let url = render("url", request.url)?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|e| AgentError::Request(format!("method {}: {e}", request.method)))?;
    // The caller times the whole operation out.
    let mut builder = client.request(method, url.trim());
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    if let Some(body) = request.body {
        builder = builder.body(render("body", body)?);
    }
    let mut response = builder.send().await.map_err(|e| {
        if crate::fds::caused_by_exhaustion(&e) {
            AgentError::Exhausted(chain(&e))
        } else {
            AgentError::Request(chain(&e))
        }
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let mut body = Vec::new();
    while body.len() < BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(BODY_BYTES);
    let body = String::from_utf8_lossy(&body);
    Err(AgentError::Status {
        status,
        body: body.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

/// The template variables: [`ResourceEnv::vars`], with the epoch as a number so that a JSON
/// body can use `{{ epoch }}` bare, every one of [`OP_VARIABLES`] (`none` unless the operation
/// sets it), and `params` (`{{ params.url }}`).
fn context(env: &ResourceEnv, op: Op) -> BTreeMap<&'static str, Value> {
    let mut context: BTreeMap<&'static str, Value> = env
        .vars(op)
        .into_iter()
        .map(|(name, value)| match name {
            "epoch" => (name, Value::from(env.epoch)),
            _ => (name, Value::from(value)),
        })
        .collect();
    let params: BTreeMap<String, String> = env
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    for name in OP_VARIABLES {
        let value = env.op_vars.iter().find(|(n, _)| *n == name);
        context.insert(
            name,
            value.map_or(Value::from(()), |(_, v)| Value::from(v.clone())),
        );
    }
    context.insert(PARAMS_VARIABLE, Value::from_object(params));
    context
}

/// An error and its sources: "error sending request: tcp connect error: Connection refused",
/// credentials in URLs redacted.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    crate::redact::text(&text)
}
