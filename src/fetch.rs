//! Downloads collector configs from wherever a task points (section 4).
//!
//! The config host may be anyone, so nothing of the agent goes with the
//! request: no agent headers, never the key. `https://` only unless
//! `OUTPOST_ALLOW_HTTP_CONFIG`; at most 1 MiB; redirects followed by hand (at
//! most 3) so that one from https down to http is refused even when http is
//! allowed.

use std::time::Duration;

pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
pub const MAX_REDIRECTS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a download failed; the message names the URL and what went wrong.
#[derive(Debug, PartialEq)]
pub struct FetchError(pub String);

pub struct Fetcher {
    agent: ureq::Agent,
    allow_http: bool,
}

impl Fetcher {
    pub fn new(tls: ureq::tls::TlsConfig, allow_http: bool) -> Fetcher {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(TOTAL_TIMEOUT))
            .tls_config(tls)
            .user_agent(format!("outpost/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Fetcher { agent, allow_http }
    }

    /// Whether `url` may be fetched at all (checked before a task runs).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        check_url(url, self.allow_http)
    }

    pub fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            check_url(&current, self.allow_http).map_err(FetchError)?;
            let mut response = self
                .agent
                .get(&current)
                .call()
                .map_err(|e| FetchError(format!("GET {current}: {e}")))?;
            let status = response.status().as_u16();
            if (300..400).contains(&status) {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        FetchError(format!("GET {current}: HTTP {status} without a Location"))
                    })?;
                let next = resolve(&current, location);
                if current.starts_with("https://") && next.starts_with("http://") {
                    return Err(FetchError(format!(
                        "GET {current}: redirect from https down to http ({next}) refused"
                    )));
                }
                current = next;
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(FetchError(format!("GET {current}: HTTP {status}")));
            }
            return response
                .body_mut()
                .with_config()
                .limit(MAX_CONFIG_BYTES)
                .read_to_vec()
                .map_err(|e| match e {
                    ureq::Error::BodyExceedsLimit(_) => FetchError(format!(
                        "GET {current}: config larger than {MAX_CONFIG_BYTES} bytes"
                    )),
                    other => FetchError(format!("GET {current}: {other}")),
                });
        }
        Err(FetchError(format!(
            "GET {url}: more than {MAX_REDIRECTS} redirects"
        )))
    }
}

pub fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        if !allow_http {
            return Err(format!(
                "config_url: {url:?} is http://; only https:// is allowed (OUTPOST_ALLOW_HTTP_CONFIG)"
            ));
        }
        rest
    } else {
        return Err(format!("config_url: {url:?} must start with https://"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty()
        || url.len() > 2048
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("config_url: {url:?} is not a usable URL"));
    }
    Ok(())
}

/// Resolves a `Location` against the URL it came from.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{}{rest}", &base[..scheme_end]);
    }
    if location.starts_with('/') {
        return format!("{}{location}", &base[..authority_end]);
    }
    let path_end = base
        .rfind('/')
        .filter(|i| *i >= authority_end)
        .unwrap_or(authority_end);
    format!("{}/{location}", &base[..path_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://c.example/x.yaml", false).is_ok());
        assert!(
            check_url("http://c.example/x.yaml", false)
                .unwrap_err()
                .contains("OUTPOST_ALLOW_HTTP_CONFIG")
        );
        assert!(check_url("http://c.example/x.yaml", true).is_ok());
        assert!(check_url("file:///etc/shadow", true).is_err());
        assert!(check_url("https:///x", true).is_err());
    }

    #[test]
    fn redirect_targets() {
        assert_eq!(resolve("https://a/b/c", "https://d/e"), "https://d/e");
        assert_eq!(resolve("https://a/b/c", "/x"), "https://a/x");
        assert_eq!(resolve("https://a/b/c", "x"), "https://a/b/x");
        assert_eq!(resolve("https://a", "//d/e"), "https://d/e");
    }
}
