//! buddygate's ONVIF topics (namespace [`ns::BG`], prefix `bg:`): the topic set, its
//! description for `GetEventProperties`, and the topic expressions a subscription filters with.
//!
//! | topic | kind | Source | Data |
//! |---|---|---|---|
//! | `bg:Server/State` | property | `Server` | `State`, `Address` |
//! | `bg:Ownership/Resource` | property | `Resource` | `Kind`, `Home`, `Owner`, `Address`, `Epoch`, `State` |
//! | `bg:Failover/Completed` | event | `Server` | `NewServer`, `Address`, `Epoch`, `Resources`, `Failed`, `TakeoverMs` |
//! | `bg:Failover/Failback` | event | `Server` | `NewServer`, `Address`, `Epoch`, `Resources`, `Failed` |
//! | `bg:Ownership/Conflict` | event | `Resource` | `Owners`, `Addresses`, `Epoch` |
//! | `bg:Ownership/Unplaced` | event | `Resource` | `Home`, `Reason` |
//! | `bg:Connector/Failed` | event | `Server`, `Connector` | `Kind`, `Reason`, `Attempts`, `RetryInMs` |
//! | `bg:Connector/Recovered` | event | `Server`, `Connector` | `Kind`, `Attempts`, `FailedForMs` |
//!
//! The messages under these topics are in [`super::messages`].

use super::soap::ns;
use super::xml::{Element, XmlOut};

/// The ONVIF dialect for topic expressions (`|` unions, `*`, `//.` subtrees).
pub const CONCRETE_SET: &str = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet";
/// WS-Topics dialects accepted as well.
pub const WSTOP_DIALECTS: &[&str] = &[
    "http://docs.oasis-open.org/wsn/t-1/TopicExpression/Concrete",
    "http://docs.oasis-open.org/wsn/t-1/TopicExpression/ConcreteSet",
    "http://docs.oasis-open.org/wsn/t-1/TopicExpression/Simple",
];
/// The ONVIF message content filter dialect (not supported; refused with a fault).
pub const MESSAGE_CONTENT: &str = "http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    ServerState,
    OwnershipResource,
    FailoverCompleted,
    FailoverFailback,
    OwnershipConflict,
    /// A resource that needs a host and that no buddy can take.
    OwnershipUnplaced,
    /// A connector of a node cannot start.
    ConnectorFailed,
    /// A connector that could not start runs at last.
    ConnectorRecovered,
}

impl Topic {
    pub const ALL: [Topic; 8] = [
        Topic::ServerState,
        Topic::OwnershipResource,
        Topic::FailoverCompleted,
        Topic::FailoverFailback,
        Topic::OwnershipConflict,
        Topic::OwnershipUnplaced,
        Topic::ConnectorFailed,
        Topic::ConnectorRecovered,
    ];

    /// `(root, leaf)` below the `bg:` namespace.
    pub fn path(self) -> (&'static str, &'static str) {
        match self {
            Topic::ServerState => ("Server", "State"),
            Topic::OwnershipResource => ("Ownership", "Resource"),
            Topic::FailoverCompleted => ("Failover", "Completed"),
            Topic::FailoverFailback => ("Failover", "Failback"),
            Topic::OwnershipConflict => ("Ownership", "Conflict"),
            Topic::OwnershipUnplaced => ("Ownership", "Unplaced"),
            Topic::ConnectorFailed => ("Connector", "Failed"),
            Topic::ConnectorRecovered => ("Connector", "Recovered"),
        }
    }

    /// `bg:Failover/Completed`.
    pub fn expression(self) -> String {
        let (root, leaf) = self.path();
        format!("bg:{root}/{leaf}")
    }

