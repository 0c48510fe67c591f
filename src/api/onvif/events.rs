//! The event service (`/onvif/event_service`) and the subscription managers
//! (`/onvif/subscription/{id}`): capabilities, the topic set, pull-point and push
//! subscriptions, pulling, synchronization, renewal and unsubscription.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::push::{self, PushAddresses};
use super::subscriptions::{Full, PullError, Subscription};
use super::{Ctx, Reply};
use crate::config::PushAllow;
use crate::onvif::messages::write_notification;
use crate::onvif::soap::{Detail, Fault, ns};
use crate::onvif::time::{format_datetime, parse_datetime, parse_duration};
use crate::onvif::topics::{
    CONCRETE_SET, FilterError, MESSAGE_CONTENT, TopicMask, WSTOP_DIALECTS, parse_topic_expression,
    write_topic_set,
};
use crate::onvif::xml::{Element, XmlOut};

/// The longest `PullMessages` timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest `PullMessages` message limit accepted.
pub const MAX_MESSAGE_LIMIT: u32 = 1000;
/// Termination when a request names none.
pub const DEFAULT_TERMINATION: Duration = Duration::from_secs(60);
/// Longer terminations are cut to this (the response says the time granted).
pub const MAX_TERMINATION: Duration = Duration::from_secs(24 * 3600);

fn tev_action(port: &str, op: &str) -> String {
    format!("{}/{port}/{op}Response", ns::TEV)
}

fn wsn_action(port: &str, op: &str) -> String {
    format!("http://docs.oasis-open.org/wsn/bw-2/{port}/{op}Response")
}

pub(super) fn write_capabilities(o: &mut XmlOut, max: &str) {
    o.empty(
        "tev:Capabilities",
        &[
            ("WSSubscriptionPolicySupport", "false"),
            ("WSPullPointSupport", "true"),
            ("WSPausableSubscriptionManagerInterfaceSupport", "false"),
            ("MaxNotificationProducers", max),
            ("MaxPullPoints", max),
            ("PersistentNotificationStorage", "false"),
        ],
    );
}

pub(super) fn service_capabilities(ctx: &Ctx<'_>) -> Reply {
    let max = ctx.onvif.subs.max.to_string();
    Reply::new(
        tev_action("EventPortType", "GetServiceCapabilities"),
        move |o: &mut XmlOut| {
            o.open("tev:GetServiceCapabilitiesResponse", &[]);
            write_capabilities(o, &max);
            o.close("tev:GetServiceCapabilitiesResponse");
        },
    )
}

pub(super) fn event_properties() -> Reply {
    Reply::new(
        tev_action("EventPortType", "GetEventProperties"),
        |o: &mut XmlOut| {
            o.open("tev:GetEventPropertiesResponse", &[]);
            o.leaf("tev:TopicNamespaceLocation", ns::BG);
            o.leaf("wsnt:FixedTopicSet", "true");
            write_topic_set(o);
            o.leaf("wsnt:TopicExpressionDialect", CONCRETE_SET);
            for d in WSTOP_DIALECTS {
                o.leaf("wsnt:TopicExpressionDialect", d);
            }
            o.leaf("tev:MessageContentFilterDialect", MESSAGE_CONTENT);
            o.leaf(
                "tev:MessageContentSchemaLocation",
                "http://www.onvif.org/onvif/ver10/schema/onvif.xsd",
            );
            o.close("tev:GetEventPropertiesResponse");
        },
    )
}

