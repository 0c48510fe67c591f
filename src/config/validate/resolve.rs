//! The resolved [`Site`]: every id turned into an index, every address parsed.

use std::collections::HashMap;

use super::Expanded;
use crate::config::ingress::{ApiTls, Ingress, PushAllow};
use crate::config::model::{Api, OnvifUser, Resource, ResourceIdx, Server, ServerIdx, Site};
use crate::config::{agent, params};

/// The resolved site. Call only when [`validate`] found no error; `None` means a rule is
/// missing there (reported as an internal error, never a panic).
pub(crate) fn resolve(x: &Expanded<'_>) -> Option<Site> {
    let site = &x.site?.value;
    let api = &x.api?.value;
    let server_idx: HashMap<&str, ServerIdx> = x
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| Some((s.id.as_str(), ServerIdx(u16::try_from(i).ok()?))))
        .collect::<Option<_>>()?;
    let resource_idx: HashMap<&str, ResourceIdx> = x
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| Some((r.id.as_str(), ResourceIdx(u32::try_from(i).ok()?))))
        .collect::<Option<_>>()?;
    let servers = x
        .servers
        .iter()
        .map(|s| {
            Some(Server {
                id: s.id.clone(),
                role: s.role,
                address: s.address.parse().ok()?,
                heartbeat: s
                    .heartbeat
                    .iter()
                    .map(|h| h.parse().ok())
                    .collect::<Option<_>>()?,
                api: match &s.api {
                    Some(a) => Some(a.parse().ok()?),
                    None => None,
                },
                buddies: s
                    .buddies
                    .iter()
                    .map(|b| server_idx.get(b.as_str()).copied())
                    .collect::<Option<_>>()?,
                mode: s.mode,
                max_servers: s.max_servers,
                max_cameras: s.max_cameras,
                pick: s
                    .pick
                    .iter()
                    .map(|p| resource_idx.get(p.id.as_str()).copied())
                    .collect::<Option<_>>()?,
            })
        })
        .collect::<Option<_>>()?;
    let agents: Vec<_> = x
        .resource_blocks
        .iter()
        .map(|b| agent::resolve(&b.as_ref()?.value, x.base))
        .collect();
    let resources = x
        .resources
        .iter()
        .map(|r| {
            let (agent, timings) = agents.get(r.block)?.clone()?;
            let block = &x.resource_blocks.get(r.block)?.as_ref()?.value;
            Some(Resource {
                id: r.id.clone(),
                kind: r.kind,
                server: *server_idx.get(r.server.as_str())?,
                priority: r.priority,
                agent,
                timings,
                params: params::render(block, r, x.base),
            })
        })
        .collect::<Option<_>>()?;
    Some(Site {
        name: site.name.clone(),
        secret: site.secret.clone(),
        heartbeat_interval: site.heartbeat_interval,
        failure_timeout: site.failure_timeout,
        failback: site.failback,
        failback_delay: site.failback_delay,
        witnesses: site
            .witnesses
            .iter()
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?,
        connectors: site.connectors.clone(),
        api: Api {
            token: api.token.clone(),
            onvif_users: api
                .onvif_users
                .iter()
                .map(|u| OnvifUser {
                    user: u.user.clone(),
                    password: u.password.clone(),
                })
                .collect(),
        },
        servers,
        resources,
    })
}

/// The `[api]` settings of the listener. Call only when [`validate`] found no error. TLS files
/// are made relative to the site file's folder when it is known.
pub(crate) fn resolve_ingress(x: &Expanded<'_>) -> Option<Ingress> {
    let api = &x.api?.value;
    let path = |p: &std::path::Path| x.base.map_or_else(|| p.to_path_buf(), |b| b.join(p));
    Some(Ingress {
        read: api.read,
        read_token: api.read_token.clone(),
        tls: api.tls.as_ref().map(|t| ApiTls {
            cert: path(&t.cert),
            key: path(&t.key),
            client_ca: t.client_ca.as_deref().map(path),
        }),
        hosts: api.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        onvif_push_allow: api
            .onvif_push_allow
            .iter()
            .map(|a| PushAllow::parse(a).ok())
            .collect::<Option<_>>()?,
    })
}
