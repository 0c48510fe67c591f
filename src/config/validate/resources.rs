//! `[[resources]]`: ids and home servers (their agent settings are checked per block, in
//! `config::agent`).

use super::Validator;
use crate::config::expand::ExResource;
use crate::config::model::Role;

impl<'a> Validator<'a> {
    pub(super) fn resource(&mut self, r: &'a ExResource) {
        let path = r.path();
        self.name(&path.key("id"), &r.id);
        match self.servers.get(r.server.as_str()) {
            None if self.x.servers_complete => {
                self.error(&path.key("server"), format!("no server \"{}\"", r.server));
            }
            Some(&i) if self.x.servers[i].role == Role::Failover => self.error(
                &path.key("server"),
                format!(
                    "\"{}\" is a failover server; resources are homed on live servers",
                    r.server
                ),
            ),
            _ => {}
        }
    }
}