/// A `wsnt:AbsoluteOrRelativeTimeType` value as an absolute time, cut to
/// [`MAX_TERMINATION`]; `None` for an empty or nil element.
fn termination(el: Option<&Element>, now: SystemTime, detail: Detail) -> Result<SystemTime, Fault> {
    let text = el.map(Element::text).unwrap_or_default();
    if text.is_empty() {
        return Ok(now + DEFAULT_TERMINATION);
    }
    let bad =
        |why: &str| Fault::invalid_arg(format!("{why}: {text:?}")).with_detail(detail.clone());
    let at = if text.starts_with('P') {
        let d = parse_duration(text).ok_or_else(|| bad("not an xs:duration"))?;
        if d.is_zero() {
            return Err(bad("the termination time must be in the future"));
        }
        now + d
    } else {
        let t = parse_datetime(text).ok_or_else(|| bad("not an xs:dateTime or xs:duration"))?;
        if t <= now {
            return Err(bad("the termination time must be in the future"));
        }
        t
    };
    Ok(at.min(now + MAX_TERMINATION))
}

/// The topics a `Filter` selects (all without one).
fn filter(op: &Element) -> Result<TopicMask, Fault> {
    let Some(f) = op
        .child(ns::TEV, "Filter")
        .or_else(|| op.child(ns::WSNT, "Filter"))
    else {
        return Ok(TopicMask::ALL);
    };
    if f.child(ns::WSNT, "MessageContent").is_some() {
        return Err(
            Fault::invalid_arg("message content filters are not supported")
                .with_detail(Detail::InvalidMessageContentExpression),
        );
    }
    // Several expressions must all hold (WS-BaseNotification): keep what each selects.
    let mut mask = TopicMask::ALL;
    for e in f
        .children
        .iter()
        .filter(|c| c.ns == ns::WSNT && c.name == "TopicExpression")
    {
        let m = parse_topic_expression(e).map_err(|err| match err {
            FilterError::Dialect(d) => {
                Fault::invalid_arg(format!("unknown topic expression dialect {d:?}"))
                    .with_detail(Detail::TopicExpressionDialectUnknown)
            }
            FilterError::Expression(why) => {
                Fault::invalid_arg(why).with_detail(Detail::InvalidTopicExpression)
            }
        })?;
        mask = mask.and(m);
    }
    if mask == TopicMask::NONE {
        return Err(
            Fault::invalid_arg("the topic expressions select no topic together")
                .with_detail(Detail::InvalidTopicExpression),
        );
    }
    Ok(mask)
}

fn too_many(full: Full) -> Fault {
    let reason = match full {
        Full::Node { max } => format!("this node serves at most {max} subscriptions at once"),
        Full::Account { max } => {
            format!("this account holds {max} subscriptions, as many as one account may")
        }
    };
    Fault::receiver(&["ter:Action", "ter:TooManySubscriptions"], reason)
        .with_detail(Detail::SubscribeCreationFailed)
}

fn write_reference(o: &mut XmlOut, name: &str, address: &str) {
    o.open(name, &[]);
    o.leaf("wsa:Address", address);
    o.close(name);
}

pub(super) fn create_pull_point(ctx: &Ctx<'_>, op: &Element, user: &str) -> Result<Reply, Fault> {
    let mask = filter(op)?;
    let until = termination(
        op.child(ns::TEV, "InitialTerminationTime"),
        ctx.now,
        Detail::UnacceptableInitialTerminationTime,
    )?;
    ctx.onvif.start_hub();
    let sub = ctx
        .onvif
        .subs
        .create(&ctx.onvif.hub, mask, None, until, user)
        .map_err(too_many)?;
    tracing::debug!(subscription = %sub.id, "ONVIF pull-point subscription created.");
    Ok(subscribed(
        tev_action("EventPortType", "CreatePullPointSubscription"),
        "tev:CreatePullPointSubscriptionResponse",
        "tev:SubscriptionReference",
        ctx.subscription_url(&sub.id),
        ctx.now,
        until,
    ))
}

/// The answer to a new subscription: its address, the time now and when it ends.
fn subscribed(
    action: String,
    response: &'static str,
    reference: &'static str,
    address: String,
    now: SystemTime,
    until: SystemTime,
) -> Reply {
    let (now, end) = (format_datetime(now), format_datetime(until));
    Reply::new(action, move |o: &mut XmlOut| {
        o.open(response, &[]);
        write_reference(o, reference, &address);
        o.leaf("wsnt:CurrentTime", &now);
        o.leaf("wsnt:TerminationTime", &end);
        o.close(response);
    })
}

