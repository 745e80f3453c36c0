//! Downloads collector configs from wherever a task points (section 4).
//!
//! The config host may be anyone, so nothing of the agent goes with the
//! request: no agent headers, never the key. `https://` only unless
//! `OUTPOST_ALLOW_HTTP_CONFIG`; at most 1 MiB; redirects followed by hand (at
//! most 3) so that one from https down to http is refused even when http is
//! allowed.
//!
//! A task could also point the agent at what only the device can reach: the
//! cloud metadata service on 169.254.169.254 hands out the VM's credentials
//! to whoever asks from inside. So link-local addresses (169.254.0.0/16 and
//! fe80::/10) are refused unless `OUTPOST_ALLOW_LINK_LOCAL_CONFIG`: an IP
//! literal when the task is checked, a name when it resolves, on every hop.
//!
//! Downloads follow the agent's one proxy rule (`proxy.rs`), chosen for
//! each hop. Through a proxy the proxy resolves the name, so the agent
//! resolves it first itself: a name that resolves here only to link-local
//! addresses is refused all the same (one this device cannot resolve is
//! left to the proxy, whose own network it is then).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
pub const MAX_REDIRECTS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a download failed; the message names the URL and what went wrong.
#[derive(Debug, PartialEq)]
pub struct FetchError(pub String);

/// Which config URLs a task may name.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UrlPolicy {
    /// `OUTPOST_ALLOW_HTTP_CONFIG`
    pub allow_http: bool,
    /// `OUTPOST_ALLOW_LINK_LOCAL_CONFIG`
    pub allow_link_local: bool,
}

pub struct Fetcher {
    agent: ureq::Agent,
    policy: UrlPolicy,
    proxy: crate::proxy::ProxyRule,
}

/// Link-local: where cloud metadata services answer, and nothing a config
/// host should be. IPv4 addresses mapped into IPv6 count as what they map.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => v6.is_unicast_link_local(),
        },
    }
}

/// The system resolver, with link-local answers dropped: a name that
/// resolves only to them is refused before anything connects.
#[derive(Debug)]
struct GuardedResolver {
    inner: DefaultResolver,
    allow_link_local: bool,
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let found = self.inner.resolve(uri, config, timeout)?;
        if self.allow_link_local {
            return Ok(found);
        }
        let mut kept = self.empty();
        found
            .iter()
            .filter(|a: &&SocketAddr| !is_link_local(a.ip()))
            .for_each(|a| kept.push(*a));
        if kept.is_empty() {
            return Err(ureq::Error::Io(std::io::Error::other(format!(
                "{} resolves only to link-local addresses ({}), refused (OUTPOST_ALLOW_LINK_LOCAL_CONFIG)",
                uri.host().unwrap_or(""),
                found
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))));
        }
        Ok(kept)
    }
}

