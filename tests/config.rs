//! The site file front end: exact diagnostics (message and `line:col`) for every rule, range
//! expansion, the shipped examples, the JSON Schema, and `buddygate check`'s exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use buddygate::config::{
    self, AgentSpec, AgentTimings, FailMode, Failback, Kind, Mode, ParamValue, Params, ResourceIdx,
    Role, SecretRef, ServerIdx, Severity,
};
use buddygate::connectors;

/// Lines 1-5 of most cases; their own text starts on line 6.
const HEAD: &str = "[site]
name = \"hq\"
secret = \"env:SITE_KEY\"
[api]
token = \"env:API_TOKEN\"
";

/// A valid site: HEAD, then a live server (lines 6-10), a mirrored failover server (11-16)
/// and a camera (17-20).
const VALID: &str = "[[servers]]
id = \"live-1\"
address = \"10.0.1.11\"
heartbeat = [\"10.0.1.11:7400\"]
buddies = [\"fo-1\"]
[[servers]]
id = \"fo-1\"
role = \"failover\"
address = \"10.0.1.21\"
heartbeat = [\"10.0.1.21:7400\"]
mode = \"mirrored\"
[[resources]]
id = \"cam-1\"
kind = \"camera\"
server = \"live-1\"
";

/// Every diagnostic for `text`, as displayed.
fn diagnostics(text: &str) -> Vec<String> {
    match config::parse_str(text, "t.toml") {
        Ok(loaded) => loaded.warnings.iter().map(ToString::to_string).collect(),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

/// `HEAD` + `body`, which must be invalid; returns its diagnostics.
fn invalid(body: &str) -> Vec<String> {
    let text = format!("{HEAD}{body}");
    let result = config::parse_str(&text, "t.toml");
    assert!(result.is_err(), "expected errors for:\n{text}");
    diagnostics(&text)
}

/// `HEAD` + `body`, which must be valid; returns its warnings.
fn valid(body: &str) -> Vec<String> {
    let text = format!("{HEAD}{body}");
    match config::parse_str(&text, "t.toml") {
        Ok(loaded) => loaded.warnings.iter().map(ToString::to_string).collect(),
        Err(d) => panic!("expected a valid site, got:\n{d}\nfor:\n{text}"),
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_valid_site_resolves_with_defaults_and_no_warning() {
    let text = format!("{HEAD}{VALID}");
    let loaded = config::parse_str(&text, "t.toml").expect("valid");
    assert_eq!(loaded.warnings, []);
    let site = loaded.site;
    assert_eq!(site.name, "hq");
    assert_eq!(site.secret, SecretRef::Env("SITE_KEY".into()));
    assert_eq!(site.heartbeat_interval, Duration::from_millis(200));
    assert_eq!(site.failure_timeout, Duration::from_secs(1));
    assert_eq!(site.failback, Failback::Auto);
    assert_eq!(site.failback_delay, Duration::from_secs(30));
    assert_eq!(site.witnesses, []);
    assert_eq!(site.connectors, PathBuf::from("connectors"));
    assert_eq!(site.api.token, Some(SecretRef::Env("API_TOKEN".into())));
    assert_eq!(site.servers.len(), 2);
    let live = &site.servers[0];
    assert_eq!(live.role, Role::Live);
    assert_eq!(live.address.to_string(), "10.0.1.11");
    assert_eq!(
        live.heartbeat,
        ["10.0.1.11:7400".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(live.api, None);
    assert_eq!(live.buddies, [ServerIdx(1)]);
    let fo = &site.servers[1];
    assert_eq!((fo.role, fo.mode), (Role::Failover, Some(Mode::Mirrored)));
    assert_eq!(site.resources.len(), 1);
    let cam = &site.resources[0];
    assert_eq!((cam.id.as_str(), cam.kind), ("cam-1", Kind::Camera));
    assert_eq!((cam.server, cam.priority), (ServerIdx(0), 0));
    assert_eq!(
        cam.agent,
        AgentSpec::Simulated {
            activation: Duration::from_millis(50),
            fail: None
        }
    );
    assert_eq!(
        cam.timings,
        AgentTimings {
            timeout: Duration::from_secs(10),
            monitor_interval: Some(Duration::from_secs(5)),
            retries: 2,
            ready_timeout: None,
            standby: config::Standby::Warm,
            merge_timeout: Duration::from_secs(600)
        }
    );
}

#[test]
fn syntax_errors_come_from_the_toml_parser_with_their_position() {
    assert_eq!(
        diagnostics("[site]\nname = \"hq\nsecret = \"env:K\"\n"),
        ["t.toml:2:11: invalid basic string, expected `\"`"]
    );
    assert_eq!(
        diagnostics("[site]\nname = \"a\"\nname = \"b\"\nsecret = \"env:K\"\n[site]\n"),
        [
            "t.toml:3:1: duplicate key `name`",
            "t.toml:5:2: duplicate key `site`"
        ]
    );
}

#[test]
fn unknown_keys_are_reported_at_the_key_with_a_suggestion() {
    invalid_table(&[
        (
            VALID.replace("address = \"10.0.1.11\"", "adress = \"10.0.1.11\""),
            &["t.toml:8:1: servers[0].adress: unknown key `adress`; did you mean `address`?"],
        ),
        (
            VALID.replace("buddies", "colour = \"red\"\nbuddies"),
            &[
                "t.toml:10:1: servers[0].colour: unknown key `colour`; expected one of `id`, `role`, \
             `address`, `heartbeat`, `api`, `buddies`, `mode`, `max_servers`, `max_cameras`, `pick`",
            ],
        ),
    ]);
    assert_eq!(
        diagnostics("[sites]\nname = \"hq\"\n"),
        [
            "t.toml:1:1: missing the [site] table",
            "t.toml:1:1: warning: api.token: not set: every API mutation (failover, failback, replay) and every read will be refused; set it, or `read_token`, or `read = \"open\"`",
            "t.toml:1:1: servers: no [[servers]]: a site needs live servers and failover servers",
            "t.toml:1:2: sites: unknown key `sites`; did you mean `site`?",
        ]
    );
    assert_eq!(
        diagnostics(&format!(
            "{HEAD}onvif_users = [{{ user = \"a\", pasword = \"x\" }}, {{ user = \"b\" }}]\n{VALID}"
        )),
        [
            "t.toml:6:30: api.onvif_users[0].pasword: unknown key `pasword`; did you mean `password`?",
            "t.toml:6:47: api.onvif_users[1]: missing key `password`",
        ]
    );
}

#[test]
fn type_errors_point_at_the_value() {
    invalid_table(&[
        (
            VALID.replace("address = \"10.0.1.11\"", "address = 5"),
            &["t.toml:8:11: servers[0].address: invalid type: integer `5`, expected a string"],
        ),
        (
            VALID.replace("role = \"failover\"", "role = \"standby\""),
            &[
                "t.toml:13:8: servers[1].role: unknown value `standby`, expected `live` or `failover`",
            ],
        ),
        (
            VALID.replace("kind = \"camera\"", "kind = 3"),
            &["t.toml:19:8: resources[0].kind: invalid type: integer `3`, expected a string"],
        ),
        (
            VALID.replace(
                "heartbeat = [\"10.0.1.11:7400\"]",
                "heartbeat = [\"10.0.1.11:7400\", 7401]",
            ),
            &[
                "t.toml:9:32: servers[0].heartbeat[1]: invalid type: integer `7401`, expected a string",
            ],
        ),
        (
            format!("{VALID}priority = \"high\"\n"),
            &[
                "t.toml:21:12: resources[0].priority: invalid type: string \"high\", expected an integer from -2147483648 to 2147483647",
            ],
        ),
        (
            VALID.replace(
                "mode = \"mirrored\"",
                "mode = \"spread-servers\"\nmax_servers = -1",
            ),
            &[
                "t.toml:17:15: servers[1].max_servers: invalid value: integer `-1`, expected an integer from 0 to 4294967295",
            ],
        ),
    ]);
    assert_eq!(
        diagnostics(&format!(
            "[site]\nname = \"hq\"\nsecret = \"env:K\"\nfailure_timeout = \"1 fortnight\"\n\
             heartbeat_interval = 200\n[api]\ntoken = \"env:T\"\n{VALID}"
        )),
        [
            "t.toml:4:19: site.failure_timeout: invalid duration \"1 fortnight\": unknown time unit \"fortnight\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)",
            "t.toml:5:22: site.heartbeat_interval: invalid type: integer `200`, expected a duration such as \"200ms\" or \"1s\"",
        ]
    );
    assert_eq!(
        diagnostics(&format!("servers = 5\n{HEAD}")),
        ["t.toml:1:11: servers: expected an array of tables, found an integer"]
    );
}

#[test]
fn every_problem_is_reported_at_once_in_position_order() {
    let text = "\
[site]
name = \"h q\"
secret = \"env:K\"
flavour = 1
[[servers]]
id = \"live-1\"
address = 10
heartbeat = [\"10.0.1.11:7400\"]
buddies = [\"fo-1\", \"fo-7\"]
bogus = true
[[servers]]
id = \"fo-1\"
role = \"failover\"
address = \"10.0.1.21\"
heartbeat = [\"10.0.1.21:7400\"]
[[resources]]
id = \"cam-1\"
kind = \"camera\"
server = \"fo-1\"
priority = 1.5
";
    assert_eq!(
        diagnostics(text),
        [
            "t.toml:1:1: warning: api.token: not set: every API mutation (failover, failback, replay) and every read will be refused; set it, or `read_token`, or `read = \"open\"`",
            "t.toml:2:8: site.name: \"h q\" may contain only letters, digits, '.', '_' and '-'",
            "t.toml:4:1: site.flavour: unknown key `flavour`; expected one of `name`, `secret`, \
             `heartbeat_interval`, `failure_timeout`, `failback`, `failback_delay`, `witnesses`, `connectors`",
            "t.toml:5:1: warning: servers[0]: live server has no resources",
            "t.toml:7:11: servers[0].address: invalid type: integer `10`, expected a string",
            "t.toml:9:20: servers[0].buddies[1]: no server \"fo-7\"",
            "t.toml:10:1: servers[0].bogus: unknown key `bogus`; expected one of `id`, `role`, \
             `address`, `heartbeat`, `api`, `buddies`, `mode`, `max_servers`, `max_cameras`, `pick`",
            "t.toml:11:1: servers[1]: failover server needs a mode: mirrored, spread-servers or spread-cameras",
            "t.toml:19:10: resources[0].server: \"fo-1\" is a failover server; resources are homed on live servers",
            "t.toml:20:12: resources[0].priority: invalid type: floating point `1.5`, expected an integer from -2147483648 to 2147483647",
        ]
    );
}

/// Runs each `(body, expected)` case on `HEAD` + body and reports every mismatch.
fn table(cases: &[(&str, &[&str])]) {
    let mut failures = Vec::new();
    for (body, expected) in cases {
        let got = diagnostics(&format!("{HEAD}{body}"));
        if got != *expected {
            failures.push(format!(
                "--- body:\n{body}--- expected:\n{expected:#?}\n--- got:\n{got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs each `(body, expected)` case on `HEAD` + body, which must be invalid, and reports every
/// mismatch.
fn invalid_table(cases: &[(String, &[&str])]) {
    let mut failures = Vec::new();
    for (body, expected) in cases {
        let got = invalid(body);
        if got != *expected {
            failures.push(format!(
                "--- body:\n{body}--- expected:\n{expected:#?}\n--- got:\n{got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A live server block of 5 lines: `id`, address `10.0.1.N`, one heartbeat path, buddies.
fn live(id: &str, n: u8, buddies: &str) -> String {
    format!(
        "[[servers]]\nid = \"{id}\"\naddress = \"10.0.1.{n}\"\nheartbeat = [\"10.0.1.{n}:7400\"]\nbuddies = [{buddies}]\n"
    )
}

/// A failover server block of 6 lines.
fn failover(id: &str, n: u8, mode: &str) -> String {
    format!(
        "[[servers]]\nid = \"{id}\"\nrole = \"failover\"\naddress = \"10.0.1.{n}\"\nheartbeat = [\"10.0.1.{n}:7400\"]\nmode = \"{mode}\"\n"
    )
}

/// A resource block of 4 lines.
fn resource(id: &str, kind: &str, server: &str) -> String {
    format!("[[resources]]\nid = \"{id}\"\nkind = \"{kind}\"\nserver = \"{server}\"\n")
}

#[test]
fn ids_must_be_unique_and_plain() {
    // Lines: live-1 6-10, live-1 11-15, fo-1 16-21, cam-1 22-25, cam-1 26-29.
    let dup = [
        live("live-1", 11, "\"fo-1\""),
        live("live-1", 12, "\"fo-1\""),
        failover("fo-1", 21, "spread-servers"),
        resource("cam-1", "camera", "live-1"),
        resource("cam-1", "io", "live-1"),
    ]
    .concat();
    let bad = [
        live("live 1", 11, "\"fo-1\""),
        failover("fo-1", 21, "mirrored"),
        resource("", "camera", "live 1"),
    ]
    .concat();
    let long = "x".repeat(65);
    let too_long = [
        live(&long, 11, "\"fo-1\""),
        failover("fo-1", 21, "mirrored"),
        resource("cam-1", "camera", &long),
    ]
    .concat();
    table(&[
        (
            &dup,
            &[
                "t.toml:12:6: servers[1].id: duplicate server id \"live-1\" (first declared at servers[0])",
                "t.toml:27:6: resources[1].id: duplicate resource id \"cam-1\" (first declared at resources[0])",
            ],
        ),
        (
            &bad,
            &[
                "t.toml:7:6: servers[0].id: \"live 1\" may contain only letters, digits, '.', '_' and '-'",
                "t.toml:18:6: resources[0].id: must not be empty",
            ],
        ),
        (
            &too_long,
            &[
                "t.toml:7:6: servers[0].id: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" is longer than 64 characters",
            ],
        ),
    ]);
}

#[test]
fn addresses_must_be_reachable_and_not_shared() {
    let pair = |live_lines: &str| {
        format!(
            "[[servers]]\nid = \"live-1\"\n{live_lines}buddies = [\"fo-1\"]\n{}{}",
            failover("fo-1", 21, "mirrored"),
            resource("cam-1", "camera", "live-1")
        )
    };
    // The live server's own lines start at line 8.
    table(&[
        (
            &pair("address = \"10.0.1.300\"\nheartbeat = [\"10.0.1.11\", \"10.0.2.11:0\", \"0.0.0.0:7400\"]\napi = \"[::1]:8400\"\n"),
            &[
                "t.toml:8:11: servers[0].address: \"10.0.1.300\" is not an IP address",
                "t.toml:9:14: servers[0].heartbeat[0]: \"10.0.1.11\" is not an IP:port address",
                "t.toml:9:27: servers[0].heartbeat[1]: 10.0.2.11:0: port 0 is not a fixed port",
                "t.toml:9:42: servers[0].heartbeat[2]: 0.0.0.0:7400: 0.0.0.0 is not an address other servers can reach",
                "t.toml:11:12: warning: servers[0].buddies[0]: \"fo-1\" has 1 heartbeat path and this server 3; they share only 1",
            ],
        ),
        (
            &pair("address = \"0.0.0.0\"\nheartbeat = []\napi = \"10.0.1.11\"\n"),
            &[
                "t.toml:8:11: servers[0].address: 0.0.0.0 cannot be announced; use the server's own address",
                "t.toml:9:13: servers[0].heartbeat: needs at least one IP:port listen address",
                "t.toml:10:7: servers[0].api: \"10.0.1.11\" is not an IP:port address",
            ],
        ),
        (
            // Heartbeat and API addresses used twice.
            &pair("address = \"10.0.1.11\"\nheartbeat = [\"10.0.1.21:7400\", \"10.0.2.11:7400\", \"10.0.2.11:7400\"]\napi = \"10.0.1.11:8400\"\n")
                .replace("mode = \"mirrored\"", "mode = \"mirrored\"\napi = \"10.0.1.11:8400\""),
            &[
                "t.toml:9:50: servers[0].heartbeat[2]: 10.0.2.11:7400 is listed twice",
                "t.toml:11:12: warning: servers[0].buddies[0]: \"fo-1\" has 1 heartbeat path and this server 3; they share only 1",
                "t.toml:16:14: servers[1].heartbeat[0]: heartbeat address 10.0.1.21:7400 is already used by \"live-1\"",
                "t.toml:18:7: servers[1].api: api address 10.0.1.11:8400 is already used by \"live-1\"",
            ],
        ),
    ]);
}

#[test]
fn buddies_must_be_other_existing_failover_servers() {
    // live-1 6-10, live-2 11-15, fo-1 16-21, resources 22-29.
    let body = [
        live(
            "live-1",
            11,
            "\"fo-1\", \"fo-9\", \"live-2\", \"live-1\", \"fo-1\"",
        ),
        live("live-2", 12, "\"fo-1\""),
        failover("fo-1", 21, "spread-servers"),
        resource("cam-1", "camera", "live-1"),
        resource("cam-2", "camera", "live-2"),
    ]
    .concat();
    assert_eq!(
        invalid(&body),
        [
            "t.toml:10:20: servers[0].buddies[1]: no server \"fo-9\"",
            "t.toml:10:28: servers[0].buddies[2]: \"live-2\" is a live server; a buddy must be a failover server",
            "t.toml:10:38: servers[0].buddies[3]: a server cannot be its own buddy",
            "t.toml:10:48: servers[0].buddies[4]: \"fo-1\" is listed twice",
        ]
    );
}

#[test]
fn keys_must_fit_the_role() {
    let body = "\
[[servers]]
id = \"live-1\"
address = \"10.0.1.11\"
heartbeat = [\"10.0.1.11:7400\"]
buddies = [\"fo-1\"]
mode = \"mirrored\"
max_servers = 2
max_cameras = 10
pick = [\"cam-1\"]
[[servers]]
id = \"fo-1\"
role = \"failover\"
address = \"10.0.1.21\"
heartbeat = [\"10.0.1.21:7400\"]
buddies = [\"fo-2\"]
mode = \"spread-servers\"
max_servers = 0
max_cameras = 0
[[servers]]
id = \"fo-2\"
role = \"failover\"
address = \"10.0.1.22\"
heartbeat = [\"10.0.1.22:7400\"]
[[resources]]
id = \"cam-1\"
kind = \"camera\"
server = \"live-1\"
";
    let live_only = "only for failover servers; this is a live server (add role = \"failover\")";
    assert_eq!(
        invalid(body),
        [
            format!("t.toml:11:8: servers[0].mode: {live_only}"),
            format!("t.toml:12:15: servers[0].max_servers: {live_only}"),
            format!("t.toml:13:15: servers[0].max_cameras: {live_only}"),
            format!("t.toml:14:8: servers[0].pick: {live_only}"),
            "t.toml:20:11: servers[1].buddies: only for live servers; a failover server is named in \
             the buddies of the live servers it covers"
                .to_string(),
            "t.toml:22:15: servers[1].max_servers: must be at least 1 (leave it out for no limit)"
                .to_string(),
            "t.toml:23:15: servers[1].max_cameras: must be at least 1 (leave it out for no limit)"
                .to_string(),
            "t.toml:24:1: servers[2]: failover server needs a mode: mirrored, spread-servers or \
             spread-cameras"
                .to_string(),
        ]
    );
}

#[test]
fn modes_and_picks() {
    let body = format!(
        "{}{}",
        live("live-1", 11, "\"fo-1\", \"fo-2\", \"fo-3\""),
        "\
[[servers]]
id = \"fo-1\"
role = \"failover\"
address = \"10.0.1.21\"
heartbeat = [\"10.0.1.21:7400\"]
mode = \"mirrored\"
max_cameras = 10
pick = [\"cam-1\"]
[[servers]]
id = \"fo-2\"
role = \"failover\"
address = \"10.0.1.22\"
heartbeat = [\"10.0.1.22:7400\"]
mode = \"spread-cameras\"
[[servers]]
id = \"fo-3\"
role = \"failover\"
address = \"10.0.1.23\"
heartbeat = [\"10.0.1.23:7400\"]
mode = \"spread-cameras\"
pick = [\"cam-1\", \"cam-{1..2}\", \"cam-{7..9}\"]
[[resources]]
id = \"cam-1\"
kind = \"camera\"
server = \"live-1\"
"
    );
    assert_eq!(
        invalid(&body),
        [
            "t.toml:17:15: servers[1].max_cameras: only for spread-servers and spread-cameras; a \
             mirrored server takes everything of its one live server",
            "t.toml:18:8: servers[1].pick: only for spread-cameras servers (mode = \"spread-cameras\")",
            "t.toml:19:1: servers[2].pick: a spread-cameras server needs pick: the resources it takes",
            "t.toml:31:18: servers[3].pick[1]: no resource \"cam-2\"",
            "t.toml:31:18: servers[3].pick[1]: \"cam-1\" picked twice",
            "t.toml:31:32: servers[3].pick[2]: no resources \"cam-7\", \"cam-8\", \"cam-9\"",
        ]
    );
}

#[test]
fn who_covers_whom() {
    // live-1 6-10, live-2 11-15, live-3 16-20, fo-1 21-26, fo-2 27-32, fo-3 33-38.
    let body = [
        live("live-1", 11, "\"fo-1\""),
        live("live-2", 12, "\"fo-1\""),
        live("live-3", 13, ""),
        failover("fo-1", 21, "mirrored"),
        failover("fo-2", 22, "mirrored"),
        failover("fo-3", 23, "spread-servers"),
        resource("cam-1", "camera", "live-1"),
        resource("cam-2", "camera", "live-2"),
        resource("cam-3", "camera", "live-3"),
    ]
    .concat();
    assert_eq!(
        invalid(&body),
        [
            "t.toml:16:1: warning: servers[2]: live server has no buddies: nothing takes over when it fails",
            "t.toml:26:8: servers[3].mode: mirrored, but the buddy of 2 live servers (\"live-1\", \
             \"live-2\"); a mirrored server covers one (use spread-servers to share it)",
            "t.toml:27:1: warning: servers[4]: mirrored server is no live server's buddy",
            "t.toml:33:1: warning: servers[5]: failover server is no live server's buddy: it never takes over",
        ]
    );
    // Warnings alone leave the site valid.
    let body = [
        live("live-1", 11, "\"fo-1\""),
        live("live-2", 12, ""),
        failover("fo-1", 21, "mirrored"),
        resource("cam-1", "camera", "live-1"),
    ]
    .concat();
    assert_eq!(
        valid(&body),
        [
            "t.toml:11:1: warning: servers[1]: live server has no buddies: nothing takes over when it fails",
            "t.toml:11:1: warning: servers[1]: live server has no resources",
        ]
    );
}

#[test]
fn resources_are_homed_on_existing_live_servers() {
    let body = [
        live("live-1", 11, "\"fo-1\""),
        failover("fo-1", 21, "mirrored"),
        resource("cam-1", "camera", "live-9"),
        resource("cam-2", "camera", "fo-1"),
    ]
    .concat();
    assert_eq!(
        invalid(&body),
        [
            "t.toml:6:1: warning: servers[0]: live server has no resources",
            "t.toml:20:10: resources[0].server: no server \"live-9\"",
            "t.toml:24:10: resources[1].server: \"fo-1\" is a failover server; resources are homed on live servers",
        ]
    );
}

/// `[site]` with `lines` (from line 2), `[api]` with `api` (from the line after), then VALID.
fn with_site(lines: &str, api: &str) -> String {
    format!("[site]\n{lines}[api]\n{api}{VALID}")
}

#[test]
fn site_rules() {
    let cases: &[(String, &[&str])] = &[
        (
            with_site(
                "name = \"hq\"\nsecret = \"env:K\"\nheartbeat_interval = \"500ms\"\nfailure_timeout = \"1s\"\n",
                "token = \"env:T\"\n",
            ),
            &[
                "t.toml:5:19: site.failure_timeout: 1s must be greater than 2 x heartbeat_interval (1s), \
               or one lost heartbeat looks like a dead server",
            ],
        ),
        (
            with_site(
                "name = \"hq\"\nsecret = \"env:K\"\nheartbeat_interval = \"0s\"\n",
                "token = \"env:T\"\n",
            ),
            &["t.toml:4:22: site.heartbeat_interval: must be greater than zero"],
        ),
        (
            with_site(
                "name = \"\"\nsecret = \"env:K\"\nconnectors = \"\"\n",
                "token = \"env:T\"\n",
            ),
            &[
                "t.toml:2:8: site.name: must not be empty",
                "t.toml:4:14: site.connectors: must not be empty",
            ],
        ),
        (
            with_site(
                "name = \"hq\"\nsecret = \"env:K\"\nwitnesses = [\"10.0.0.1\", \"ntp.local:123\", \"10.0.0.1:443\", \"10.0.0.1:443\"]\n",
                "token = \"env:T\"\n",
            ),
            &[
                "t.toml:4:13: warning: site.witnesses: 4 witnesses survive as few witness failures as 3 do; use an odd number",
                "t.toml:4:14: site.witnesses[0]: \"10.0.0.1\" is not an IP:port address",
                "t.toml:4:26: site.witnesses[1]: \"ntp.local:123\" is not an IP:port address",
                "t.toml:4:59: site.witnesses[3]: 10.0.0.1:443 is listed twice",
            ],
        ),
        (
            with_site(
                "name = \"hq\"\nsecret = \"hunter2\"\n",
                "token = \"file:\"\nonvif_users = [{ user = \"admin\", password = \"pw\" }, { user = \"admin\", password = \"env:1X\" }, { user = \"\", password = \"\" }]\n",
            ),
            &[
                "t.toml:3:10: warning: site.secret: inline secret; use file:PATH or env:VAR in production",
                "t.toml:5:9: api.token: `file:` needs a path",
                "t.toml:6:45: warning: api.onvif_users[0].password: inline secret; use file:PATH or env:VAR in production",
                "t.toml:6:62: api.onvif_users[1].user: \"admin\" is listed twice",
                "t.toml:6:82: api.onvif_users[1].password: \"1X\" is not an environment variable name",
                "t.toml:6:103: api.onvif_users[2].user: must not be empty",
                "t.toml:6:118: api.onvif_users[2].password: empty secret",
            ],
        ),
        (
            "[site]\nname = \"hq\"\nsecret = \"env:K\"\n".to_string(),
            &[
                "t.toml:1:1: warning: api.token: not set: every API mutation (failover, failback, replay) and every read will be refused; set it, or `read_token`, or `read = \"open\"`",
                "t.toml:1:1: servers: no [[servers]]: a site needs live servers and failover servers",
            ],
        ),
        (
            String::new(),
            &[
                "t.toml:1:1: missing the [site] table",
                "t.toml:1:1: warning: api.token: not set: every API mutation (failover, failback, replay) and every read will be refused; set it, or `read_token`, or `read = \"open\"`",
                "t.toml:1:1: servers: no [[servers]]: a site needs live servers and failover servers",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (text, expected) in cases {
        let got = diagnostics(text);
        if got != *expected {
            failures.push(format!(
                "--- text:\n{text}--- expected:\n{expected:#?}\n--- got:\n{got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `[api]`: read access, the read token, TLS, host names and ONVIF push consumers; every
/// problem at once, each at its key.
#[test]
fn api_ingress_rules() {
    let site = "name = \"hq\"\nsecret = \"env:K\"\n";
    let cases: &[(String, &[&str])] = &[
        (
            with_site(
                site,
                "token = \"env:T\"\nread = \"public\"\nread_token = \"env:T\"\n\
                 tls = { cert = \"\", key = \"api.key\", ca = \"x.pem\" }\n\
                 hosts = [\"vms-1.example.com\", \"bad_host\", \"VMS-1.example.com\", \"10.0.1.11\"]\n\
                 onvif_push_allow = [\"10.0.5.0/24\", \"10.0.5.0/40\", \"http://psim/\", \"psim.example.com:8080\"]\n",
            ),
            &[
                "t.toml:6:8: api.read: unknown value `public`, expected `token` or `open`",
                "t.toml:7:14: warning: api.read_token: the same secret as `token`: whoever may read may also fail servers over",
                "t.toml:8:16: api.tls.cert: must not be empty",
                "t.toml:8:37: api.tls.ca: unknown key `ca`; expected one of `cert`, `key`, `client_ca`",
                "t.toml:9:31: api.hosts[1]: \"bad_host\" is not a host name (letters, digits, `-` and `.`) or an IP address",
                "t.toml:9:43: api.hosts[2]: \"VMS-1.example.com\" is listed twice",
                "t.toml:10:36: api.onvif_push_allow[1]: \"10.0.5.0/40\": the prefix length must be 0 to 32",
                "t.toml:10:51: api.onvif_push_allow[2]: \"http://psim/\": give an address, a network or a host name, not a URL",
            ],
        ),
        (
            with_site(
                site,
                "token = \"env:T\"\ntls = { cert = \"api.crt\", key = \"\" }\n",
            ),
            &["t.toml:6:33: api.tls.key: must not be empty"],
        ),
        (
            with_site(site, "read_token = \"env:R\"\nread = \"open\"\n"),
            &[
                "t.toml:4:1: warning: api.token: not set: every API mutation (failover, failback, replay) will be refused",
                "t.toml:5:14: warning: api.read_token: not needed with `read = \"open\"`: anyone may read",
            ],
        ),
        (
            with_site(site, "read_token = \"\"\n"),
            &[
                "t.toml:4:1: warning: api.token: not set: every API mutation (failover, failback, replay) will be refused",
                "t.toml:5:14: api.read_token: empty secret",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (text, expected) in cases {
        let got = diagnostics(text);
        if got != *expected {
            failures.push(format!(
                "--- text:\n{text}--- expected:\n{expected:#?}\n--- got:\n{got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // A valid [api]: the settings the listener gets, TLS files next to the site file.
    let text = with_site(
        site,
        "token = \"env:T\"\nread_token = \"env:R\"\ntls = { cert = \"api.crt\", key = \"api.key\", client_ca = \"ca.pem\" }\n\
         hosts = [\"VMS-1.example.com\"]\nonvif_push_allow = [\"10.0.5.0/24\"]\n",
    );
    let loaded = buddygate::config::parse_str(&text, "t.toml").expect("valid");
    let ingress = loaded.ingress;
    assert_eq!(ingress.read, buddygate::config::ReadAccess::Token);
    assert_eq!(ingress.hosts, ["vms-1.example.com"]);
    assert!(ingress.onvif_push_allow[0].allows("10.0.5.7", 80));
    let tls = ingress.tls.expect("tls");
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(std::path::Path::new("ca.pem"))
    );
}

/// A webhook or onvif connector URL with credentials is refused with a pointer to the keys
/// that hold them; a token in the query is warned about.
#[test]
fn connector_urls_carry_no_credentials() {
    let cases = [
        (
            "type = \"webhook\"\nurl = \"https://psim:s3cret@psim.example.com/hook\"\n",
            "hook.toml:2:7: url: credentials go in `basic`, `bearer` or `headers`, not in the URL (a URL is shown in logs and `buddygate status`)",
        ),
        (
            "type = \"onvif\"\nurl = \"http://admin:pw@10.0.5.7/onvif/notify\"\n",
            "hook.toml:2:7: url: credentials go in `username` and `password`, not in the URL (a URL is shown in logs and `buddygate status`)",
        ),
    ];
    for (text, message) in cases {
        let (c, d) = connectors::check_file(text, "hook.toml", Path::new("hook.toml"), None);
        assert!(c.is_none(), "{text}");
        let d: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(d, [message], "{text}");
    }
    let (c, d) = buddygate::connectors::check_file(
        "type = \"webhook\"\nurl = \"https://psim.example.com/hook?site=hq&token=abc\"\n",
        "hook.toml",
        std::path::Path::new("hook.toml"),
        None,
    );
    assert!(c.is_some());
    let d: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        d,
        [
            "hook.toml:2:7: warning: url: `token=` looks like a credential in the URL: it is redacted in logs and API answers, but `basic`, `bearer` or `headers` keep it out of the URL"
        ]
    );
}

#[test]
fn store_rules() {
    // Defaults: 30 days, 1 GiB.
    let loaded = config::parse_str(&format!("{HEAD}{VALID}"), "t.toml").unwrap();
    assert_eq!(loaded.store.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(loaded.store.max_size, 1 << 30);
    let text = format!("{HEAD}{VALID}[store]\nretention = \"90d\"\nmax_size = \"500MB\"\n");
    let loaded = config::parse_str(&text, "t.toml").unwrap();
    assert_eq!(loaded.store.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(loaded.store.max_size, 500_000_000);
    // Lines 21 and 22 hold the keys.
    let store = |lines: &str| format!("{VALID}[store]\n{lines}");
    invalid_table(&[
        (
            store("retention = \"10m\"\nmax_size = \"1MiB\"\n"),
            &[
                "t.toml:22:13: store.retention: 10m is too short: at least 1h (the event log is the \
                 API's history and what connectors deliver from)",
                "t.toml:23:12: store.max_size: 1MiB is too small: at least 16MiB",
            ],
        ),
        (
            store("retention = \"forever\"\nmax_size = \"1.5 GB\"\nsize = 3\n"),
            &[
                "t.toml:22:13: store.retention: invalid duration \"forever\": expected number at 0",
                "t.toml:23:12: store.max_size: invalid size \"1.5 GB\": expected a whole number and a \
                 unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. \"1GiB\"",
                "t.toml:24:1: store.size: unknown key `size`; did you mean `max_size`?",
            ],
        ),
    ]);
}

#[test]
fn ranges_expand_with_padding_zip_and_server() {
    let body = "\
[[servers]]
id = \"live-{01..03}\"
address = \"10.0.1.{11..13}\"
heartbeat = [\"10.0.1.{11..13}:7400\", \"10.0.2.{11..13}:7400\"]
api = \"10.0.1.{11..13}:{8401..8403}\"
buddies = [\"fo-{1..3}\", \"fo-pick\"]
[[servers]]
id = \"fo-{1..3}\"
role = \"failover\"
address = \"10.0.1.{21..23}\"
heartbeat = [\"10.0.1.{21..23}:7400\", \"10.0.2.{21..23}:7400\"]
mode = \"mirrored\"
[[servers]]
id = \"fo-pick\"
role = \"failover\"
address = \"10.0.1.30\"
heartbeat = [\"10.0.1.30:7400\", \"10.0.2.30:7400\"]
mode = \"spread-cameras\"
pick = [\"live-{01..03}-cam-001\", \"live-02-cam-{002..002}\"]
[[resources]]
server = \"live-{01..03}\"
id = \"{server}-cam-{001..002}\"
kind = \"camera\"
priority = 7
[[resources]]
server = \"live-01\"
id = \"map-{8..10}\"
kind = \"map\"
";
    let site = config::parse_str(&format!("{HEAD}{body}"), "t.toml")
        .expect("valid")
        .site;
    let ids: Vec<&str> = site.servers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "live-01", "live-02", "live-03", "fo-1", "fo-2", "fo-3", "fo-pick"
        ]
    );
    let live2 = &site.servers[1];
    assert_eq!(live2.address.to_string(), "10.0.1.12");
    assert_eq!(
        live2.heartbeat,
        [
            "10.0.1.12:7400".parse::<SocketAddr>().unwrap(),
            "10.0.2.12:7400".parse().unwrap()
        ]
    );
    assert_eq!(live2.api, Some("10.0.1.12:8402".parse().unwrap()));
    // Zipped: live-02's first buddy is fo-2; the plain entry is the same for all.
    assert_eq!(live2.buddies, [ServerIdx(4), ServerIdx(6)]);
    assert_eq!(site.servers[2].buddies, [ServerIdx(5), ServerIdx(6)]);
    assert_eq!(site.servers[4].address.to_string(), "10.0.1.22");
    let resources: Vec<(&str, ServerIdx, i32)> = site
        .resources
        .iter()
        .map(|r| (r.id.as_str(), r.server, r.priority))
        .collect();
    assert_eq!(
        resources,
        [
            ("live-01-cam-001", ServerIdx(0), 7),
            ("live-01-cam-002", ServerIdx(0), 7),
            ("live-02-cam-001", ServerIdx(1), 7),
            ("live-02-cam-002", ServerIdx(1), 7),
            ("live-03-cam-001", ServerIdx(2), 7),
            ("live-03-cam-002", ServerIdx(2), 7),
            ("map-8", ServerIdx(0), 0),
            ("map-9", ServerIdx(0), 0),
            ("map-10", ServerIdx(0), 0),
        ]
    );
    // Each pick entry expands on its own.
    assert_eq!(
        site.servers[6].pick,
        [
            ResourceIdx(0),
            ResourceIdx(2),
            ResourceIdx(4),
            ResourceIdx(3)
        ]
    );
}

#[test]
fn bad_ranges_are_reported_where_they_are() {
    let server = |lines: &str| {
        format!(
            "[[servers]]\n{lines}buddies = [\"fo-1\"]\n{}{}",
            failover("fo-1", 21, "spread-servers"),
            resource("cam-1", "camera", "live-1")
        )
    };
    table(&[
        (
            &server(
                "id = \"live-{1..3}\"\naddress = \"10.0.1.{1..2}\"\nheartbeat = [\"10.0.1.{3..1}:7400\"]\n",
            ),
            &[
                "t.toml:6:1: warning: servers[0]: live server has no resources (for live-2 and live-3)",
                "t.toml:8:11: servers[0].address: 2 values here but 3 in servers[0].id; all ranges \
                 in one block are zipped and must have the same length",
                "t.toml:9:14: servers[0].heartbeat[0]: range `{3..1}` is empty: it runs backwards",
            ],
        ),
        (
            &server(
                "id = \"live-1\"\naddress = \"10.0.1.{1..2}\"\nheartbeat = [\"10.0.1.1:7400\"]\n",
            ),
            &[
                "t.toml:7:6: servers[0].id: servers[0].address has 2 values, so id needs a range of that \
               length too (e.g. \"live-{01..02}\"), or every server gets the same id",
            ],
        ),
        (
            &server(
                "id = \"live-{1..200000}\"\naddress = \"10.0.1.1\"\nheartbeat = [\"10.0.1.1:7400\"]\n",
            ),
            &[
                "t.toml:7:6: servers[0].id: range `{1..200000}` has 200000 values; at most 100000 are allowed",
            ],
        ),
        (
            &server(
                "id = \"{server}\"\naddress = \"10.0.1.{1\"\nheartbeat = [\"10.0.1.1:7400}\"]\n",
            ),
            &[
                "t.toml:7:6: servers[0].id: `{server}` is only allowed in the `id` of a [[resources]] block",
                "t.toml:8:11: servers[0].address: unmatched `{`",
                "t.toml:9:14: servers[0].heartbeat[0]: unmatched `}`",
            ],
        ),
    ]);
    let resources = |lines: &str| {
        format!(
            "{}{}[[resources]]\nkind = \"camera\"\n{lines}",
            live("live-1", 11, "\"fo-1\""),
            failover("fo-1", 21, "mirrored"),
        )
    };
    // live-1 6-10, fo-1 11-16, the resource block from line 17.
    table(&[
        (
            &resources("server = \"live-{1..2}\"\nid = \"cam-{1..50}\"\n"),
            &[
                "t.toml:20:6: resources[0].id: server has 2 values, so id must use `{server}` \
               (e.g. \"{server}-cam-{01..50}\"), or every server gets the same ids",
            ],
        ),
        (
            &resources("server = \"live-{1..400}\"\nid = \"{server}-cam-{1..300}\"\n"),
            &[
                "t.toml:17:1: resources[0]: declares 120000 resources (400 servers x 300 values); at most 100000 per block",
            ],
        ),
        (
            &resources("server = \"live-{1..x}\"\nid = \"{server}-cam-{1..\"\n"),
            &[
                "t.toml:19:10: resources[0].server: `{1..x}` is not a range; write `{A..B}` with decimal numbers A <= B",
                "t.toml:20:6: resources[0].id: unmatched `{`",
            ],
        ),
    ]);
}

#[test]
fn one_mistake_in_a_block_of_many_servers_is_reported_once() {
    let body = "\
[[servers]]
id = \"live-{1..3}\"
address = \"10.0.1.{1..3}\"
heartbeat = [\"10.0.1.{1..3}:7400\"]
buddies = [\"nope\"]
[[servers]]
id = \"fo-1\"
role = \"failover\"
address = \"10.0.1.21\"
heartbeat = [\"10.0.1.21:7400\", \"10.0.2.21:7400\"]
mode = \"spread-servers\"
[[servers]]
id = \"live-{4..5}\"
address = \"10.0.1.{4..5}\"
heartbeat = [\"10.0.1.4:7400\"]
buddies = [\"fo-1\"]
[[resources]]
server = \"live-{2..5}\"
id = \"{server}-cam\"
kind = \"camera\"
";
    assert_eq!(
        invalid(body),
        [
            "t.toml:6:1: warning: servers[0]: live server has no resources (for live-1)",
            "t.toml:10:12: servers[0].buddies[0]: no server \"nope\"",
            "t.toml:20:14: servers[2].heartbeat[0]: heartbeat address 10.0.1.4:7400 is already \
             used by \"live-4\" (for live-5)",
            "t.toml:21:12: warning: servers[2].buddies[0]: \"fo-1\" has 2 heartbeat paths and this \
             server 1; they share only 1 (for live-4 and live-5)",
        ]
    );
}

#[test]
fn the_example_site_is_valid_and_complete() {
    let loaded = connectors::load_site(&repo("examples/site.toml")).expect("valid");
    assert_eq!(loaded.warnings, []);
    let site = loaded.site;
    assert_eq!(site.name, "hq");
    assert_eq!(site.secret, SecretRef::File("site.key".into()));
    assert_eq!(site.api.token, Some(SecretRef::File("api.token".into())));
    assert_eq!(site.api.onvif_users.len(), 1);
    assert_eq!(
        site.witnesses,
        ["10.0.0.1:443".parse::<SocketAddr>().unwrap()]
    );
    // The referenced secret files are there.
    let examples = repo("examples");
    assert_eq!(
        site.secret.resolve(&examples).expect("site.key"),
        b"hq-heartbeat-key-change-me-0123456789abcdef"
    );
    assert!(site.api.onvif_users[0].password.resolve(&examples).is_ok());
    let roles: Vec<(&str, Role, Option<Mode>)> = site
        .servers
        .iter()
        .map(|s| (s.id.as_str(), s.role, s.mode))
        .collect();
    assert_eq!(
        roles,
        [
            ("live-1", Role::Live, None),
            ("live-2", Role::Live, None),
            ("fo-1", Role::Failover, Some(Mode::SpreadServers)),
            ("fo-2", Role::Failover, Some(Mode::SpreadCameras)),
        ]
    );
    let count = |k: Kind| site.resources.iter().filter(|r| r.kind == k).count();
    assert_eq!(
        Kind::ALL.map(count),
        [6, 1, 1, 1, 1, 1],
        "camera, io, lpr, analytics, map, middleware"
    );
    let picks: Vec<&str> = site.servers[3]
        .pick
        .iter()
        .map(|&r| site.resource(r).id.as_str())
        .collect();
    assert_eq!(picks, ["cam-001", "cam-002", "lpr-1", "cam-101"]);
    // The exec agent's command is resolved against the site file's folder, and is there.
    let lpr = site.resource(site.resource_idx("lpr-1").expect("lpr-1"));
    let AgentSpec::Exec { command, written } = &lpr.agent else {
        panic!("lpr-1 has an exec agent: {:?}", lpr.agent);
    };
    assert_eq!(written, Path::new("agents/vms-camera.sh"));
    assert_eq!(command, &examples.join("agents/vms-camera.sh"));
    assert!(command.is_file());
    let analytics = site.resource(site.resource_idx("analytics-1").expect("analytics-1"));
    assert!(
        matches!(&analytics.agent, AgentSpec::Http { method, .. } if method == "PUT"),
        "{:?}",
        analytics.agent
    );
}

#[test]
fn load_resolves_exec_commands_and_warns_when_they_cannot_run() {
    let root = std::env::temp_dir().join(format!("buddygate-agent-cmd-{}", std::process::id()));
    let (a, b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(a.join("agents")).expect("temp dir");
    std::fs::create_dir_all(&b).expect("temp dir");
    let text = format!(
        "{HEAD}{}",
        agent_case("agent = \"exec\"\ncommand = \"agents/cam.sh\"\n")
    );
    for dir in [&a, &b] {
        std::fs::write(dir.join("site.toml"), &text).expect("write");
    }
    let warnings = |dir: &Path| -> Vec<String> {
        let path = dir.join("site.toml");
        let loaded = connectors::load_site(&path).expect("valid");
        let f = path.display().to_string();
        loaded
            .warnings
            .iter()
            .map(|w| w.to_string().replace(&f, "F"))
            .collect()
    };
    let script = a.join("agents/cam.sh");
    assert_eq!(
        warnings(&a),
        [format!(
            "F:22:11: warning: resources[0].command: {} does not exist",
            script.display()
        )]
    );
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write");
    assert_eq!(
        warnings(&a),
        [format!(
            "F:22:11: warning: resources[0].command: {} is not executable (chmod +x)",
            script.display()
        )]
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(warnings(&a), Vec::<String>::new());
    let site_a = connectors::load_site(&a.join("site.toml"))
        .expect("valid")
        .site;
    let site_b = connectors::load_site(&b.join("site.toml"))
        .expect("valid")
        .site;
    let command = |site: &config::Site| match &site.resources[0].agent {
        AgentSpec::Exec { command, .. } => command.clone(),
        other => panic!("exec agent expected: {other:?}"),
    };
    assert_eq!(command(&site_a), script);
    assert_eq!(command(&site_b), b.join("agents/cam.sh"));
    // The same site file in two folders: the same digest, so no config mismatch between servers.
    assert_eq!(site_a.digest(), site_b.digest());
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
fn the_large_example_declares_5000_cameras_in_a_short_file() {
    let text = std::fs::read_to_string(repo("examples/large-site.toml")).expect("readable");
    assert!(text.lines().count() < 100, "the point is a short file");
    let loaded = connectors::load_site(&repo("examples/large-site.toml")).expect("valid");
    assert_eq!(loaded.warnings, []);
    let site = loaded.site;
    let cameras = site
        .resources
        .iter()
        .filter(|r| r.kind == Kind::Camera)
        .count();
    assert_eq!(cameras, 5000);
    let live: Vec<_> = site
        .servers
        .iter()
        .filter(|s| s.role == Role::Live)
        .collect();
    assert_eq!(live.len(), 100);
    assert_eq!(site.servers.len() - live.len(), 6);
    // Every live server has 50 cameras, named after it.
    let live_100 = site.server_idx("live-100").expect("live-100");
    let on_100: Vec<&str> = site
        .resources
        .iter()
        .filter(|r| r.server == live_100 && r.kind == Kind::Camera)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(on_100.len(), 50);
    assert_eq!(on_100[0], "live-100-cam-01");
    assert_eq!(on_100[49], "live-100-cam-50");
    let s = site.server(live_100);
    assert_eq!(s.address.to_string(), "10.1.0.110");
    assert_eq!(s.heartbeat[1].to_string(), "10.2.0.110:7400");
    let buddies: Vec<&str> = s
        .buddies
        .iter()
        .map(|&b| site.server(b).id.as_str())
        .collect();
    assert_eq!(buddies, ["fo-4", "fo-spare"]);
    let entrances = site.server_idx("fo-entrances").expect("fo-entrances");
    assert_eq!(site.server(entrances).pick.len(), 100);
}

#[test]
fn the_invalid_example_reports_every_mistake() {
    let d = connectors::load_site(&repo("examples/invalid-site.toml")).expect_err("invalid");
    let f = repo("examples/invalid-site.toml").display().to_string();
    let got: Vec<String> = d.iter().map(|d| d.to_string().replace(&f, "F")).collect();
    assert_eq!(
        got,
        [
            "F:1:1: warning: api.token: not set: every API mutation (failover, failback, replay) and every read will be refused; set it, or `read_token`, or `read = \"open\"`",
            "F:5:10: warning: site.secret: inline secret; use file:PATH or env:VAR in production",
            "F:7:19: site.failure_timeout: 300ms must be greater than 2 x heartbeat_interval (400ms), \
             or one lost heartbeat looks like a dead server",
            "F:9:1: warning: servers[0]: live server has no resources",
            "F:11:1: servers[0].adress: unknown key `adress`; did you mean `address`?",
            "F:13:20: servers[0].buddies[1]: no server \"fo-9\"",
            "F:17:11: servers[1].address: \"10.0.1.300\" is not an IP address",
            "F:18:14: servers[1].heartbeat[0]: heartbeat address 10.0.1.11:7400 is already used by \"live-1\"",
            "F:26:8: servers[2].mode: mirrored, but the buddy of 2 live servers (\"live-1\", \"live-2\"); \
             a mirrored server covers one (use spread-servers to share it)",
            "F:28:1: servers[3].pick: a spread-cameras server needs pick: the resources it takes",
            "F:39:12: resources[0].priority: invalid type: string \"high\", expected an integer from \
             -2147483648 to 2147483647",
            "F:42:6: resources[1].id: duplicate resource id \"cam-10\" (first declared at resources[0])",
            "F:44:10: resources[1].server: \"fo-1\" is a failover server; resources are homed on live servers",
            "F:50:9: resources[2].agent: an exec agent needs `command`: the program to run as \
             `COMMAND start|stop|monitor`",
            "F:51:7: resources[2].url: only for http agents; this resource's agent is \"exec\"",
        ]
    );
    assert_eq!(d.errors().count(), 12);
    assert!(d.iter().all(|d| d.file == f));
}

#[test]
fn load_warns_about_missing_secret_files_and_reports_unreadable_files() {
    let dir = std::env::temp_dir().join(format!("buddygate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("site.toml");
    let text = format!(
        "[site]\nname = \"hq\"\nsecret = \"file:keys/site.key\"\n[api]\ntoken = \"env:T\"\n{VALID}"
    );
    std::fs::write(&path, text).expect("write");
    let loaded = connectors::load_site(&path).expect("valid");
    let expected = format!(
        "{}:3:10: warning: site.secret: secret file {} does not exist",
        path.display(),
        dir.join("keys/site.key").display()
    );
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].to_string(), expected);
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);
    // The same text checked without a folder does no I/O and has nothing to say.
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        config::parse_str(&text, "site.toml")
            .expect("valid")
            .warnings,
        []
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");

    let missing = dir.join("nope.toml");
    let d = connectors::load_site(&missing).expect_err("unreadable");
    assert_eq!(d.len(), 1);
    assert!(
        d.to_string()
            .starts_with(&format!("{}: cannot read site file: ", missing.display())),
        "{d}"
    );
}

#[test]
fn the_committed_schema_is_fresh() {
    let path = repo("schemas/site.schema.json");
    let fresh = config::file::schema_json();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write schema");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "schemas/site.schema.json is stale; regenerate it with \
         `BLESS=1 cargo test --test config the_committed_schema_is_fresh` \
         (or `buddygate schema > schemas/site.schema.json`)"
    );
    // It describes the file as DESIGN does.
    let schema: serde_json::Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(schema["additionalProperties"], false);
    let server = &schema["$defs"]["ServerBlock"];
    assert_eq!(server["additionalProperties"], false);
    assert_eq!(
        server["required"],
        serde_json::json!(["id", "address", "heartbeat"])
    );
    assert_eq!(server["properties"]["role"]["default"], "live");
    let site = &schema["$defs"]["SiteSection"]["properties"];
    assert_eq!(site["heartbeat_interval"]["type"], "string");
    assert_eq!(site["heartbeat_interval"]["default"], "200ms");
    assert_eq!(site["failure_timeout"]["default"], "1s");
    assert_eq!(site["failback_delay"]["default"], "30s");
    assert_eq!(site["secret"]["type"], "string");
    assert_eq!(
        schema["$defs"]["Mode"]["enum"],
        serde_json::json!(["mirrored", "spread-servers", "spread-cameras"])
    );
}

/// Runs `buddygate ARGS`; returns (exit code, stdout, stderr).
fn buddygate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_buddygate"))
        .args(args)
        .output()
        .expect("run buddygate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_exits_0_with_a_summary_for_the_good_examples() {
    let site = repo("examples/site.toml");
    let (code, out, err) = buddygate(&["check", "--config", &site.display().to_string()]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.starts_with("site hq\n"), "{out}");
    for line in [
        "  heartbeat 200ms on every path, server down after 1s of silence",
        "  failback auto, after 30s stable",
        "servers: 4 (2 live, 2 failover)",
        "resources: 11 (6 camera, 1 io, 1 lpr, 1 analytics, 1 map, 1 middleware)",
        "agents: 9 simulated, 1 exec, 1 http",
        "  live-1: 7 resources, 4 cameras -> fo-1 (spread-servers, max 2 servers, max 60 cameras), \
         fo-2 (spread-cameras, max 8 cameras)",
        "  live-2: 4 resources, 2 cameras -> fo-1 (spread-servers, max 2 servers, max 60 cameras)",
        "  fo-2 (spread-cameras, max 8 cameras) picks 4 resources from 2 live servers",
        "  onvif-io (onvif): Notify http://127.0.0.1:9998/onvif/notify [buddygate.failover.*, \
         buddygate.failback.completed, buddygate.server.*]",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }

    let large = repo("examples/large-site.toml");
    let (code, out, err) = buddygate(&["check", "-c", &large.display().to_string()]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("servers: 106 (100 live, 6 failover)\n"),
        "{out}"
    );
    assert!(
        out.contains("resources: 5100 (5000 camera, 100 io)\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "  live-076 .. live-100 (25 servers): 1275 resources, 1250 cameras -> fo-4 \
             (spread-servers, max 2 servers, max 100 cameras), fo-spare (spread-servers, max 1 server)\n"
        ),
        "{out}"
    );
    assert!(out.lines().count() < 25, "one screen:\n{out}");
}

#[test]
fn check_exits_64_and_prints_every_problem_for_the_invalid_example() {
    let path = repo("examples/invalid-site.toml").display().to_string();
    let (code, out, err) = buddygate(&["check", "--config", &path]);
    assert_eq!(code, 64);
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 16, "{err}");
    assert_eq!(
        lines[4],
        format!("{path}:11:1: servers[0].adress: unknown key `adress`; did you mean `address`?")
    );
    assert_eq!(lines[15], format!("{path}: invalid: 12 errors"));

    let (code, out, err) = buddygate(&["check", "--config", "/nonexistent/site.toml"]);
    assert_eq!((code, out.as_str()), (64, ""));
    assert!(
        err.starts_with("/nonexistent/site.toml: cannot read site file: "),
        "{err}"
    );
}

#[test]
fn check_prints_warnings_but_exits_0_when_there_is_no_error() {
    let dir = std::env::temp_dir().join(format!("buddygate-check-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!("[site]\nname = \"hq\"\nsecret = \"inline\"\n{VALID}"),
    )
    .expect("write");
    let p = path.display().to_string();
    let (code, out, err) = buddygate(&["check", "--config", &p]);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(code, 0);
    assert_eq!(
        err,
        format!(
            "{p}:1:1: warning: api.token: not set: every API mutation (failover, failback, replay) and every read will be refused; set it, or `read_token`, or `read = \"open\"`\n\
             {p}:3:10: warning: site.secret: inline secret; use file:PATH or env:VAR in production\n"
        )
    );
    assert!(out.contains("servers: 2 (1 live, 1 failover)\n"), "{out}");
}

#[test]
fn the_hidden_schema_command_prints_the_committed_schema() {
    let (code, out, _) = buddygate(&["schema"]);
    assert_eq!(code, 0);
    assert_eq!(out, config::file::schema_json());
    let (_, help, _) = buddygate(&["--help"]);
    assert!(help.contains("check"), "{help}");
    assert!(!help.contains("schema"), "hidden: {help}");
}

#[test]
fn absurd_expansions_are_refused_before_they_use_memory() {
    let long = "x".repeat(1000);
    let body = format!(
        "[[servers]]\nid = \"s-{{1..100000}}\"\naddress = \"{long}\"\nheartbeat = [\"h\"]\n"
    );
    assert_eq!(
        invalid(&body),
        [
            "t.toml:6:1: servers[0]: expands to too much text (100000 x 1014 bytes); the whole site \
          may expand to at most 64 MiB"
        ]
    );
    let body = format!(
        "{}[[resources]]\nserver = \"live-1\"\nid = \"cam-{{0000000000000000000001..2}}\"\nkind = \"io\"\n",
        live("live-1", 11, "")
    );
    assert_eq!(
        invalid(&body),
        [
            "t.toml:6:1: warning: servers[0]: live server has no buddies: nothing takes over when it fails",
            "t.toml:13:6: resources[0].id: `{0000000000000000000001..2}` is not a range; write \
             `{A..B}` with decimal numbers A <= B",
        ]
    );
}

mod no_panic {
    use proptest::prelude::*;

    use super::{HEAD, VALID};

    fn check(text: &str) {
        // Any outcome but a panic; errors must carry a position inside the text.
        if let Err(d) = buddygate::config::parse_str(text, "t.toml") {
            assert!(d.has_errors());
            let lines = text.lines().count().max(1) + 1;
            assert!(
                d.iter()
                    .all(|d| d.line >= 1 && d.line <= lines && d.col >= 1)
            );
        }
    }

    proptest! {
        #[test]
        fn on_arbitrary_text(text in "\\PC{0,200}") {
            check(&text);
        }

        #[test]
        fn on_a_valid_site_with_a_byte_changed(pos in 0usize..400, byte in any::<u8>(), delete: bool) {
            let mut bytes = format!("{HEAD}{VALID}").into_bytes();
            let pos = pos.min(bytes.len() - 1);
            if delete {
                bytes.remove(pos);
            } else {
                bytes[pos] = byte;
            }
            check(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn on_arbitrary_ranges(id in "[a-z{}.0-9]{0,24}", server in "[a-z{}.0-9-]{0,16}") {
            check(&format!(
                "{HEAD}{VALID}[[resources]]\nid = \"{id}\"\nkind = \"io\"\nserver = \"{server}\"\n"
            ));
        }
    }
}

#[test]
fn a_buddy_listed_twice_is_one_error_not_two_live_servers() {
    let body = [
        live("live-1", 11, "\"fo-1\", \"fo-1\""),
        failover("fo-1", 21, "mirrored"),
        resource("cam-1", "camera", "live-1"),
    ]
    .concat();
    assert_eq!(
        invalid(&body),
        ["t.toml:10:20: servers[0].buddies[1]: \"fo-1\" is listed twice"]
    );
}

/// A live server (lines 6-10), its mirrored buddy (11-16), then a camera (17-20) with `lines`
/// from line 21.
fn agent_case(lines: &str) -> String {
    format!(
        "{}{}{}{lines}",
        live("live-1", 11, "\"fo-1\""),
        failover("fo-1", 21, "mirrored"),
        resource("cam-{1..3}", "camera", "live-1")
    )
}

/// A camera's defaults: those of every resource, with warm standby.
const CAMERA_TIMINGS: AgentTimings = AgentTimings {
    standby: config::Standby::Warm,
    ..AgentTimings::DEFAULT
};

#[test]
fn agent_settings_resolve_with_defaults_per_kind() {
    let resolve = |lines: &str| {
        let text = format!("{HEAD}{}", agent_case(lines));
        let loaded = config::parse_str(&text, "t.toml").expect("valid");
        assert_eq!(loaded.warnings, [], "{text}");
        let site = loaded.site;
        // A range block shares its settings.
        assert_eq!(site.resources.len(), 3);
        assert_eq!(site.resources[0].agent, site.resources[2].agent);
        assert_eq!(site.resources[0].timings, site.resources[2].timings);
        (site.resources[0].agent.clone(), site.resources[0].timings)
    };
    assert_eq!(
        resolve("agent = \"simulated\"\nactivation = \"2s\"\nfail = \"monitor\"\n"),
        (
            AgentSpec::Simulated {
                activation: Duration::from_secs(2),
                fail: Some(FailMode::Monitor)
            },
            CAMERA_TIMINGS
        )
    );
    assert_eq!(
        resolve(
            "agent = \"exec\"\ncommand = \"agents/cam.sh\"\ntimeout = \"3s\"\n\
             monitor_interval = \"0s\"\nretries = 0\n"
        ),
        (
            AgentSpec::Exec {
                command: PathBuf::from("agents/cam.sh"),
                written: PathBuf::from("agents/cam.sh")
            },
            AgentTimings {
                timeout: Duration::from_secs(3),
                monitor_interval: None,
                retries: 0,
                ready_timeout: None,
                standby: config::Standby::Warm,
                merge_timeout: Duration::from_secs(600)
            }
        )
    );
    assert_eq!(
        resolve(
            "agent = \"http\"\nurl = \"http://127.0.0.1:8080/{{ resource }}/{{ op }}\"\n\
             headers = { \"x-b\" = \"2\", \"x-a\" = \"1\" }\nmonitor_interval = \"750ms\"\n"
        ),
        (
            AgentSpec::Http {
                url: "http://127.0.0.1:8080/{{ resource }}/{{ op }}".into(),
                method: "POST".into(),
                body: None,
                headers: vec![("x-a".into(), "1".into()), ("x-b".into(), "2".into())],
                standby_url: None,
                merge_url: None,
            },
            AgentTimings {
                monitor_interval: Some(Duration::from_millis(750)),
                ..CAMERA_TIMINGS
            }
        )
    );
}

#[test]
fn agent_settings_must_fit_the_agent() {
    let cases: Vec<(String, &[&str])> = vec![
        (
            agent_case(
                "agent = \"exec\"\ncommand = \"cam.sh\"\nurl = \"http://x/\"\nactivation = \"1s\"\n\
                 headers = { a = \"b\" }\n",
            ),
            &[
                "t.toml:23:7: resources[0].url: only for http agents; this resource's agent is \"exec\"",
                "t.toml:24:14: resources[0].activation: only for simulated agents; this resource's agent is \"exec\"",
                "t.toml:25:11: resources[0].headers: only for http agents; this resource's agent is \"exec\"",
            ],
        ),
        (
            agent_case("command = \"cam.sh\"\nfail = \"start\"\nmethod = \"GET\"\n"),
            &[
                "t.toml:21:11: resources[0].command: only for exec agents; this resource's agent is \"simulated\"",
                "t.toml:23:10: resources[0].method: only for http agents; this resource's agent is \"simulated\"",
            ],
        ),
        (
            agent_case("agent = \"exec\"\ntimeout = \"0s\"\n"),
            &[
                "t.toml:21:9: resources[0].agent: an exec agent needs `command`: the program to run as `COMMAND start|stop|monitor`",
                "t.toml:22:11: resources[0].timeout: must be greater than zero",
            ],
        ),
        (
            agent_case("agent = \"http\"\nbody = \"{}\"\n"),
            &[
                "t.toml:21:9: resources[0].agent: an http agent needs `url`: the template of the request's URL",
            ],
        ),
        (
            agent_case("agent = \"exec\"\ncommand = \"\"\n"),
            &["t.toml:22:11: resources[0].command: must not be empty"],
        ),
        (
            agent_case(
                "agent = \"exec\"\ncommand = \"cam.sh\"\nstandby_url = \"http://x/\"\n\
                 merge_timeout = \"0s\"\n",
            ),
            &[
                "t.toml:23:15: resources[0].standby_url: only for http agents; this resource's agent is \"exec\"",
                "t.toml:24:17: resources[0].merge_timeout: must be greater than zero",
            ],
        ),
        (
            agent_case(
                "agent = \"http\"\nurl = \"http://x/{{ op }}\"\n\
                 merge_url = \"http://x/{{ merge_from }}/{{ merge_frm }}\"\nstandby_url = \"ftp://x/\"\n",
            ),
            &[
                "t.toml:23:13: resources[0].merge_url: unknown template variable `merge_frm`; agents see `site`, `node`, `resource`, `kind`, `server`, `epoch`, `address`, `op`",
                "t.toml:24:15: resources[0].standby_url: `ftp:` URLs are not supported; use http://",
            ],
        ),
        (
            // Type errors are reported once, not again as missing or misplaced keys.
            agent_case(
                "agent = \"docker\"\nurl = \"http://x/\"\nretries = -1\nmonitor_interval = 5\n\
                 fail = \"stop\"\n",
            ),
            &[
                "t.toml:21:9: resources[0].agent: unknown value `docker`, expected one of `simulated`, `exec`, `http`",
                "t.toml:23:11: resources[0].retries: invalid value: integer `-1`, expected an integer from 0 to 4294967295",
                "t.toml:24:20: resources[0].monitor_interval: invalid type: integer `5`, expected a duration such as \"200ms\" or \"1s\"",
                "t.toml:25:8: resources[0].fail: unknown value `stop`, expected `start` or `monitor`",
            ],
        ),
        (
            agent_case("agent = \"exec\"\ncommand = 7\n"),
            &["t.toml:22:11: resources[0].command: invalid type: integer `7`, expected a string"],
        ),
        (
            agent_case("agent = \"htp\"\n"),
            &[
                "t.toml:21:9: resources[0].agent: unknown value `htp`, expected one of `simulated`, `exec`, `http`",
            ],
        ),
        (
            agent_case("comand = \"x.sh\"\n"),
            &["t.toml:21:1: resources[0].comand: unknown key `comand`; did you mean `command`?"],
        ),
    ];
    let cases: Vec<(&str, &[&str])> = cases.iter().map(|(b, e)| (b.as_str(), *e)).collect();
    table(&cases);
}

#[test]
fn http_agent_templates_are_compiled_when_checked() {
    let http = |lines: &str| agent_case(&format!("agent = \"http\"\n{lines}"));
    let cases: Vec<(String, &[&str])> = vec![
        (
            http("url = \"http://127.0.0.1/{{ resource }\"\n"),
            &[
                "t.toml:22:7: resources[0].url: invalid template: syntax error: unexpected `}`, expected end of variable block",
            ],
        ),
        (
            http(
                "url = \"http://127.0.0.1/{{ resouce }}/{{ colour }}\"\n\
                 body = '''\n{\"epoch\": {{ epoch }},\n \"x\": {% if %}}\n'''\n",
            ),
            &[
                "t.toml:22:7: resources[0].url: unknown template variable `colour`; agents see \
                 `site`, `node`, `resource`, `kind`, `server`, `epoch`, `address`, `op`",
                "t.toml:22:7: resources[0].url: unknown template variable `resouce`; did you mean `resource`?",
                "t.toml:23:8: resources[0].body: invalid template: syntax error: unexpected end of \
                 block (template line 2)",
            ],
        ),
        (
            http("url = \"{{ address }}:8080/{{ resource }}\"\n"),
            &[
                "t.toml:22:7: resources[0].url: \"{{ address }}:8080/{{ resource }}\" does not \
                 render to a URL: relative URL without a base",
            ],
        ),
        (
            http("url = \"https://vms.local/{{ resource }}\"\n"),
            &[
                "t.toml:22:7: resources[0].url: https is not supported (built without TLS); use \
                 http:// to the local VMS API",
            ],
        ),
        (
            http("url = \"ftp://vms.local/\"\n"),
            &["t.toml:22:7: resources[0].url: `ftp:` URLs are not supported; use http://"],
        ),
        (
            http(
                "url = \"http://127.0.0.1/{{ resource | upper }}/{{ range(2) | length }}\"\n\
                 method = \"post\"\nheaders = { \"bad name\" = \"x\", ok = \"line\\nbreak\" }\n",
            ),
            &[
                "t.toml:23:10: resources[0].method: \"post\": HTTP methods are upper case (\"POST\")",
                "t.toml:24:13: resources[0].headers.bad name: \"bad name\" is not a valid header name",
                "t.toml:24:36: resources[0].headers.ok: not a valid header value: no control characters or line breaks",
            ],
        ),
        (
            http("url = \"http://127.0.0.1/\"\nmethod = \"GET POST\"\n"),
            &["t.toml:23:10: resources[0].method: \"GET POST\" is not an HTTP method"],
        ),
        (
            // Warnings only: the site stays valid.
            agent_case("activation = \"2s\"\ntimeout = \"1s\"\n"),
            &[
                "t.toml:21:14: warning: resources[0].activation: activation (2s) is not shorter \
                 than timeout (1s): every start times out",
            ],
        ),
    ];
    let cases: Vec<(&str, &[&str])> = cases.iter().map(|(b, e)| (b.as_str(), *e)).collect();
    table(&cases);
}

fn text(value: &str) -> ParamValue {
    ParamValue::Text(value.into())
}

#[test]
fn standby_is_hot_warm_or_off_and_anything_else_is_pointed_at() {
    for (written, want) in [
        ("true", config::Standby::Hot),
        ("\"hot\"", config::Standby::Hot),
        ("\"warm\"", config::Standby::Warm),
        ("false", config::Standby::Off),
        ("\"off\"", config::Standby::Off),
    ] {
        let text = format!("{HEAD}{VALID}standby = {written}\n");
        let site = config::parse_str(&text, "t.toml").expect("valid").site;
        assert_eq!(site.resources[0].timings.standby, want, "{written}");
    }
    // Unset: warm for cameras, off for the other kinds.
    let text =
        format!("{HEAD}{VALID}[[resources]]\nid = \"io-1\"\nkind = \"io\"\nserver = \"live-1\"\n");
    let site = config::parse_str(&text, "t.toml").expect("valid").site;
    let modes: Vec<_> = site.resources.iter().map(|r| r.timings.standby).collect();
    assert_eq!(modes, [config::Standby::Warm, config::Standby::Off]);
    let lines = VALID.lines().count() + HEAD.lines().count() + 1;
    assert_eq!(
        invalid(&format!("{VALID}standby = \"lukewarm\"\n")),
        [format!(
            "t.toml:{lines}:11: resources[0].standby: invalid value: string \"lukewarm\", expected true, false, \"hot\", \"warm\" or \"off\""
        )]
    );
}

#[test]
fn params_resolve_per_resource_with_ranges_server_and_secret_references() {
    let site_text = format!(
        "{HEAD}{}",
        agent_case(
            "agent = \"exec\"\ncommand = \"cam.sh\"\nready_timeout = \"4s\"\n\
             params = { url = \"rtsp://10.0.5.1/{server}/c{1..3}\", vms_id = 17, audio = false, \
             password = \"file:cam.pass\", user = \"env:CAM_USER\" }\n"
        )
    );
    let loaded = config::parse_str(&site_text, "t.toml").expect("valid");
    assert_eq!(loaded.warnings, []);
    let site = loaded.site;
    assert_eq!(
        site.resources[0].timings.ready_timeout,
        Some(Duration::from_secs(4))
    );
    let secret = |written| ParamValue::Secret {
        written,
        base: PathBuf::new(),
    };
    assert_eq!(
        site.resources[1].params,
        Params(vec![
            ("audio".into(), text("false")),
            (
                "password".into(),
                secret(SecretRef::File("cam.pass".into()))
            ),
            ("url".into(), text("rtsp://10.0.5.1/live-1/c2")),
            ("user".into(), secret(SecretRef::Env("CAM_USER".into()))),
            ("vms_id".into(), text("17")),
        ])
    );
    // A secret's value is never in the site's debug output; a reference is.
    let debug = format!("{:?}", site.resources[1].params);
    assert!(debug.contains("file:cam.pass"), "{debug}");

    // Many servers: ranges in params follow the id's range, `{server}` the home server.
    let many = format!(
        "{HEAD}{}{}{}{}",
        live("live-1", 11, "\"fo-1\""),
        live("live-2", 12, "\"fo-1\""),
        failover("fo-1", 21, "spread-servers"),
        "[[resources]]\nserver = \"live-{1..2}\"\nid = \"{server}-cam-{01..02}\"\nkind = \"camera\"\n\
         agent = \"exec\"\ncommand = \"cam.sh\"\n\
         params = { url = \"rtsp://{server}.cams/{101..102}\" }\n"
    );
    let site = config::parse_str(&many, "t.toml").expect("valid").site;
    let urls: Vec<(&str, &ParamValue)> = site
        .resources
        .iter()
        .map(|r| (r.id.as_str(), r.params.get("url").expect("url")))
        .collect();
    assert_eq!(
        urls,
        [
            ("live-1-cam-01", &text("rtsp://live-1.cams/101")),
            ("live-1-cam-02", &text("rtsp://live-1.cams/102")),
            ("live-2-cam-01", &text("rtsp://live-2.cams/101")),
            ("live-2-cam-02", &text("rtsp://live-2.cams/102")),
        ]
    );
    // No params: none.
    let plain = config::parse_str(&format!("{HEAD}{VALID}"), "t.toml").expect("valid");
    assert!(plain.site.resources[0].params.is_empty());
}

#[test]
fn params_diagnostics_name_the_param() {
    let exec =
        |lines: &str| agent_case(&format!("agent = \"exec\"\ncommand = \"cam.sh\"\n{lines}"));
    let cases: Vec<(String, &[&str])> = vec![
        (
            exec("params = { URL = \"x\", \"vms-id\" = 1, ok = \"y\" }\n"),
            &[
                "t.toml:23:12: resources[0].params.URL: param name \"URL\": use lower-case letters, digits and `_`, \
                 starting with a letter (\"url\"); agents get BUDDYGATE_PARAM_<NAME>",
                "t.toml:23:23: resources[0].params.vms-id: param name \"vms-id\": use lower-case letters, digits \
                 and `_`, starting with a letter (\"vms_id\"); agents get BUDDYGATE_PARAM_<NAME>",
            ],
        ),
        (
            exec(
                "params = { url = \"rtsp://x/{1..2}\", path = \"/c{1..x}\", other = \"{server}/{1..3}\" }\n",
            ),
            &[
                "t.toml:23:18: resources[0].params.url: has a range of 2 values but id has 3; a range in a \
                 param is zipped with the id's and must have the same length",
                "t.toml:23:44: resources[0].params.path: `{1..x}` is not a range; write `{A..B}` with decimal \
                 numbers A <= B",
            ],
        ),
        (
            exec(
                "params = { password = \"hunter2\", token = \"file:\", api_key = \"env:1X\", user = \"env:\" }\n",
            ),
            &[
                "t.toml:23:23: warning: resources[0].params.password: inline secret; use file:PATH or env:VAR \
                 in production",
                "t.toml:23:42: resources[0].params.token: `file:` needs a path",
                "t.toml:23:61: resources[0].params.api_key: \"1X\" is not an environment variable name",
                "t.toml:23:78: resources[0].params.user: `env:` needs a variable name",
            ],
        ),
        (
            exec("params = { a = [1] }\n"),
            &[
                "t.toml:23:16: resources[0].params.a: invalid type: sequence, expected a string, integer or \
                 boolean",
            ],
        ),
        (
            exec("params = { f = 1.5 }\n"),
            &[
                "t.toml:23:16: resources[0].params.f: invalid type: floating point `1.5`, expected a string, \
                 integer or boolean",
            ],
        ),
        (
            exec("params = \"url\"\n"),
            &["t.toml:23:10: resources[0].params: invalid type: string \"url\", expected a map"],
        ),
        (
            exec("ready_timeout = \"0s\"\n"),
            &[
                "t.toml:23:17: resources[0].ready_timeout: must be greater than zero; leave it out to take a \
                 successful start as ready",
            ],
        ),
        (
            exec("ready_timeout = 5\n"),
            &[
                "t.toml:23:17: resources[0].ready_timeout: invalid type: integer `5`, expected a duration such \
                 as \"200ms\" or \"1s\"",
            ],
        ),
        (
            agent_case("params = { url = \"x\" }\n"),
            &[
                "t.toml:21:10: warning: resources[0].params: a simulated agent ignores params; they are for \
                 exec and http agents",
            ],
        ),
        (
            format!(
                "{}{}{}",
                live("live-1", 11, "\"fo-1\""),
                failover("fo-1", 21, "mirrored"),
                "[[resources]]\nid = \"cam-1\"\nkind = \"camera\"\nserver = \"live-1\"\n\
                 agent = \"exec\"\ncommand = \"cam.sh\"\nparams = { url = \"rtsp://x/{1..2}\" }\n"
            ),
            &[
                "t.toml:23:18: resources[0].params.url: has a range of 2 values but id has none; a range in a \
                 param is zipped with the id's (e.g. id = \"cam-{01..02}\")",
            ],
        ),
        (
            agent_case(
                "agent = \"http\"\nparams = { vms_id = 1, host = \"10.0.0.{1..3}:8080\" }\n\
                 url = \"http://{{ params.host }}/cameras/{{ params.vmsid }}/{{ params.nope }}\"\n",
            ),
            &[
                "t.toml:23:7: resources[0].url: unknown param `params.nope`; this resource's params are \
                 `host`, `vms_id`",
                "t.toml:23:7: resources[0].url: unknown param `params.vmsid`; did you mean `params.vms_id`?",
            ],
        ),
        (
            agent_case("agent = \"http\"\nurl = \"http://127.0.0.1/{{ params.id }}\"\n"),
            &[
                "t.toml:22:7: resources[0].url: unknown param `params.id`: this resource has no params",
            ],
        ),
        (
            // Valid: a param used in a template, and params = {}.
            agent_case(
                "agent = \"http\"\nparams = { host = \"10.0.0.{1..3}:8080\" }\n\
                 url = \"http://{{ params.host }}/{{ resource }}\"\nbody = \"{{ params.host }}\"\n",
            ),
            &[],
        ),
    ];
    let cases: Vec<(&str, &[&str])> = cases.iter().map(|(b, e)| (b.as_str(), *e)).collect();
    table(&cases);
}

#[test]
fn load_warns_about_param_secret_files_that_do_not_exist() {
    let dir = std::env::temp_dir().join(format!("buddygate-param-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = format!(
        "{HEAD}{}",
        agent_case(
            "agent = \"exec\"\ncommand = \"/bin/true\"\nparams = { password = \"file:cam{1..3}.pass\" }\n"
        )
    );
    let path = dir.join("site.toml");
    std::fs::write(&path, &text).expect("write");
    let f = path.display().to_string();
    let warnings = || -> Vec<String> {
        let loaded = config::load(&path).expect("valid");
        loaded
            .warnings
            .iter()
            .map(|w| w.to_string().replace(&f, "F"))
            .collect()
    };
    assert_eq!(
        warnings(),
        [format!(
            "F:23:23: warning: resources[0].params.password: secret file {} does not exist",
            dir.join("cam1.pass").display()
        )]
    );
    std::fs::write(dir.join("cam1.pass"), "s3cret\n").expect("write");
    assert_eq!(warnings(), Vec::<String>::new());
    // Relative to the site file's folder, read when the agent runs.
    let site = config::load(&path).expect("valid").site;
    let ParamValue::Secret { written, base } = site.resources[0].params.get("password").unwrap()
    else {
        panic!("a secret");
    };
    assert_eq!(written, &SecretRef::File("cam1.pass".into()));
    assert_eq!(base, &dir);
    assert_eq!(
        site.resources[0]
            .params
            .get("password")
            .unwrap()
            .value()
            .unwrap(),
        "s3cret"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn check_warns_when_claims_need_more_than_one_heartbeat_datagram() {
    let dir = std::env::temp_dir().join(format!("buddygate-paging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("site.key"), "k").unwrap();
    let site = dir.join("site.toml");
    std::fs::write(
        &site,
        r#"[site]
name = "big"
secret = "file:site.key"

[api]

[[servers]]
id = "live-1"
address = "10.0.0.1"
heartbeat = ["10.0.0.1:7400"]
buddies = ["fo-1"]

[[servers]]
id = "fo-1"
role = "failover"
mode = "mirrored"
address = "10.0.0.2"
heartbeat = ["10.0.0.2:7400"]

[[resources]]
server = "live-1"
id = "cam-{0001..2000}"
kind = "camera"
"#,
    )
    .unwrap();
    let (code, _, err) = buddygate(&["check", "--config", &site.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: some heartbeats need more than one datagram"),
        "{err}"
    );
    assert!(err.contains("live-1 -> fo-1: about"), "{err}");
    assert!(err.contains("fo-1 -> live-1: about"), "{err}");
    let (_, _, quiet) = buddygate(&[
        "check",
        "--config",
        &repo("examples/large-site.toml").display().to_string(),
    ]);
    assert!(!quiet.contains("warning: some heartbeats"), "{quiet}");
    let _ = std::fs::remove_dir_all(&dir);
}
