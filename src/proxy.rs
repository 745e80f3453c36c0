//! The one proxy rule for every outbound connection: the manager, config
//! downloads, the Pushgateway (PROTOCOL.md section 9, `OUTPOST_PROXY`).
//!
//! A leaf module: configuration builds the rule once at start, and each
//! link asks it, per URL, whether to go direct or through which proxy.
//!
//! Invariants:
//! - `OUTPOST_PROXY` wins over the standard variables; `none` means no
//!   proxy at all. Without it, an `https://` target takes `HTTPS_PROXY`,
//!   an `http://` one `HTTP_PROXY`, either falls back to `ALL_PROXY` (each
//!   also in lower case, which wins, as curl reads them).
//! - `NO_PROXY` (host, domain suffix, IP, CIDR, `*`) applies to whichever
//!   proxy was chosen.
//! - Proxy credentials are a secret: every description of a proxy shows
//!   `***` for them, and nothing here ever logs.

use std::fmt;
use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// curl's default proxy port, for a proxy URL that names none.
const DEFAULT_PORT: u16 = 1080;

/// One `http://[user:pass@]host[:port]` proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    credentials: Option<(String, Secret)>,
    /// The setting it came from, for messages.
    pub source: &'static str,
}

impl ProxyUrl {
    /// Parses a proxy URL; the error names `setting` and never repeats the
    /// credentials.
    pub fn parse(setting: &'static str, text: &str) -> Result<ProxyUrl> {
        let text = text.trim();
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(Error::config(
                    setting,
                    format!(
                        "a {scheme}:// proxy is not supported; use an http:// proxy (https targets go through it with CONNECT)"
                    ),
                ));
            }
            // `proxy:3128`, as many environments write it, means http.
            None => text,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| {
            Error::config(
                setting,
                format!("{:?} is not host[:port]", mask_userinfo(text)),
            )
        })?;
        if host.is_empty() {
            return Err(Error::config(
                setting,
                format!("{:?} names no proxy host", mask_userinfo(text)),
            ));
        }
        let credentials = userinfo.map(|info| {
            let (user, pass) = info.split_once(':').unwrap_or((info, ""));
            (percent_decode(user), Secret::new(percent_decode(pass)))
        });
        Ok(ProxyUrl {
            host: host.to_string(),
            port: port.unwrap_or(DEFAULT_PORT),
            credentials,
            source: setting,
        })
    }

    /// The proxy for ureq, credentials and all.
    pub fn to_ureq(&self) -> Option<ureq::Proxy> {
        let mut builder = ureq::Proxy::builder(ureq::ProxyProtocol::Http)
            .host(&self.host)
            .port(self.port);
        if let Some((user, pass)) = &self.credentials {
            builder = builder.username(user).password(pass.expose());
        }
        builder.build().ok()
    }
}

impl fmt::Display for ProxyUrl {
    /// `http://user:***@host:port`: what logs, `--check-config` and
    /// `/status` show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.credentials {
            Some((user, _)) => write!(f, "http://{user}:***@{host}:{}", self.port),
            None => write!(f, "http://{host}:{}", self.port),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One `NO_PROXY` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bypass {
    All,
    /// A host name and every name under it (`example.com`, `.example.com`,
    /// `*.example.com` alike, as curl reads them).
    Domain(String),
    Address(IpAddr),
    Network(IpAddr, u8),
}

impl Bypass {
    fn parse(entry: &str) -> Option<Bypass> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        if entry == "*" {
            return Some(Bypass::All);
        }
        if let Some((addr, bits)) = entry.split_once('/') {
            let addr: IpAddr = addr.trim_matches(['[', ']']).parse().ok()?;
            let bits: u8 = bits.parse().ok()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            return (bits <= max).then_some(Bypass::Network(addr, bits));
        }
        let (host, _) = split_host_port(entry)?;
        if let Ok(addr) = host.parse::<IpAddr>() {
            return Some(Bypass::Address(addr));
        }
        let domain = host.trim_start_matches('*').trim_start_matches('.');
        (!domain.is_empty()).then(|| Bypass::Domain(domain.to_ascii_lowercase()))
    }

    fn matches(&self, host: &str) -> bool {
        let ip = host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
        match (self, ip) {
            (Bypass::All, _) => true,
            (Bypass::Address(a), Some(ip)) => *a == ip,
            (Bypass::Network(net, bits), Some(ip)) => in_network(ip, *net, *bits),
            (Bypass::Domain(d), None) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                host == *d || host.ends_with(&format!(".{d}"))
            }
            _ => false,
        }
    }
}