/// Whether `[api] onvif_push_allow` lets a push subscription send to `url`.
fn push_allowed(allow: &[PushAllow], url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    allow.iter().any(|a| a.allows(host, port))
}

pub(super) fn subscribe(ctx: &Ctx<'_>, op: &Element, user: &str) -> Result<Reply, Fault> {
    let consumer = op
        .child(ns::WSNT, "ConsumerReference")
        .and_then(|c| c.child(ns::WSA, "Address"))
        .map(|a| a.text().to_string())
        .ok_or_else(|| Fault::invalid_arg("Subscribe needs ConsumerReference/Address"))?;
    let url = match reqwest::Url::parse(&consumer) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        _ => {
            return Err(Fault::invalid_arg(format!(
                "the consumer address must be an http(s) URL, got {:?}",
                crate::redact::url(&consumer)
            ))
            .with_detail(Detail::SubscribeCreationFailed));
        }
    };
    if !push_allowed(&ctx.onvif.shared.access.onvif_push_allow, &url) {
        tracing::warn!(consumer = %crate::redact::url(&consumer), client = ?ctx.client, "ONVIF push Subscribe refused: the consumer is not in [api] onvif_push_allow.");
        return Err(Fault::invalid_arg(format!(
            "this node does not push to {}: the site's [api] onvif_push_allow does not list it",
            url.host_str().unwrap_or("?")
        ))
        .with_detail(Detail::SubscribeCreationFailed));
    }
    let mask = filter(op)?;
    let until = termination(
        op.child(ns::WSNT, "InitialTerminationTime"),
        ctx.now,
        Detail::UnacceptableInitialTerminationTime,
    )?;
    let onvif = ctx.onvif;
    onvif.start_hub();
    let sub = onvif
        .subs
        .create(&onvif.hub, mask, Some(consumer.clone()), until, user)
        .map_err(too_many)?;
    tracing::info!(subscription = %sub.id, consumer = %crate::redact::url(&consumer), "ONVIF push subscription created.");
    let address = ctx.subscription_url(&sub.id);
    tokio::spawn(push::push(
        sub,
        onvif.hub.clone(),
        onvif.subs.clone(),
        onvif.client.clone(),
        PushAddresses {
            subscription: address.clone(),
            producer: ctx.events_url(),
        },
        onvif.cancel.clone(),
    ));
    Ok(subscribed(
        wsn_action("NotificationProducer", "Subscribe"),
        "wsnt:SubscribeResponse",
        "wsnt:SubscriptionReference",
        address,
        ctx.now,
        until,
    ))
}

fn unknown_subscription(id: &str) -> Fault {
    Fault::invalid_arg(format!(
        "no subscription {id:?} on this node (never made, expired, unsubscribed, or the node restarted)"
    ))
    .with_detail(Detail::ResourceUnknown)
}

fn lookup(ctx: &Ctx<'_>, id: &str, user: &str) -> Result<Arc<Subscription>, Fault> {
    ctx.onvif
        .subs
        .get(id, user, ctx.now)
        .ok_or_else(|| unknown_subscription(id))
}

fn pull_fault(reason: String) -> Fault {
    Fault::invalid_arg(reason).with_detail(Detail::PullMessages {
        max_timeout: MAX_TIMEOUT,
        max_limit: MAX_MESSAGE_LIMIT,
    })
}

