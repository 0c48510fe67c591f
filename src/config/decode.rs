//! From the TOML span tree to the serde types of [`super::file`], one section or block at a time,
//! so that type errors in different blocks and every unknown or missing key are reported
//! together, each at the offending key or value.

use std::borrow::Cow;
use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diag::Severity;
use super::file::{
    ApiSection, OnvifUserEntry, ResourceBlock, ServerBlock, SiteSection, StoreSection,
};
use super::locate::{Issue, KeyPath, Point};

/// The sections and blocks as far as they decoded; `None` for one that could not be salvaged
/// at all. Their problems are reported.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) site: Option<Block<SiteSection>>,
    /// A default when the file has no `[api]`.
    pub(crate) api: Option<Block<ApiSection>>,
    pub(crate) servers: Vec<Option<Block<ServerBlock>>>,
    pub(crate) resources: Vec<Option<Block<ResourceBlock>>>,
    /// A default when the file has no `[store]`.
    pub(crate) store: Option<Block<StoreSection>>,
}

/// A section or block whose `broken` keys had an error: they hold a default or placeholder, and
/// checks that depend on them are skipped (their error is reported already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block<T> {
    pub(crate) value: T,
    pub(crate) broken: Broken,
}

/// Top-level keys of a block that had an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Broken(BTreeSet<String>);

impl Broken {
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.contains(key)
    }

    pub(crate) fn insert(&mut self, key: &str) {
        self.0.insert(key.to_string());
    }
}

/// A section or block type, with stand-ins for required keys that had an error, so that the
/// rest of the block can still be checked. A key without a stand-in (an `id`) loses the block.
pub(crate) trait Section: DeserializeOwned + JsonSchema {
    fn placeholder(_key: &str) -> Option<DeValue<'static>> {
        None
    }
}

impl Section for SiteSection {
    fn placeholder(key: &str) -> Option<DeValue<'static>> {
        matches!(key, "name" | "secret").then(|| DeValue::String(Cow::Borrowed("")))
    }
}

impl Section for ApiSection {}

impl Section for OnvifUserEntry {}

impl Section for StoreSection {}

impl Section for ServerBlock {
    fn placeholder(key: &str) -> Option<DeValue<'static>> {
        match key {
            "address" => Some(DeValue::String(Cow::Borrowed(""))),
            "heartbeat" => Some(DeValue::Array(toml::de::DeArray::new())),
            _ => None,
        }
    }
}

impl Section for ResourceBlock {
    fn placeholder(key: &str) -> Option<DeValue<'static>> {
        (key == "kind").then_some(DeValue::String(Cow::Borrowed("camera")))
    }
}

const TOP_LEVEL: [&str; 5] = ["site", "api", "servers", "resources", "store"];

/// Errors reported from one table before giving up on it.
const MAX_BLOCK_ERRORS: usize = 50;

pub(crate) fn decode(doc: &Spanned<DeTable<'_>>, issues: &mut Vec<Issue>) -> Decoded {
    let root = KeyPath::root();
    let mut out = Decoded::default();
    for (key, value) in doc.get_ref().iter() {
        let name: &str = key.get_ref();
        let path = root.key(name);
        match name {
            "site" => out.site = decode_table(value, &path, issues),
            "api" => out.api = decode_api(value, &path, issues),
            "servers" => out.servers = decode_blocks(value, &path, issues),
            "resources" => out.resources = decode_blocks(value, &path, issues),
            "store" => out.store = decode_table(value, &path, issues),
            _ => issues.push(Issue::new(
                Severity::Error,
                &path,
                Point::Key,
                unknown_key(name, &TOP_LEVEL),
            )),
        }
    }
    if !doc.get_ref().contains_key("site") {
        issues.push(Issue::error(&root, "missing the [site] table"));
    }
    if !doc.get_ref().contains_key("api") {
        out.api = Some(Block {
            value: ApiSection::default(),
            broken: Broken::default(),
        });
    }
    if !doc.get_ref().contains_key("store") {
        out.store = Some(Block {
            value: StoreSection::default(),
            broken: Broken::default(),
        });
    }
    out
}

/// `[api]`, with each ONVIF account decoded on its own so that a mistake in one does not hide
/// the others.
fn decode_api(
    value: &Spanned<DeValue<'_>>,
    path: &KeyPath,
    issues: &mut Vec<Issue>,
) -> Option<Block<ApiSection>> {
    let mut value = value.clone();
    let users = match value.get_mut() {
        DeValue::Table(t) => t.remove("onvif_users"),
        _ => None,
    };
    let mut api = decode_table::<ApiSection>(&value, path, issues);
    let users =
        users.map(|u| decode_blocks::<OnvifUserEntry>(&u, &path.key("onvif_users"), issues));
    if let (Some(api), Some(users)) = (&mut api, users) {
        match users.into_iter().collect::<Option<Vec<_>>>() {
            Some(users) => api.value.onvif_users = users.into_iter().map(|u| u.value).collect(),
            None => api.broken.insert("onvif_users"),
        }
    }
    api
}