impl fmt::Display for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bypass::All => f.write_str("*"),
            Bypass::Domain(d) => f.write_str(d),
            Bypass::Address(a) => write!(f, "{a}"),
            Bypass::Network(a, bits) => write!(f, "{a}/{bits}"),
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// How one URL is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Direct(&'static str),
    Bypassed(String),
    Via(&'a ProxyUrl),
}

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct(why) => write!(f, "direct ({why})"),
            Route::Bypassed(entry) => write!(f, "direct (NO_PROXY {entry})"),
            Route::Via(proxy) => write!(f, "via {proxy} ({})", proxy.source),
        }
    }
}

/// The rule, built once from the settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyRule {
    /// `OUTPOST_PROXY=none`.
    off: bool,
    /// `OUTPOST_PROXY`, for every scheme.
    outpost: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    http: Option<ProxyUrl>,
    all: Option<ProxyUrl>,
    bypass: Vec<Bypass>,
}

/// The variables the rule reads, in the order a lower-case one wins.
pub const STANDARD_VARIABLES: &[(&str, &str)] = &[
    ("https_proxy", "HTTPS_PROXY"),
    ("http_proxy", "HTTP_PROXY"),
    ("all_proxy", "ALL_PROXY"),
    ("no_proxy", "NO_PROXY"),
];

impl ProxyRule {
    /// `get` reads a variable (process environment, else the env file).
    pub fn from_settings(
        outpost_proxy: Option<&str>,
        get: impl Fn(&'static str) -> Option<String>,
    ) -> Result<ProxyRule> {
        let pick = |(lower, upper): (&'static str, &'static str)| -> Result<Option<ProxyUrl>> {
            for name in [lower, upper] {
                if let Some(value) = get(name).filter(|v| !v.trim().is_empty()) {
                    return ProxyUrl::parse(name, &value).map(Some);
                }
            }
            Ok(None)
        };
        let mut rule = ProxyRule::default();
        match outpost_proxy.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("none") => {
                rule.off = true;
                return Ok(rule);
            }
            Some(v) => rule.outpost = Some(ProxyUrl::parse("OUTPOST_PROXY", v)?),
            None => {
                rule.https = pick(STANDARD_VARIABLES[0])?;
                rule.http = pick(STANDARD_VARIABLES[1])?;
                rule.all = pick(STANDARD_VARIABLES[2])?;
            }
        }
        let (lower, upper) = STANDARD_VARIABLES[3];
        if let Some(list) = get(lower).or_else(|| get(upper)) {
            rule.bypass = list.split(',').filter_map(Bypass::parse).collect();
        }
        Ok(rule)
    }

    /// How `url` is reached.
    pub fn route(&self, url: &str) -> Route<'_> {
        if self.off {
            return Route::Direct("OUTPOST_PROXY=none");
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let proxy = match &self.outpost {
            Some(p) => Some(p),
            None if scheme.eq_ignore_ascii_case("https") => self.https.as_ref(),
            None => self.http.as_ref(),
        }
        .or(self.all.as_ref());
        let Some(proxy) = proxy else {
            return Route::Direct("no proxy set");
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = split_host_port(hostport).map_or(hostport, |(h, _)| h);
        if let Some(entry) = self.bypass.iter().find(|b| b.matches(host)) {
            return Route::Bypassed(entry.to_string());
        }
        Route::Via(proxy)
    }

    /// The proxy to give ureq for `url`: `None` means direct (and keeps
    /// ureq from reading the environment itself).
    pub fn for_url(&self, url: &str) -> Option<ureq::Proxy> {
        match self.route(url) {
            Route::Via(proxy) => proxy.to_ureq(),
            _ => None,
        }
    }

    /// ` (through proxy http://user:***@host:port)` for a URL that goes
    /// through one, else nothing: the tail of every error line of a link.
    pub fn via(&self, url: &str) -> String {
        match self.route(url) {
            Route::Via(proxy) => format!(" (through proxy {proxy})"),
            _ => String::new(),
        }
    }

    /// One line for `--check-config`.
    pub fn describe(&self) -> String {
        if self.off {
            return "none (OUTPOST_PROXY=none)".into();
        }
        let mut parts = Vec::new();
        if let Some(p) = &self.outpost {
            parts.push(format!("{p} for every link"));
        }
        for (label, p) in [
            ("https", &self.https),
            ("http", &self.http),
            ("all", &self.all),
        ] {
            if let Some(p) = p {
                parts.push(format!("{label}: {p} ({})", p.source));
            }
        }
        if parts.is_empty() {
            return "none set".into();
        }
        if !self.bypass.is_empty() {
            let list: Vec<String> = self.bypass.iter().map(ToString::to_string).collect();
            parts.push(format!("except NO_PROXY {}", list.join(",")));
        }
        parts.join("; ")
    }
}

/// What a proxy's refusal means, for the error line of a link that went
/// through one.
pub fn explain(error: &ureq::Error) -> Option<&'static str> {
    match error {
        ureq::Error::ConnectProxyFailed(reason)
            if reason.contains(" 407") || reason.contains(" 401") =>
        {
            Some(
                "the proxy wants other credentials: http://user:pass@host:port in OUTPOST_PROXY or the proxy variable",
            )
        }
        ureq::Error::ConnectProxyFailed(_) => Some("the proxy refused the tunnel"),
        _ => None,
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    if text.matches(':').count() > 1 {
        return Some((text, None));
    }
    match text.split_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((text, None)),
    }
}

