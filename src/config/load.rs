//! Loading the site file from disk: reading it, and the checks that look at the disk, which
//! the pure validation leaves out: `file:` secrets and `exec` commands that do not exist
//! (warnings: the file may be put there before the node runs).

use std::path::{Path, PathBuf};

use super::agent::command_path;
use super::decode::Block;
use super::file::ResourceBlock;
use super::locate::{Issue, KeyPath};
use super::model::{AgentKind, SecretRef};
use super::validate::Expanded;
use super::{Diagnostic, Diagnostics, Loaded, Site, check};

/// Reads and checks the site file at `path`. Besides [`parse_str`](super::parse_str), it resolves relative `exec`
/// commands against the site file's folder, and warns about `file:` secrets and commands that
/// do not exist there.
pub fn load(path: &Path) -> Result<Loaded, Diagnostics> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::whole_file(
            &name,
            format!("cannot read site file: {e}"),
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    check(&text, &name, Some(base))
}

/// The connector files' folder of the site file at `path`: `site.connectors` of the valid
/// `site`, or as far as the file can be read when it did not validate; `None` when it cannot
/// be read at all.
pub fn connectors_dir(path: &Path, site: Option<&Site>) -> Option<PathBuf> {
    let base = path.parent().unwrap_or(Path::new(""));
    let dir = match site {
        Some(site) => site.connectors.clone(),
        None => PathBuf::from(connectors_dir_hint(&std::fs::read_to_string(path).ok()?)),
    };
    Some(base.join(dir))
}

/// The connectors folder of a site file that did not validate, as far as it can be read.
fn connectors_dir_hint(text: &str) -> String {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| {
            t.get("site")?
                .get("connectors")?
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "connectors".into())
}

/// The warnings only a site loaded from `base` gets: secret files and `exec` commands that do
/// not exist there.
pub(super) fn missing_files(
    x: &Expanded<'_>,
    blocks: &[Option<Block<ResourceBlock>>],
    base: &Path,
) -> Vec<Issue> {
    let mut issues = missing_secret_files(x, base);
    issues.extend(missing_commands(blocks, base));
    issues.extend(missing_tls_files(x, base));
    issues
}

/// Warnings for `[api] tls` files that do not exist, relative to `base`: the node will not
/// start without them.
fn missing_tls_files(x: &Expanded<'_>, base: &Path) -> Vec<Issue> {
    let Some(tls) = x.api.and_then(|a| a.value.tls.as_ref()) else {
        return Vec::new();
    };
    let at = KeyPath::root().key("api").key("tls");
    [
        ("cert", Some(&tls.cert)),
        ("key", Some(&tls.key)),
        ("client_ca", tls.client_ca.as_ref()),
    ]
    .into_iter()
    .filter_map(|(key, p)| {
        let p = p.filter(|p| !p.as_os_str().is_empty())?;
        (!base.join(p).is_file()).then(|| {
            Issue::warning(
                &at.key(key),
                format!(
                    "{} does not exist: the node will not start without it",
                    base.join(p).display()
                ),
            )
        })
    })
    .collect()
}

/// Warnings for `file:` secrets that do not exist, relative to `base`.
fn missing_secret_files(x: &Expanded<'_>, base: &Path) -> Vec<Issue> {
    let mut secrets = Vec::new();
    if let Some(site) = x.site {
        secrets.push((
            KeyPath::root().key("site").key("secret"),
            &site.value.secret,
        ));
    }
    if let Some(api) = x.api.map(|a| &a.value) {
        let path = KeyPath::root().key("api");
        if let Some(token) = &api.token {
            secrets.push((path.key("token"), token));
        }
        if let Some(token) = &api.read_token {
            secrets.push((path.key("read_token"), token));
        }
        for (i, u) in api.onvif_users.iter().enumerate() {
            secrets.push((
                path.key("onvif_users").index(i).key("password"),
                &u.password,
            ));
        }
    }
    secrets
        .into_iter()
        .filter_map(|(path, secret)| match secret {
            SecretRef::File(p) if !p.as_os_str().is_empty() && !base.join(p).exists() => {
                Some(Issue::warning(
                    &path,
                    format!("secret file {} does not exist", base.join(p).display()),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Warnings for `exec` commands that do not exist or cannot be executed, relative to `base`.
fn missing_commands(blocks: &[Option<Block<ResourceBlock>>], base: &Path) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let Some(Block { value: b, .. }) = block else {
            continue;
        };
        let Some(command) = b.command.as_ref().filter(|c| !c.as_os_str().is_empty()) else {
            continue;
        };
        if b.agent != AgentKind::Exec {
            continue;
        }
        let path = command_path(command, Some(base));
        let message = match std::fs::metadata(&path) {
            Err(_) => format!("{} does not exist", path.display()),
            Ok(m) if !m.is_file() => format!("{} is not a file", path.display()),
            Ok(m) if !executable(&m) => {
                format!("{} is not executable (chmod +x)", path.display())
            }
            Ok(_) => continue,
        };
        let at = KeyPath::root().key("resources").index(i).key("command");
        issues.push(Issue::warning(&at, message));
    }
    issues
}

#[cfg(unix)]
fn executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn executable(_: &std::fs::Metadata) -> bool {
    true
}