impl Fetcher {
    pub fn new(
        tls: ureq::tls::TlsConfig,
        policy: UrlPolicy,
        proxy: crate::proxy::ProxyRule,
    ) -> Fetcher {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(TOTAL_TIMEOUT))
            .tls_config(tls)
            .user_agent(format!("outpost/{}", crate::VERSION))
            // Chosen per hop by the agent's own rule, never read by ureq
            // from the environment.
            .proxy(None)
            .build();
        let resolver = GuardedResolver {
            inner: DefaultResolver::default(),
            allow_link_local: policy.allow_link_local,
        };
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
        Fetcher {
            agent,
            policy,
            proxy,
        }
    }

    /// Whether `url` may be fetched at all (checked before a task runs).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        check_url(url, self.policy)
    }

    pub fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.fetch_at_most(url, MAX_CONFIG_BYTES, "config")
    }

    /// [`Fetcher::fetch`] with another size limit (the agent's own program,
    /// section 4.3); `what` names the body in the error. Never inlined: one
    /// copy of the download code for both callers (binary size).
    #[inline(never)]
    pub fn fetch_at_most(&self, url: &str, max: u64, what: &str) -> Result<Vec<u8>, FetchError> {
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            check_url(&current, self.policy).map_err(FetchError)?;
            let via = self.proxy.via(&current);
            if !via.is_empty() && !self.policy.allow_link_local {
                refuse_link_local_name(&current).map_err(FetchError)?;
            }
            let mut response = self
                .agent
                .get(&current)
                .config()
                .proxy(self.proxy.for_url(&current))
                .build()
                .call()
                .map_err(|e| FetchError(format!("GET {current}: {e}{via}")))?;
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
                .limit(max)
                .read_to_vec()
                .map_err(|e| match e {
                    ureq::Error::BodyExceedsLimit(_) => {
                        FetchError(format!("GET {current}: {what} larger than {max} bytes"))
                    }
                    other => FetchError(format!("GET {current}: {other}")),
                });
        }
        Err(FetchError(format!(
            "GET {url}: more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// Before a proxied request: the URL's name resolved here, and refused if
/// every address it has is link-local. A name that does not resolve here
/// passes (the proxy resolves it).
fn refuse_link_local_name(url: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let target = if authority.starts_with('[')
        || authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    let Ok(addresses) = target.to_socket_addrs() else {
        return Ok(());
    };
    let ips: Vec<IpAddr> = addresses.map(|a| a.ip()).collect();
    if !ips.is_empty() && ips.iter().all(|ip| is_link_local(*ip)) {
        return Err(format!(
            "{authority} resolves only to link-local addresses ({}), refused (OUTPOST_ALLOW_LINK_LOCAL_CONFIG)",
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

pub fn check_url(url: &str, policy: UrlPolicy) -> Result<(), String> {
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        if !policy.allow_http {
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
    if !policy.allow_link_local
        && let Some(ip) = host_ip(host)
        && is_link_local(ip)
    {
        return Err(format!(
            "config_url: {url:?} points at the link-local address {ip}, where cloud metadata services answer; refused (OUTPOST_ALLOW_LINK_LOCAL_CONFIG)"
        ));
    }
    Ok(())
}

/// The IP address an authority (`user@host:port`, `[v6]:port`) names, if
/// it names one literally.
fn host_ip(authority: &str) -> Option<IpAddr> {
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = host.strip_prefix('[') {
        // A zone (`%25eth0`) is no part of the address.
        return v6.split([']', '%']).next()?.parse().ok();
    }
    host.split(':').next()?.parse().ok()
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

    const HTTP: UrlPolicy = UrlPolicy {
        allow_http: true,
        allow_link_local: false,
    };

    #[test]
    fn urls() {
        let strict = UrlPolicy::default();
        assert!(check_url("https://c.example/x.yaml", strict).is_ok());
        assert!(
            check_url("http://c.example/x.yaml", strict)
                .unwrap_err()
                .contains("OUTPOST_ALLOW_HTTP_CONFIG")
        );
        assert!(check_url("http://c.example/x.yaml", HTTP).is_ok());
        assert!(check_url("file:///etc/shadow", HTTP).is_err());
        assert!(check_url("https:///x", HTTP).is_err());
    }

    #[test]
    fn link_local_literals_are_refused_unless_allowed() {
        for url in [
            "http://169.254.169.254/latest/meta-data/iam/",
            "http://169.254.0.1:8080/x",
            "http://user@169.254.169.254/x",
            "http://[fe80::1]/x",
            "http://[fe80::a9fe:a9fe%25eth0]/x",
            "http://[::ffff:169.254.169.254]/x",
        ] {
            let why = check_url(url, HTTP).unwrap_err();
            assert!(
                why.contains("OUTPOST_ALLOW_LINK_LOCAL_CONFIG"),
                "{url}: {why}"
            );
            let allowed = UrlPolicy {
                allow_http: true,
                allow_link_local: true,
            };
            assert!(check_url(url, allowed).is_ok(), "{url}");
        }
        for url in [
            "http://169.253.1.1/x",
            "http://127.0.0.1:80/x",
            "http://[::1]/x",
        ] {
            assert!(check_url(url, HTTP).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_name_that_resolves_to_link_local_is_refused_on_connect() {
        // A numeric host the URL check does not read as an address, but the
        // resolver does: 2852039166 is 169.254.169.254.
        let fetcher = Fetcher::new(
            ureq::tls::TlsConfig::default(),
            HTTP,
            crate::proxy::ProxyRule::default(),
        );
        let err = fetcher.fetch("http://2852039166/latest/").unwrap_err();
        assert!(err.0.contains("link-local"), "{err:?}");
    }

    #[test]
    fn redirect_targets() {
        assert_eq!(resolve("https://a/b/c", "https://d/e"), "https://d/e");
        assert_eq!(resolve("https://a/b/c", "/x"), "https://a/x");
        assert_eq!(resolve("https://a/b/c", "x"), "https://a/b/x");
        assert_eq!(resolve("https://a", "//d/e"), "https://d/e");
    }
}