/// The URL with its password replaced, for an error message.
fn mask_userinfo(text: &str) -> String {
    match text.rsplit_once('@') {
        Some((before, after)) => {
            let user = before.rsplit_once("://").map_or(before, |(_, u)| u);
            let user = user.split(':').next().unwrap_or_default();
            format!("http://{user}:***@{after}")
        }
        None => text.to_string(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(outpost: Option<&str>, vars: &[(&str, &str)]) -> ProxyRule {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyRule::from_settings(outpost, |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    #[test]
    fn picks_by_scheme_and_outpost_proxy_wins() {
        let r = rule(
            None,
            &[
                ("HTTPS_PROXY", "http://s:1"),
                ("http_proxy", "h:2"),
                ("ALL_PROXY", "http://a:3"),
            ],
        );
        assert_eq!(
            r.route("https://m.example/v1").to_string(),
            "via http://s:1 (HTTPS_PROXY)"
        );
        assert_eq!(
            r.route("http://push:9091").to_string(),
            "via http://h:2 (http_proxy)"
        );
        let r = rule(Some("http://o:4"), &[("HTTPS_PROXY", "http://s:1")]);
        assert_eq!(
            r.route("https://x").to_string(),
            "via http://o:4 (OUTPOST_PROXY)"
        );
        let r = rule(Some("none"), &[("HTTPS_PROXY", "http://s:1")]);
        assert!(r.for_url("https://x").is_none());
        let r = rule(None, &[("ALL_PROXY", "http://a:3")]);
        assert_eq!(
            r.route("https://x").to_string(),
            "via http://a:3 (ALL_PROXY)"
        );
        assert_eq!(
            rule(None, &[]).route("https://x"),
            Route::Direct("no proxy set")
        );
    }

    #[test]
    fn no_proxy_takes_hosts_domains_addresses_and_networks() {
        let r = rule(
            Some("http://p:3128"),
            &[(
                "NO_PROXY",
                "localhost, .corp.example,*.lab,10.0.0.0/8,192.168.1.7,[fd00::1],fe80::/10",
            )],
        );
        for direct in [
            "http://localhost:8080/",
            "https://a.corp.example/x",
            "https://corp.example/",
            "https://b.lab",
            "https://10.1.2.3:8443/",
            "http://192.168.1.7/",
            "https://[fd00::1]:443/",
            "https://[fe80::2]/",
        ] {
            assert!(matches!(r.route(direct), Route::Bypassed(_)), "{direct}");
        }
        for proxied in [
            "https://notcorp.example/",
            "https://11.0.0.1/",
            "http://192.168.1.8/",
            "https://user:pw@manager.example/",
            "https://[fd00::2]/",
        ] {
            assert!(matches!(r.route(proxied), Route::Via(_)), "{proxied}");
        }
        assert!(matches!(
            rule(Some("http://p:1"), &[("no_proxy", "*")]).route("https://x"),
            Route::Bypassed(_)
        ));
    }

    #[test]
    fn credentials_never_show() {
        let p = ProxyUrl::parse("OUTPOST_PROXY", "http://bob:s%40cret@proxy.lan:3128").unwrap();
        assert_eq!(p.to_string(), "http://bob:***@proxy.lan:3128");
        assert_eq!(format!("{p:?}"), "http://bob:***@proxy.lan:3128");
        assert_eq!(p.credentials.as_ref().unwrap().1.expose(), "s@cret");
        let err = ProxyUrl::parse("OUTPOST_PROXY", "http://bob:hunter2@proxy:notaport")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OUTPOST_PROXY") && !err.contains("hunter2"),
            "{err}"
        );
        let err = ProxyUrl::parse("HTTPS_PROXY", "socks5://p:1080")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("HTTPS_PROXY"), "{err}");
        assert_eq!(
            ProxyUrl::parse("X", "http://[fd00::9]:8080")
                .unwrap()
                .to_string(),
            "http://[fd00::9]:8080"
        );
        assert_eq!(ProxyUrl::parse("X", "proxy").unwrap().port, DEFAULT_PORT);
    }
}