/// An array of tables (`[[servers]]`), each decoded on its own. A value that is not an array
/// gives one `None`, so that the list is known to be incomplete.
fn decode_blocks<T: Section>(
    value: &Spanned<DeValue<'_>>,
    path: &KeyPath,
    issues: &mut Vec<Issue>,
) -> Vec<Option<Block<T>>> {
    let Some(array) = value.get_ref().as_array() else {
        issues.push(Issue::error(
            path,
            format!(
                "expected an array of tables, found {}",
                a_type(value.get_ref())
            ),
        ));
        return vec![None];
    };
    array
        .iter()
        .enumerate()
        .map(|(i, block)| decode_table(block, &path.index(i), issues))
        .collect()
}

/// Deserializes one table. On an error it reports it, removes the offending key (an unknown key
/// exactly where it is, anything else at the block's top level, marked broken and replaced by
/// its placeholder when required) and tries again: so every problem in the block is found, and
/// the rest of the block can still be checked.
pub(crate) fn decode_table<T: Section>(
    value: &Spanned<DeValue<'_>>,
    path: &KeyPath,
    issues: &mut Vec<Issue>,
) -> Option<Block<T>> {
    let Some(table) = value.get_ref().as_table() else {
        issues.push(Issue::error(
            path,
            format!("expected a table, found {}", a_type(value.get_ref())),
        ));
        return None;
    };
    let mut table = table.clone();
    let mut broken = Broken::default();
    let missing: Vec<String> = required_keys::<T>()
        .into_iter()
        .filter(|k| !table.contains_key(k.as_str()))
        .collect();
    for key in &missing {
        broken.insert(key);
        stand_in::<T>(&mut table, key);
    }
    let mut suggested = BTreeSet::new();
    let block = retry::<T>(value.span(), path, table, broken, &mut suggested, issues);
    // `adress = ...` says all there is to say about the missing `address`.
    for key in missing.iter().filter(|k| !suggested.contains(*k)) {
        issues.push(Issue::error(path, format!("missing key `{key}`")));
    }
    block
}

/// The deserialize, report, remove, retry loop of [`decode_table`]. Collects the keys that
/// unknown keys at the top of the table were taken for in `suggested`.
fn retry<T: Section>(
    span: std::ops::Range<usize>,
    path: &KeyPath,
    mut table: DeTable<'_>,
    mut broken: Broken,
    suggested: &mut BTreeSet<String>,
    issues: &mut Vec<Issue>,
) -> Option<Block<T>> {
    let mut reported = BTreeSet::new();
    loop {
        if reported.len() >= MAX_BLOCK_ERRORS {
            issues.push(Issue::error(
                path,
                format!("more than {MAX_BLOCK_ERRORS} errors in this table; fix these first"),
            ));
            return None;
        }
        let input = Spanned::new(span.clone(), DeValue::Table(table.clone()));
        let result: Result<T, _> = serde_path_to_error::deserialize(ValueDeserializer::from(input));
        let error = match result {
            Ok(value) => return Some(Block { value, broken }),
            Err(e) => e,
        };
        let segs = to_segs(error.path());
        let inner = error.into_inner();
        let message = inner.message().to_string();
        let Some((Step::Key(top), _)) = segs.split_first() else {
            // A missing key without a stand-in: reported by the caller.
            if !message.starts_with("missing field") {
                issues.push(Issue::error(path, message));
            }
            return None;
        };
        let at = segs.iter().fold(path.clone(), |p, s| match s {
            Step::Key(k) => p.key(k),
            Step::Index(i) => p.index(*i),
        });
        if !reported.insert(at.to_string()) {
            // No progress (cannot happen with toml's deserializer; guards against a loop).
            return None;
        }
        if let Some(field) = message.strip_prefix("unknown field ") {
            let (name, expected) = split_unknown(field);
            if let (1, Some(key)) = (segs.len(), closest(&name, &expected)) {
                suggested.insert(key.to_string());
            }
            issues.push(Issue::new(
                Severity::Error,
                &at,
                Point::Key,
                unknown_key(&name, &expected),
            ));
            if !remove(&mut table, &segs) {
                return None;
            }
        } else {
            let found = value_at(&table, &segs);
            issues.push(Issue::error(&at, describe(&message, found)));
            let top = top.clone();
            table.remove(top.as_str())?;
            broken.insert(&top);
            stand_in::<T>(&mut table, &top);
        }
    }
}

