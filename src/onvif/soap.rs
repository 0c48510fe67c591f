//! SOAP 1.2 envelopes: reading a request (the operation element, the WS-Security and
//! WS-Addressing headers), writing a response or a fault.

use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::time::{format_datetime, format_duration};
use super::xml::{self, Element, ParseError, XmlOut};

/// Namespace URIs, and the prefixes responses declare for them.
pub mod ns {
    pub const ENV: &str = "http://www.w3.org/2003/05/soap-envelope";
    pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    pub const WSA: &str = "http://www.w3.org/2005/08/addressing";
    pub const WSSE: &str =
        "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
    pub const WSU: &str =
        "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
    pub const TT: &str = "http://www.onvif.org/ver10/schema";
    pub const TDS: &str = "http://www.onvif.org/ver10/device/wsdl";
    pub const TEV: &str = "http://www.onvif.org/ver10/events/wsdl";
    pub const TER: &str = "http://www.onvif.org/ver10/error";
    pub const WSNT: &str = "http://docs.oasis-open.org/wsn/b-2";
    pub const WSTOP: &str = "http://docs.oasis-open.org/wsn/t-1";
    pub const WSRF_BF: &str = "http://docs.oasis-open.org/wsrf/bf-2";
    pub const WSRF_R: &str = "http://docs.oasis-open.org/wsrf/r-2";
    pub const TNS1: &str = "http://www.onvif.org/ver10/topics";
    pub const XS: &str = "http://www.w3.org/2001/XMLSchema";
    /// buddygate's topic namespace.
    pub const BG: &str = "https://buddygate.dev/onvif/topics";
}

/// Every namespace a response may use, declared once on the envelope (topic expressions and
/// fault codes are QNames in text, so their prefixes must be in scope).
pub const ENVELOPE_NS: &[(&str, &str)] = &[
    ("xmlns:env", ns::ENV),
    ("xmlns:wsa", ns::WSA),
    ("xmlns:tt", ns::TT),
    ("xmlns:tds", ns::TDS),
    ("xmlns:tev", ns::TEV),
    ("xmlns:ter", ns::TER),
    ("xmlns:wsnt", ns::WSNT),
    ("xmlns:wstop", ns::WSTOP),
    ("xmlns:wsrf-bf", ns::WSRF_BF),
    ("xmlns:wsrf-r", ns::WSRF_R),
    ("xmlns:tns1", ns::TNS1),
    ("xmlns:xs", ns::XS),
    ("xmlns:bg", ns::BG),
];

/// WS-Addressing action of faults.
pub const FAULT_ACTION: &str = "http://www.w3.org/2005/08/addressing/soap/fault";

/// A request, read.
#[derive(Debug)]
pub struct Request {
    /// The operation: the first element in the body.
    pub op: Element,
    /// `wsse:Security`, if sent.
    pub security: Option<Element>,
    pub message_id: Option<String>,
    pub action: Option<String>,
    pub to: Option<String>,
}

/// Reads a SOAP 1.2 envelope.
pub fn parse_request(bytes: &[u8]) -> Result<Request, Fault> {
    let root = xml::parse(bytes).map_err(|e| match e {
        ParseError::TooDeep | ParseError::TooMany => {
            Fault::sender(&["ter:InvalidArgs"], e.to_string())
        }
        _ => Fault::sender(&["ter:WellFormed"], e.to_string()),
    })?;
    if root.name != "Envelope" || (root.ns != ns::ENV && root.ns != ns::SOAP11) {
        return Err(Fault::sender(
            &["ter:Tag"],
            "the root element is not a SOAP envelope",
        ));
    }
    if root.ns == ns::SOAP11 {
        return Err(Fault::new(
            Code::VersionMismatch,
            &[],
            "SOAP 1.1 is not served; send SOAP 1.2 (http://www.w3.org/2003/05/soap-envelope)",
        ));
    }
    let header = root.child(ns::ENV, "Header");
    let mut req_security = None;
    let (mut message_id, mut action, mut to) = (None, None, None);
    for h in header.map(|h| h.children.as_slice()).unwrap_or_default() {
        match (h.ns.as_str(), h.name.as_str()) {
            (ns::WSSE, "Security") => req_security = Some(h.clone()),
            (ns::WSA, "MessageID") => message_id = Some(h.text().to_string()),
            (ns::WSA, "Action") => action = Some(h.text().to_string()),
            (ns::WSA, "To") => to = Some(h.text().to_string()),
            (ns::WSA, _) => {}
            _ => {
                let must = h
                    .attr(ns::ENV, "mustUnderstand")
                    .is_some_and(|v| matches!(v.trim(), "true" | "1"));
                if must {
                    return Err(Fault::new(
                        Code::MustUnderstand,
                        &[],
                        format!("header {{{}}}{} is not understood", h.ns, h.name),
                    ));
                }
            }
        }
    }
    let body = root
        .child(ns::ENV, "Body")
        .ok_or_else(|| Fault::sender(&["ter:Tag"], "the envelope has no Body"))?;
    let op = body
        .children
        .first()
        .cloned()
        .ok_or_else(|| Fault::sender(&["ter:Tag"], "the Body is empty"))?;
    Ok(Request {
        op,
        security: req_security,
        message_id,
        action,
        to,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Sender,
    Receiver,
    VersionMismatch,
    MustUnderstand,
}

impl Code {
    fn qname(self) -> &'static str {
        match self {
            Code::Sender => "env:Sender",
            Code::Receiver => "env:Receiver",
            Code::VersionMismatch => "env:VersionMismatch",
            Code::MustUnderstand => "env:MustUnderstand",
        }
    }
}

/// What a fault carries in `env:Detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// `tev:PullMessagesFaultResponse`.
    PullMessages {
        max_timeout: Duration,
        max_limit: u32,
    },
    /// `wsrf-r:ResourceUnknownFault`: no such subscription (never was, expired or ended).
    ResourceUnknown,
    UnacceptableInitialTerminationTime,
    UnacceptableTerminationTime,
    InvalidTopicExpression,
    TopicExpressionDialectUnknown,
    InvalidMessageContentExpression,
    SubscribeCreationFailed,
}

