//! XML in and out, with quick-xml: a small namespace-aware element tree for requests (limits on
//! depth and element count, no DTDs, only the five predefined entities), and a writer for
//! responses that escapes every text and attribute value.

use std::borrow::Cow;
use std::sync::Arc;

use quick_xml::Writer;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Elements nested deeper than this are refused.
pub const MAX_DEPTH: usize = 64;
/// Elements in one document at most.
pub const MAX_ELEMENTS: usize = 20_000;
/// Namespace declarations in one document at most.
pub const MAX_NAMESPACES: usize = 256;

/// One prefix binding, linked to the bindings in scope around it (shared, never copied).
#[derive(Debug, PartialEq, Eq)]
struct Binding {
    prefix: String,
    ns: String,
    parent: Option<Arc<Binding>>,
}

/// One element: namespace URI (`""` when unqualified), local name, attributes, children and
/// the text directly inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub ns: String,
    pub name: String,
    /// `(namespace, local name, value)`; namespace `""` for unqualified attributes.
    pub attrs: Vec<(String, String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    /// Prefix bindings in scope (`""` is the default namespace), for QName values.
    scope: Option<Arc<Binding>>,
}

impl Element {
    /// The first child named `name` in namespace `ns`.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.ns == ns && c.name == name)
    }

    /// The first child with local name `name`, whatever its namespace.
    pub fn child_local(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// An attribute by namespace and local name.
    pub fn attr(&self, ns: &str, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, l, _)| n == ns && l == name)
            .map(|(_, _, v)| v.as_str())
    }

    /// The text inside, trimmed.
    pub fn text(&self) -> &str {
        self.text.trim()
    }

    /// The namespace bound to `prefix` where this element stands.
    pub fn resolve_prefix(&self, prefix: &str) -> Option<&str> {
        let mut b = self.scope.as_deref();
        while let Some(binding) = b {
            if binding.prefix == prefix {
                return Some(&binding.ns);
            }
            b = binding.parent.as_deref();
        }
        None
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is not UTF-8")]
    NotUtf8,
    #[error("not well-formed XML: {0}")]
    Syntax(String),
    #[error("document type declarations are not allowed")]
    Dtd,
    #[error("unknown entity &{0};")]
    Entity(String),
    #[error("undeclared namespace prefix {0:?}")]
    Prefix(String),
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_ELEMENTS} elements or {MAX_NAMESPACES} namespace declarations")]
    TooMany,
    #[error("no root element")]
    Empty,
}

fn namespace(r: ResolveResult<'_>) -> Result<String, ParseError> {
    match r {
        ResolveResult::Bound(ns) => Ok(ns.0.to_string()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(ParseError::Prefix(p)),
    }
}

fn syntax(e: impl std::fmt::Display) -> ParseError {
    ParseError::Syntax(e.to_string())
}

/// Parses a whole document into its root element.
pub fn parse(bytes: &[u8]) -> Result<Element, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let mut declarations = 0usize;
    loop {
        let (resolved, event) = reader.read_resolved_event().map_err(syntax)?;
        let ns = match &event {
            Event::Start(_) | Event::Empty(_) => Some(namespace(resolved)?),
            _ => None,
        };
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                if root.is_some() {
                    return Err(ParseError::Syntax("content after the root element".into()));
                }
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(ParseError::TooMany);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(ParseError::TooDeep);
                }
                let mut scope = stack.last().and_then(|p| p.scope.clone());
                let mut attrs = Vec::new();
                for attr in start.attributes() {
                    let attr = attr.map_err(syntax)?;
                    let key = attr.key;
                    let value = attr
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map_err(syntax)?
                        .into_owned();
                    let raw = key.as_ref().to_string();
                    let prefix = if raw == "xmlns" {
                        Some("")
                    } else {
                        raw.strip_prefix("xmlns:")
                    };
                    if let Some(prefix) = prefix {
                        declarations += 1;
                        if declarations > MAX_NAMESPACES {
                            return Err(ParseError::TooMany);
                        }
                        scope = Some(Arc::new(Binding {
                            prefix: prefix.to_string(),
                            ns: value,
                            parent: scope,
                        }));
                        continue;
                    }
                    let (r, local) = reader.resolver().resolve_attribute(key);
                    let ans = namespace(r)?;
                    let local = local.as_ref().to_string();
                    attrs.push((ans, local, value));
                }
                let name = start.local_name().as_ref().to_string();
                let el = Element {
                    ns: ns.unwrap_or_default(),
                    name,
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                    scope,
                };
                if matches!(event, Event::Empty(_)) {
                    close(&mut stack, &mut root, el);
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| ParseError::Syntax("unexpected end tag".into()))?;
                close(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                push_text(&mut stack, &content)?;
            }
            Event::CData(t) => {
                let content = t.xml10_content();
                push_text(&mut stack, &content)?;
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(syntax)? {
                    Some(c) => Cow::Owned(c.to_string()),
                    None => Cow::Borrowed(match r.xml10_content().as_ref() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "apos" => "'",
                        "quot" => "\"",
                        other => return Err(ParseError::Entity(other.to_string())),
                    }),
                };
                push_text(&mut stack, &c)?;
            }
            Event::DocType(_) => return Err(ParseError::Dtd),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(ParseError::Syntax("unclosed element at the end".into()));
    }
    root.ok_or(ParseError::Empty)
}

fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), ParseError> {
    match stack.last_mut() {
        Some(el) => {
            el.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(ParseError::Syntax("text outside the root element".into())),
    }
}

/// Drops the characters XML 1.0 cannot carry at all (control characters but tab, line feed
/// and carriage return; unpaired surrogates cannot occur in a Rust string).
pub fn xml_safe(s: &str) -> Cow<'_, str> {
    let ok = |c: char| !matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}');
    if s.chars().all(ok) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().filter(|&c| ok(c)).collect())
    }
}

/// A response being written. Writing to memory cannot fail, so the methods return nothing;
/// every value goes through quick-xml's escaping.
pub struct XmlOut {
    w: Writer<Vec<u8>>,
}

impl Default for XmlOut {
    fn default() -> Self {
        Self::new()
    }
}

impl XmlOut {
    /// A document starting with the XML declaration.
    pub fn new() -> Self {
        let mut w = Writer::new(Vec::with_capacity(2048));
        let _ = w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
        Self { w }
    }

    fn start(name: &str, attrs: &[(&str, &str)]) -> BytesStart<'static> {
        let mut s = BytesStart::new(name.to_string());
        for (k, v) in attrs {
            s.push_attribute((*k, xml_safe(v).as_ref()));
        }
        s
    }

    /// `<name attrs...>`
    pub fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let _ = self.w.write_event(Event::Start(Self::start(name, attrs)));
    }

    /// `</name>`
    pub fn close(&mut self, name: &str) {
        let _ = self
            .w
            .write_event(Event::End(BytesEnd::new(name.to_string())));
    }

    /// `<name attrs.../>`
    pub fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let _ = self.w.write_event(Event::Empty(Self::start(name, attrs)));
    }

    /// Escaped text.
    pub fn text(&mut self, text: &str) {
        let safe = xml_safe(text);
        let _ = self.w.write_event(Event::Text(BytesText::new(&safe)));
    }

    /// `<name>text</name>`
    pub fn leaf(&mut self, name: &str, text: &str) {
        self.leaf_with(name, &[], text);
    }

    /// `<name attrs...>text</name>`
    pub fn leaf_with(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) {
        self.open(name, attrs);
        self.text(text);
        self.close(name);
    }

    pub fn finish(self) -> String {
        String::from_utf8(self.w.into_inner()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_entities_and_scope() {
        let doc = br#"<?xml version="1.0"?><a:r xmlns:a="urn:a" xmlns="urn:d"><c x="1&amp;2" a:y="z">t&lt;&#65;<![CDATA[<b>]]></c></a:r>"#;
        let r = parse(doc).unwrap();
        assert_eq!((r.ns.as_str(), r.name.as_str()), ("urn:a", "r"));
        let c = r.child("urn:d", "c").unwrap();
        assert_eq!(c.attr("", "x"), Some("1&2"));
        assert_eq!(c.attr("urn:a", "y"), Some("z"));
        assert_eq!(c.text(), "t<A<b>");
        assert_eq!(c.resolve_prefix("a"), Some("urn:a"));
        assert_eq!(c.resolve_prefix("zz"), None);
    }

    #[test]
    fn refuses_what_it_should() {
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::NotUtf8));
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert!(matches!(parse(b"<a><b></a>"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"<a>"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"<a/><b/>"), Err(ParseError::Syntax(_))));
        assert_eq!(
            parse(b"<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>"),
            Err(ParseError::Dtd)
        );
        assert_eq!(parse(b"<a>&x;</a>"), Err(ParseError::Entity("x".into())));
        assert_eq!(parse(b"<p:a/>"), Err(ParseError::Prefix("p".into())));
        let many: String = (0..=MAX_NAMESPACES)
            .map(|i| format!("<a xmlns:p{i}=\"urn:x\"/>"))
            .collect();
        assert_eq!(
            parse(format!("<r>{many}</r>").as_bytes()),
            Err(ParseError::TooMany)
        );
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::TooDeep));
    }

    #[test]
    fn writer_escapes() {
        let mut o = XmlOut::new();
        o.leaf_with("a", &[("k", "\"<&\u{1}")], "<&>\u{0}");
        let s = o.finish();
        assert!(
            s.ends_with("<a k=\"&quot;&lt;&amp;\">&lt;&amp;&gt;</a>"),
            "{s}"
        );
        assert!(parse(s.as_bytes()).is_ok());
    }
}
