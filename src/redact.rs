//! Secrets out of what people see: URLs with their credentials (`user:password@`, and query
//! parameters named like a credential: `?token=`, `api_key=`, `sig=`, ...) replaced by `***`,
//! in API answers, logs and error texts.
//!
//! [`url`] redacts one URL as written (a template's `{{ ... }}` stays as it is); [`text`] every
//! URL inside a text, such as an HTTP client's error (`error sending request for url (...)`).

/// Parts of a query parameter's name that make it a credential (compared in lower case).
const CREDENTIAL_NAMES: [&str; 9] = [
    "token",
    "secret",
    "pass",
    "pwd",
    "key",
    "auth",
    "sig",
    "credential",
    "session",
];

/// What replaces a secret.
pub const MASK: &str = "***";

/// Whether a query parameter named `name` holds a credential.
pub fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_NAMES.iter().any(|c| name.contains(c))
}

/// `url` with the user info of its authority and the values of credential-like query
/// parameters replaced by [`MASK`]. Anything else is kept as written.
pub fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(MASK);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_len..];
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((name, value)) if !value.is_empty() && is_credential_name(name) => {
                        format!("{name}={MASK}")
                    }
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

/// Whether `url` carries credentials [`url`] would hide.
pub fn has_credentials(u: &str) -> bool {
    url(u) != u
}

/// `text` with every URL in it (`scheme://...` up to a space, quote, bracket or parenthesis)
/// passed through [`url`].
pub fn text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters, digits, `+`, `-`, `.` just before `://`.
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |p| p + 1);
        let end = rest[i..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '(' | ')' | '`')
            })
            .map_or(rest.len(), |p| i + p);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cases = [
            ("http://psim:8080/hook", "http://psim:8080/hook"),
            (
                "https://user:pa55@psim.example.com/hook?token=abc&site=hq#x",
                "https://***@psim.example.com/hook?token=***&site=hq#x",
            ),
            ("http://user@h/", "http://***@h/"),
            (
                "http://h/e?api_key=1&apiKey=2&X-Amz-Signature=3&sig=4&name=n",
                "http://h/e?api_key=***&apiKey=***&X-Amz-Signature=***&sig=***&name=n",
            ),
            ("http://h/a@b", "http://h/a@b"),
            ("http://h/?token=", "http://h/?token="),
            (
                "http://{{ data.new_server.address }}/x?token=s",
                "http://{{ data.new_server.address }}/x?token=***",
            ),
            ("not a url", "not a url"),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
        }
        assert!(has_credentials("http://a:b@h/"));
        assert!(!has_credentials("http://h/?site=hq"));
    }

    #[test]
    fn texts() {
        assert_eq!(
            text(
                "error sending request for url (http://u:p@10.0.0.5:81/hook?token=t): connection refused"
            ),
            "error sending request for url (http://***@10.0.0.5:81/hook?token=***): connection refused"
        );
        assert_eq!(
            text("two: https://a:b@x/ and \"http://y/?secret=z\""),
            "two: https://***@x/ and \"http://y/?secret=***\""
        );
        assert_eq!(text("nothing here"), "nothing here");
    }
}