/// A SOAP fault, answered with HTTP 400 (sender) or 500 (the rest) unless `status` says
/// otherwise (the SOAP 1.2 HTTP binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub status: StatusCode,
    pub code: Code,
    /// Nested subcodes, outermost first (`ter:...` QNames).
    pub subcodes: Vec<&'static str>,
    pub reason: String,
    pub detail: Option<Detail>,
}

impl Fault {
    pub fn new(code: Code, subcodes: &[&'static str], reason: impl Into<String>) -> Self {
        let status = match code {
            Code::Sender => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            code,
            subcodes: subcodes.to_vec(),
            reason: reason.into(),
            detail: None,
        }
    }

    pub fn sender(subcodes: &[&'static str], reason: impl Into<String>) -> Self {
        Self::new(Code::Sender, subcodes, reason)
    }

    pub fn receiver(subcodes: &[&'static str], reason: impl Into<String>) -> Self {
        Self::new(Code::Receiver, subcodes, reason)
    }

    /// `env:Sender/ter:InvalidArgVal`.
    pub fn invalid_arg(reason: impl Into<String>) -> Self {
        Self::sender(&["ter:InvalidArgVal"], reason)
    }

    /// `env:Sender/ter:NotAuthorized`.
    pub fn not_authorized(reason: impl Into<String>) -> Self {
        Self::sender(&["ter:NotAuthorized"], reason)
    }

    /// `env:Receiver/ter:ActionNotSupported`.
    pub fn not_supported(reason: impl Into<String>) -> Self {
        Self::receiver(&["ter:ActionNotSupported"], reason)
    }

    pub fn with_detail(mut self, detail: Detail) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn write_detail(&self, o: &mut XmlOut, now: SystemTime) {
        let Some(detail) = &self.detail else {
            return;
        };
        o.open("env:Detail", &[]);
        let base = |o: &mut XmlOut, name: &str| {
            o.open(name, &[]);
            o.leaf("wsrf-bf:Timestamp", &format_datetime(now));
            o.leaf_with("wsrf-bf:Description", &[("xml:lang", "en")], &self.reason);
            o.close(name);
        };
        match detail {
            Detail::PullMessages {
                max_timeout,
                max_limit,
            } => {
                o.open("tev:PullMessagesFaultResponse", &[]);
                o.leaf("tev:MaxTimeout", &format_duration(*max_timeout));
                o.leaf("tev:MaxMessageLimit", &max_limit.to_string());
                o.close("tev:PullMessagesFaultResponse");
            }
            Detail::ResourceUnknown => base(o, "wsrf-r:ResourceUnknownFault"),
            Detail::UnacceptableInitialTerminationTime => {
                o.open("wsnt:UnacceptableInitialTerminationTimeFault", &[]);
                o.leaf("wsrf-bf:Timestamp", &format_datetime(now));
                o.leaf_with("wsrf-bf:Description", &[("xml:lang", "en")], &self.reason);
                o.leaf("wsnt:MinimumTime", &format_datetime(now));
                o.close("wsnt:UnacceptableInitialTerminationTimeFault");
            }
            Detail::UnacceptableTerminationTime => {
                o.open("wsnt:UnacceptableTerminationTimeFault", &[]);
                o.leaf("wsrf-bf:Timestamp", &format_datetime(now));
                o.leaf_with("wsrf-bf:Description", &[("xml:lang", "en")], &self.reason);
                o.leaf("wsnt:MinimumTime", &format_datetime(now));
                o.close("wsnt:UnacceptableTerminationTimeFault");
            }
            Detail::InvalidTopicExpression => base(o, "wsnt:InvalidTopicExpressionFault"),
            Detail::TopicExpressionDialectUnknown => {
                base(o, "wsnt:TopicExpressionDialectUnknownFault")
            }
            Detail::InvalidMessageContentExpression => {
                base(o, "wsnt:InvalidMessageContentExpressionFault")
            }
            Detail::SubscribeCreationFailed => base(o, "wsnt:SubscribeCreationFailedFault"),
        }
        o.close("env:Detail");
    }

    /// The fault as an envelope.
    pub fn to_xml(&self, relates_to: Option<&str>, now: SystemTime) -> String {
        let mut o = XmlOut::new();
        o.open("env:Envelope", ENVELOPE_NS);
        if let Some(id) = relates_to {
            o.open("env:Header", &[]);
            o.leaf("wsa:Action", FAULT_ACTION);
            o.leaf("wsa:RelatesTo", id);
            o.close("env:Header");
        }
        o.open("env:Body", &[]);
        o.open("env:Fault", &[]);
        o.open("env:Code", &[]);
        o.leaf("env:Value", self.code.qname());
        for s in &self.subcodes {
            o.open("env:Subcode", &[]);
            o.leaf("env:Value", s);
        }
        for _ in &self.subcodes {
            o.close("env:Subcode");
        }
        o.close("env:Code");
        o.open("env:Reason", &[]);
        o.leaf_with("env:Text", &[("xml:lang", "en")], &self.reason);
        o.close("env:Reason");
        self.write_detail(&mut o, now);
        o.close("env:Fault");
        o.close("env:Body");
        o.close("env:Envelope");
        o.finish()
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code.qname())?;
        for s in &self.subcodes {
            write!(f, "/{s}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Content type of every SOAP 1.2 message.
pub const CONTENT_TYPE: &str = "application/soap+xml; charset=utf-8";

/// Writes a response envelope: WS-Addressing headers when the request had them, then the body
/// written by `body`.
pub fn envelope(
    action: Option<&str>,
    relates_to: Option<&str>,
    body: impl FnOnce(&mut XmlOut),
) -> String {
    let mut o = XmlOut::new();
    o.open("env:Envelope", ENVELOPE_NS);
    if action.is_some() || relates_to.is_some() {
        o.open("env:Header", &[]);
        if let Some(a) = action {
            o.leaf("wsa:Action", a);
        }
        if let Some(r) = relates_to {
            o.leaf("wsa:RelatesTo", r);
        }
        o.close("env:Header");
    }
    o.open("env:Body", &[]);
    body(&mut o);
    o.close("env:Body");
    o.close("env:Envelope");
    o.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(header: &str, body: &str) -> String {
        format!(
            r#"<s:Envelope xmlns:s="{}" xmlns:a="{}"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
            ns::ENV,
            ns::WSA
        )
    }

    #[test]
    fn reads_operation_and_addressing() {
        let r = parse_request(
            env(
                "<a:MessageID>urn:uuid:1</a:MessageID><a:Action>x</a:Action>",
                r#"<GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/>"#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.op.ns, ns::TDS);
        assert_eq!(r.op.name, "GetSystemDateAndTime");
        assert_eq!(r.message_id.as_deref(), Some("urn:uuid:1"));
        assert_eq!(r.action.as_deref(), Some("x"));
        assert!(r.security.is_none());
    }

    #[test]
    fn faults_for_bad_envelopes() {
        let code = |b: &str| parse_request(b.as_bytes()).unwrap_err();
        assert_eq!(code("<a>").subcodes, ["ter:WellFormed"]);
        assert_eq!(code("<a/>").subcodes, ["ter:Tag"]);
        assert_eq!(
            code(&format!(r#"<e:Envelope xmlns:e="{}"/>"#, ns::SOAP11)).code,
            Code::VersionMismatch
        );
        assert_eq!(code(&env("", "")).subcodes, ["ter:Tag"]);
        let must = env(r#"<x:Y xmlns:x="urn:x" s:mustUnderstand="true"/>"#, "<a/>");
        assert_eq!(code(&must).code, Code::MustUnderstand);
    }

    #[test]
    fn fault_xml_has_nested_subcodes() {
        let f = Fault::receiver(&["ter:Action", "ter:TooManySubscriptions"], "full");
        let x = f.to_xml(Some("urn:uuid:1"), SystemTime::UNIX_EPOCH);
        assert!(x.contains("<env:Value>env:Receiver</env:Value><env:Subcode><env:Value>ter:Action</env:Value><env:Subcode><env:Value>ter:TooManySubscriptions</env:Value></env:Subcode></env:Subcode>"), "{x}");
        assert!(x.contains("<wsa:RelatesTo>urn:uuid:1</wsa:RelatesTo>"));
    }
}
