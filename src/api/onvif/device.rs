//! The device service (`/onvif/device_service`): enough for a client to learn the time, who
//! this is, and where the event service is.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Ctx, Reply};
use crate::onvif::soap::{Fault, ns};
use crate::onvif::xml::{Element, XmlOut};

/// ONVIF version claimed for both services.
const VERSION: (&str, &str) = ("2", "21");

fn action(op: &str) -> String {
    format!("{}/{op}Response", ns::TDS)
}

/// `GetSystemDateAndTime`, open without authentication.
pub(super) fn system_date_and_time(now: SystemTime) -> Reply {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    Reply::new(action("GetSystemDateAndTime"), move |o: &mut XmlOut| {
        o.open("tds:GetSystemDateAndTimeResponse", &[]);
        o.open("tds:SystemDateAndTime", &[]);
        o.leaf("tt:DateTimeType", "NTP");
        o.leaf("tt:DaylightSavings", "false");
        o.open("tt:TimeZone", &[]);
        o.leaf("tt:TZ", "UTC0");
        o.close("tt:TimeZone");
        o.open("tt:UTCDateTime", &[]);
        o.open("tt:Time", &[]);
        o.leaf("tt:Hour", &hh.to_string());
        o.leaf("tt:Minute", &mm.to_string());
        o.leaf("tt:Second", &ss.to_string());
        o.close("tt:Time");
        o.open("tt:Date", &[]);
        o.leaf("tt:Year", &y.to_string());
        o.leaf("tt:Month", &m.to_string());
        o.leaf("tt:Day", &d.to_string());
        o.close("tt:Date");
        o.close("tt:UTCDateTime");
        o.close("tds:SystemDateAndTime");
        o.close("tds:GetSystemDateAndTimeResponse");
    })
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub(super) fn device_information(ctx: &Ctx<'_>) -> Reply {
    let (site, node) = ctx.site_and_node();
    Reply::new(action("GetDeviceInformation"), move |o: &mut XmlOut| {
        o.open("tds:GetDeviceInformationResponse", &[]);
        o.leaf("tds:Manufacturer", "buddygate");
        o.leaf("tds:Model", "buddygate failover node");
        o.leaf("tds:FirmwareVersion", env!("CARGO_PKG_VERSION"));
        o.leaf("tds:SerialNumber", &format!("{site}/{node}"));
        o.leaf("tds:HardwareId", &node);
        o.close("tds:GetDeviceInformationResponse");
    })
}

fn flag(op: &Element, name: &str) -> Result<bool, Fault> {
    match op.child(ns::TDS, name).map(Element::text) {
        None => Ok(false),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(Fault::invalid_arg(format!(
            "{name} must be a boolean, got {other:?}"
        ))),
    }
}

pub(super) fn services(ctx: &Ctx<'_>, op: &Element) -> Result<Reply, Fault> {
    let with_caps = flag(op, "IncludeCapability")?;
    let (device, events) = (ctx.device_url(), ctx.events_url());
    let max = ctx.onvif.subs.max.to_string();
    Ok(Reply::new(action("GetServices"), move |o: &mut XmlOut| {
        o.open("tds:GetServicesResponse", &[]);
        for (namespace, xaddr) in [(ns::TDS, &device), (ns::TEV, &events)] {
            o.open("tds:Service", &[]);
            o.leaf("tds:Namespace", namespace);
            o.leaf("tds:XAddr", xaddr);
            if with_caps && namespace == ns::TEV {
                o.open("tds:Capabilities", &[]);
                super::events::write_capabilities(o, &max);
                o.close("tds:Capabilities");
            }
            o.open("tds:Version", &[]);
            o.leaf("tt:Major", VERSION.0);
            o.leaf("tt:Minor", VERSION.1);
            o.close("tds:Version");
            o.close("tds:Service");
        }
        o.close("tds:GetServicesResponse");
    }))
}

pub(super) fn capabilities(ctx: &Ctx<'_>, op: &Element) -> Result<Reply, Fault> {
    let mut device = false;
    let mut events = false;
    let categories: Vec<&str> = op
        .children
        .iter()
        .filter(|c| c.ns == ns::TDS && c.name == "Category")
        .map(Element::text)
        .collect();
    for c in if categories.is_empty() {
        vec!["All"]
    } else {
        categories
    } {
        match c {
            "All" => (device, events) = (true, true),
            "Device" => device = true,
            "Events" => events = true,
            "Analytics" | "Imaging" | "Media" | "PTZ" => {
                return Err(Fault::receiver(
                    &["ter:ActionNotSupported", "ter:NoSuchService"],
                    format!("this node has no {c} service"),
                ));
            }
            other => {
                return Err(Fault::invalid_arg(format!("unknown Category {other:?}")));
            }
        }
    }
    let (device_url, events_url) = (ctx.device_url(), ctx.events_url());
    Ok(Reply::new(
        action("GetCapabilities"),
        move |o: &mut XmlOut| {
            o.open("tds:GetCapabilitiesResponse", &[]);
            o.open("tds:Capabilities", &[]);
            if device {
                o.open("tt:Device", &[]);
                o.leaf("tt:XAddr", &device_url);
                o.close("tt:Device");
            }
            if events {
                o.open("tt:Events", &[]);
                o.leaf("tt:XAddr", &events_url);
                o.leaf("tt:WSSubscriptionPolicySupport", "false");
                o.leaf("tt:WSPullPointSupport", "true");
                o.leaf("tt:WSPausableSubscriptionManagerInterfaceSupport", "false");
                o.close("tt:Events");
            }
            o.close("tds:Capabilities");
            o.close("tds:GetCapabilitiesResponse");
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