/// Puts `T`'s placeholder for `key` in `table`, if it has one.
fn stand_in<T: Section>(table: &mut DeTable<'_>, key: &str) {
    if let Some(value) = T::placeholder(key) {
        table.insert(
            Spanned::new(0..0, Cow::Owned(key.to_string())),
            Spanned::new(0..0, value),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn to_segs(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// The value at `segs` inside `table`.
fn value_at<'a>(table: &'a DeTable<'a>, segs: &[Step]) -> Option<&'a DeValue<'a>> {
    let (first, rest) = segs.split_first()?;
    let Step::Key(k) = first else { return None };
    let mut value = table.get(k.as_str())?.get_ref();
    for s in rest {
        value = match s {
            Step::Key(k) => value.as_table()?.get(k.as_str())?.get_ref(),
            Step::Index(i) => value.as_array()?.get(*i)?.get_ref(),
        };
    }
    Some(value)
}

/// Removes the key at `segs` (the last step must be a key). Returns whether it was there.
fn remove(table: &mut DeTable<'_>, segs: &[Step]) -> bool {
    match segs {
        [Step::Key(k)] => table.remove(k.as_str()).is_some(),
        [Step::Key(k), rest @ ..] => table
            .get_mut(k.as_str())
            .is_some_and(|v| remove_in(v.get_mut(), rest)),
        _ => false,
    }
}

fn remove_in(value: &mut DeValue<'_>, segs: &[Step]) -> bool {
    match (value, segs) {
        (DeValue::Table(t), _) => remove(t, segs),
        (DeValue::Array(a), [Step::Index(i), rest @ ..]) => {
            a.get_mut(*i).is_some_and(|v| remove_in(v.get_mut(), rest))
        }
        _ => false,
    }
}

/// Required keys of `T`, from its schema.
fn required_keys<T: JsonSchema>() -> Vec<String> {
    let schema = schemars::schema_for!(T);
    schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| {
            r.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits the rest of serde's "unknown field `x`, expected one of `a`, `b`" into the name and
/// the expected names.
fn split_unknown(rest: &str) -> (String, Vec<String>) {
    let mut ticks = rest.split('`').skip(1).step_by(2).map(str::to_string);
    let name = ticks.next().unwrap_or_default();
    (name, ticks.collect())
}

/// The expected key `name` is most likely a typo of.
pub(crate) fn closest<'a, S: AsRef<str>>(name: &str, expected: &'a [S]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (edit_distance(name, e.as_ref()), e.as_ref()))
        .filter(|(d, e)| *d <= 2.max(e.len() / 2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

/// "unknown key `adress`; did you mean `address`?"
pub(crate) fn unknown_key<S: AsRef<str>>(name: &str, expected: &[S]) -> String {
    match (closest(name, expected), expected) {
        (Some(e), _) => format!("unknown key `{name}`; did you mean `{e}`?"),
        (None, []) => format!("unknown key `{name}`"),
        (None, _) => {
            let list: Vec<_> = expected
                .iter()
                .map(|e| format!("`{}`", e.as_ref()))
                .collect();
            format!("unknown key `{name}`; expected one of {}", list.join(", "))
        }
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// serde's message, in the site file's words.
fn describe(message: &str, found: Option<&DeValue<'_>>) -> String {
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    if message == "wanted string or table" {
        let found = match found {
            Some(DeValue::Integer(i)) => format!("integer `{}`", i.as_str()),
            Some(DeValue::Float(f)) => format!("floating point `{}`", f.as_str()),
            Some(DeValue::Boolean(b)) => format!("boolean `{b}`"),
            Some(other) => other.type_str().to_string(),
            None => "value".to_string(),
        };
        return format!("invalid type: {found}, expected a string");
    }
    let message = match message.strip_prefix("unknown variant ") {
        Some(rest) => format!("unknown value {rest}"),
        None => message.to_string(),
    };
    if let Some(head) = message.strip_suffix(", expected path string") {
        return format!("{head}, expected a string");
    }
    if let Some(head) = message.strip_suffix(", expected u32") {
        return format!("{head}, expected an integer from 0 to {}", u32::MAX);
    }
    if let Some(head) = message.strip_suffix(", expected i32") {
        return format!(
            "{head}, expected an integer from {} to {}",
            i32::MIN,
            i32::MAX
        );
    }
    message
}

/// "an integer", "a table", ...
pub(crate) fn a_type(value: &DeValue<'_>) -> String {
    let t = value.type_str();
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {t}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_key() {
        let expected = ["id", "address", "heartbeat", "buddies"];
        assert_eq!(
            unknown_key("adress", &expected),
            "unknown key `adress`; did you mean `address`?"
        );
        assert_eq!(
            unknown_key("buddy", &expected),
            "unknown key `buddy`; did you mean `buddies`?"
        );
        assert_eq!(
            unknown_key("colour", &expected),
            "unknown key `colour`; expected one of `id`, `address`, `heartbeat`, `buddies`"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn reads_serde_unknown_field_messages() {
        let (name, expected) = split_unknown("`pasword`, expected `user` or `password`");
        assert_eq!(name, "pasword");
        assert_eq!(expected, ["user", "password"]);
    }
}
