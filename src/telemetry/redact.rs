//! Admin URLs as shown to anyone but the HTTP client: `/metrics` (served without the token),
//! span attributes and log lines. The OpenTelemetry HTTP conventions ask for `url.full` with
//! its userinfo replaced by `REDACTED:REDACTED`; query values are replaced too, since an admin
//! URL has no business carrying one that is not a secret.

const REDACTED: &str = "REDACTED";

/// `url` with its userinfo and every query value replaced by `REDACTED`. Anything else is kept
/// byte for byte (no parsing that would add a slash or lower-case a host), so a label value
/// stays the address the operator wrote.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            out.push_str(REDACTED);
            if userinfo.contains(':') {
                out.push(':');
                out.push_str(REDACTED);
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) => format!("{k}={REDACTED}"),
                    None => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

/// `text` with every occurrence of `url` replaced by its redacted form: for error messages of
/// the HTTP client, which quote the URL they were given.
pub fn redact_in(text: &str, url: &str) -> String {
    let shown = redact_url(url);
    if shown == url {
        return text.to_string();
    }
    text.replace(url, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_query_values_are_redacted_the_rest_kept() {
        assert_eq!(
            redact_url("http://user:s3cret@host:8080/xxl-job-admin"),
            "http://REDACTED:REDACTED@host:8080/xxl-job-admin"
        );
        assert_eq!(
            redact_url("https://tok3n@host/xxl-job-admin/api/callback"),
            "https://REDACTED@host/xxl-job-admin/api/callback"
        );
        assert_eq!(
            redact_url("http://h/a?access_token=abc&x=1&flag#frag"),
            "http://h/a?access_token=REDACTED&x=REDACTED&flag#frag"
        );
        // Unchanged: no slash added, case kept.
        for plain in [
            "http://Host:8080",
            "http://127.0.0.1:1/xxl-job-admin",
            "host:1",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
        // An `@` in the path is not userinfo.
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        // A password with an `@` in it (badly escaped) is still hidden whole.
        assert_eq!(
            redact_url("http://u:p@ss@h/x"),
            "http://REDACTED:REDACTED@h/x"
        );
        assert_eq!(
            redact_in(
                "error for url (http://u:pw@h/api/x): refused",
                "http://u:pw@h/api/x"
            ),
            "error for url (http://REDACTED:REDACTED@h/api/x): refused"
        );
    }
}