pub(super) async fn pull_messages(
    ctx: &Ctx<'_>,
    id: &str,
    op: &Element,
    user: &str,
) -> Result<Reply, Fault> {
    let sub = lookup(ctx, id, user)?;
    if sub.consumer.is_some() {
        return Err(Fault::not_supported(
            "this is a push subscription: its messages go to the consumer",
        ));
    }
    let timeout_text = op
        .child(ns::TEV, "Timeout")
        .map(Element::text)
        .ok_or_else(|| pull_fault("PullMessages needs a Timeout".into()))?;
    let timeout = parse_duration(timeout_text)
        .ok_or_else(|| pull_fault(format!("Timeout is not an xs:duration: {timeout_text:?}")))?;
    if timeout > MAX_TIMEOUT {
        return Err(pull_fault(format!(
            "Timeout {timeout_text} is above the maximum PT{}S",
            MAX_TIMEOUT.as_secs()
        )));
    }
    let limit_text = op
        .child(ns::TEV, "MessageLimit")
        .map(Element::text)
        .ok_or_else(|| pull_fault("PullMessages needs a MessageLimit".into()))?;
    let limit: u32 = limit_text.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
        pull_fault(format!(
            "MessageLimit must be 1 or more, got {limit_text:?}"
        ))
    })?;
    if limit > MAX_MESSAGE_LIMIT {
        return Err(pull_fault(format!(
            "MessageLimit {limit} is above the maximum {MAX_MESSAGE_LIMIT}"
        )));
    }
    let onvif = ctx.onvif;
    let messages = sub
        .pull(&onvif.hub, timeout, limit as usize, &onvif.cancel)
        .await
        .map_err(|PullError::Busy| {
            Fault::receiver(
                &["ter:Action", "ter:PullInProgress"],
                "another PullMessages is waiting on this subscription",
            )
        })?;
    let now = format_datetime(SystemTime::now());
    let end = format_datetime(sub.termination());
    let address = ctx.subscription_url(id);
    Ok(Reply::new(
        tev_action("PullPointSubscription", "PullMessages"),
        move |o: &mut XmlOut| {
            o.open("tev:PullMessagesResponse", &[]);
            o.leaf("tev:CurrentTime", &now);
            o.leaf("tev:TerminationTime", &end);
            for m in &messages {
                write_notification(o, m, Some(&address), None);
            }
            o.close("tev:PullMessagesResponse");
        },
    ))
}

pub(super) async fn synchronize(ctx: &Ctx<'_>, id: &str, user: &str) -> Result<Reply, Fault> {
    let sub = lookup(ctx, id, user)?;
    ctx.onvif.start_hub();
    sub.synchronize(&ctx.onvif.hub).await;
    Ok(Reply::new(
        tev_action("PullPointSubscription", "SetSynchronizationPoint"),
        |o: &mut XmlOut| o.empty("tev:SetSynchronizationPointResponse", &[]),
    ))
}

pub(super) fn renew(ctx: &Ctx<'_>, id: &str, op: &Element, user: &str) -> Result<Reply, Fault> {
    let sub = lookup(ctx, id, user)?;
    let el = op.child(ns::WSNT, "TerminationTime");
    if el.is_none_or(|e| e.text().is_empty()) {
        return Err(Fault::invalid_arg("Renew needs a TerminationTime")
            .with_detail(Detail::UnacceptableTerminationTime));
    }
    let until = termination(el, ctx.now, Detail::UnacceptableTerminationTime)?;
    sub.set_termination(until);
    let now = format_datetime(ctx.now);
    let end = format_datetime(until);
    Ok(Reply::new(
        wsn_action("SubscriptionManager", "Renew"),
        move |o: &mut XmlOut| {
            o.open("wsnt:RenewResponse", &[]);
            o.leaf("wsnt:TerminationTime", &end);
            o.leaf("wsnt:CurrentTime", &now);
            o.close("wsnt:RenewResponse");
        },
    ))
}

pub(super) fn unsubscribe(ctx: &Ctx<'_>, id: &str, user: &str) -> Result<Reply, Fault> {
    lookup(ctx, id, user)?;
    ctx.onvif.subs.remove(id);
    tracing::debug!(subscription = %id, "ONVIF subscription ended by Unsubscribe.");
    Ok(Reply::new(
        wsn_action("SubscriptionManager", "Unsubscribe"),
        |o: &mut XmlOut| o.empty("wsnt:UnsubscribeResponse", &[]),
    ))
}