    pub fn is_property(self) -> bool {
        matches!(self, Topic::ServerState | Topic::OwnershipResource)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn source(self) -> &'static [&'static str] {
        match self {
            Topic::ServerState | Topic::FailoverCompleted | Topic::FailoverFailback => &["Server"],
            Topic::OwnershipResource | Topic::OwnershipConflict | Topic::OwnershipUnplaced => {
                &["Resource"]
            }
            Topic::ConnectorFailed | Topic::ConnectorRecovered => &["Server", "Connector"],
        }
    }

    /// Data items with their `xs:` types.
    fn data(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Topic::ServerState => &[("State", "xs:string"), ("Address", "xs:string")],
            Topic::OwnershipResource => &[
                ("Kind", "xs:string"),
                ("Home", "xs:string"),
                ("Owner", "xs:string"),
                ("Address", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
                ("State", "xs:string"),
            ],
            Topic::FailoverCompleted => &[
                ("NewServer", "xs:string"),
                ("Address", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
                ("Resources", "xs:int"),
                ("Failed", "xs:int"),
                ("TakeoverMs", "xs:unsignedLong"),
            ],
            Topic::FailoverFailback => &[
                ("NewServer", "xs:string"),
                ("Address", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
                ("Resources", "xs:int"),
                ("Failed", "xs:int"),
            ],
            Topic::OwnershipConflict => &[
                ("Owners", "xs:string"),
                ("Addresses", "xs:string"),
                ("Epoch", "xs:unsignedLong"),
            ],
            Topic::OwnershipUnplaced => &[("Home", "xs:string"), ("Reason", "xs:string")],
            Topic::ConnectorFailed => &[
                ("Kind", "xs:string"),
                ("Reason", "xs:string"),
                ("Attempts", "xs:unsignedInt"),
                ("RetryInMs", "xs:unsignedLong"),
            ],
            Topic::ConnectorRecovered => &[
                ("Kind", "xs:string"),
                ("Attempts", "xs:unsignedInt"),
                ("FailedForMs", "xs:unsignedLong"),
            ],
        }
    }
}

/// Which topics a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMask(u8);

impl TopicMask {
    pub const ALL: TopicMask = TopicMask(0b1111_1111);
    pub const NONE: TopicMask = TopicMask(0);

    /// The topics both select.
    pub fn and(self, other: TopicMask) -> TopicMask {
        TopicMask(self.0 & other.0)
    }

    pub fn contains(self, t: Topic) -> bool {
        self.0 & t.bit() != 0
    }

    pub fn of(topics: &[Topic]) -> Self {
        TopicMask(topics.iter().fold(0, |m, t| m | t.bit()))
    }
}

/// Why a topic expression was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    Dialect(String),
    Expression(String),
}

/// The topics a `wsnt:TopicExpression` element selects. Every term of the `|` union is a path
/// whose first step is `prefix:Name` (the prefix bound where the element stands); a step may
/// be `*`, and a trailing `//.` takes the whole subtree. Terms in other namespaces select
/// nothing; an expression that selects nothing at all is refused.
pub fn parse_topic_expression(el: &Element) -> Result<TopicMask, FilterError> {
    let dialect = el.attr("", "Dialect").unwrap_or(CONCRETE_SET).trim();
    if dialect != CONCRETE_SET && !WSTOP_DIALECTS.contains(&dialect) {
        return Err(FilterError::Dialect(dialect.to_string()));
    }
    let mut mask = 0u8;
    for term in el.text().split('|') {
        let term = term.trim();
        if term.is_empty() {
            return Err(FilterError::Expression(format!(
                "empty term in {:?}",
                el.text()
            )));
        }
        let (path, subtree) = match term.strip_suffix("//.") {
            Some(p) => (p, true),
            None => (term, false),
        };
        let mut steps = path.split('/');
        let first = steps.next().unwrap_or_default();
        let (namespace, root) = match first.split_once(':') {
            Some((p, n)) => (el.resolve_prefix(p), n),
            None => (el.resolve_prefix(""), first),
        };
        let Some(namespace) = namespace else {
            return Err(FilterError::Expression(format!(
                "undeclared prefix in {term:?}"
            )));
        };
        let rest: Vec<&str> = steps.collect();
        if rest.iter().any(|s| s.is_empty()) || root.is_empty() {
            return Err(FilterError::Expression(format!("malformed term {term:?}")));
        }
        if namespace != ns::BG {
            continue;
        }
        for t in Topic::ALL {
            let (r, leaf) = t.path();
            let step = |pat: &str, name: &str| pat == "*" || pat == name;
            let hit = match rest.as_slice() {
                [] => step(root, r) && subtree,
                [l] => step(root, r) && step(l, leaf),
                _ => false,
            };
            if hit {
                mask |= t.bit();
            }
        }
    }
    if mask == 0 {
        return Err(FilterError::Expression(format!(
            "{:?} selects none of this node's topics (bg:Server/State, bg:Ownership/Resource, \
             bg:Ownership/Conflict, bg:Ownership/Unplaced, bg:Failover/Completed, \
             bg:Failover/Failback, bg:Connector/Failed, bg:Connector/Recovered)",
            el.text()
        )));
    }
    Ok(TopicMask(mask))
}

/// Writes the `wstop:TopicSet` of `GetEventProperties`: every topic with its message
/// description.
pub fn write_topic_set(o: &mut XmlOut) {
    o.open("wstop:TopicSet", &[]);
    let mut roots: Vec<&str> = Vec::new();
    for t in Topic::ALL {
        let root = t.path().0;
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    for root in roots {
        let name = format!("bg:{root}");
        o.open(&name, &[]);
        for t in Topic::ALL.into_iter().filter(|t| t.path().0 == root) {
            let leaf = format!("bg:{}", t.path().1);
            o.open(&leaf, &[("wstop:topic", "true")]);
            o.open(
                "tt:MessageDescription",
                &[("IsProperty", if t.is_property() { "true" } else { "false" })],
            );
            o.open("tt:Source", &[]);
            for n in t.source() {
                o.empty(
                    "tt:SimpleItemDescription",
                    &[("Name", n), ("Type", "xs:string")],
                );
            }
            o.close("tt:Source");
            o.open("tt:Data", &[]);
            for (n, ty) in t.data() {
                o.empty("tt:SimpleItemDescription", &[("Name", n), ("Type", ty)]);
            }
            o.close("tt:Data");
            o.close("tt:MessageDescription");
            o.close(&leaf);
        }
        o.close(&name);
    }
    o.close("wstop:TopicSet");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onvif::xml;

    fn expr(text: &str) -> Result<TopicMask, FilterError> {
        let doc = format!(
            r#"<wsnt:TopicExpression xmlns:wsnt="{}" xmlns:bg="{}" xmlns:tns1="{}" Dialect="{CONCRETE_SET}">{text}</wsnt:TopicExpression>"#,
            ns::WSNT,
            ns::BG,
            ns::TNS1
        );
        parse_topic_expression(&xml::parse(doc.as_bytes()).unwrap())
    }

    #[test]
    fn topic_expressions() {
        assert_eq!(
            expr("bg:Failover/Completed"),
            Ok(TopicMask::of(&[Topic::FailoverCompleted]))
        );
        assert_eq!(
            expr("bg:Failover//.|bg:Server/State"),
            Ok(TopicMask::of(&[
                Topic::FailoverCompleted,
                Topic::FailoverFailback,
                Topic::ServerState
            ]))
        );
        assert_eq!(
            expr("bg:*/Resource | tns1:Device//."),
            Ok(TopicMask::of(&[Topic::OwnershipResource]))
        );
        assert!(matches!(
            expr("tns1:Device//."),
            Err(FilterError::Expression(_))
        ));
        assert!(matches!(expr("zz:A/B"), Err(FilterError::Expression(_))));
        assert!(matches!(
            expr("bg:Failover"),
            Err(FilterError::Expression(_))
        ));
    }
}
