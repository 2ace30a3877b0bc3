//! Which remote tier to use and how long to wait on it.
//!
//! The URL comes from [`CacheOptions::with_remote`](crate::cache::CacheOptions::with_remote) or
//! `$JITUNE_REMOTE` (`redis://[[user]:password@]host[:port][/db]`). It is parsed here, without
//! the Redis client, so a bad URL is reported the same way whether or not the `redis` feature is
//! built, and so log lines can show where the tier is without its password. The timings are the
//! outage behaviour's knobs: how long a miss waits, how long a write may take, how the tier
//! backs off, how many writes it keeps while the server is away.

use std::fmt;
use std::time::Duration;

use super::keys::DEFAULT_NAMESPACE;
use super::tier::RemoteError;

/// Environment variable naming the remote tier (`off` or empty: none).
pub const REMOTE_ENV: &str = "JITUNE_REMOTE";
/// Environment variable overriding [`RemoteSettings::wait`], in milliseconds.
pub const REMOTE_WAIT_ENV: &str = "JITUNE_REMOTE_WAIT_MS";

/// Whether and where to use a remote tier.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RemoteChoice {
    /// `$JITUNE_REMOTE` if set (and not empty or `off`), else none.
    #[default]
    Default,
    /// No remote tier.
    Off,
    /// This URL.
    Url(String),
}

impl RemoteChoice {
    /// The remote URL this choice resolves to (from the environment for
    /// [`RemoteChoice::Default`]); `None`: no remote tier. A malformed URL is an error that
    /// names it (password hidden).
    pub fn resolve(&self) -> Option<Result<RemoteUrl, RemoteError>> {
        match self {
            RemoteChoice::Off => None,
            RemoteChoice::Url(u) => Some(RemoteUrl::parse(u)),
            RemoteChoice::Default => {
                let v = std::env::var(REMOTE_ENV).ok()?;
                let v = v.trim();
                if v.is_empty() || v.eq_ignore_ascii_case("off") {
                    None
                } else {
                    Some(RemoteUrl::parse(v).map_err(|e| {
                        RemoteError::Config(format!("{REMOTE_ENV}: {}", strip_config(e)))
                    }))
                }
            }
        }
    }
}

fn strip_config(e: RemoteError) -> String {
    match e {
        RemoteError::Config(m) => m,
        other => other.to_string(),
    }
}

/// A parsed `redis://` URL. `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    url: String,
    host: String,
    port: u16,
    db: u32,
    has_password: bool,
}

impl RemoteUrl {
    /// Parses `redis://[[user]:password@]host[:port][/db]` (port 6379 and db 0 by default;
    /// IPv6 hosts in brackets). TLS (`rediss://`) and Unix sockets are not built in.
    pub fn parse(url: &str) -> Result<RemoteUrl, RemoteError> {
        let bad = |why: &str| {
            RemoteError::Config(format!(
                "`{}`: {why}; expected redis://[:password@]host:port/db",
                redact(url)
            ))
        };
        let rest = match url.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", _)) => {
                return Err(bad("TLS (rediss://) is not supported by this build"))
            }
            Some((scheme, _)) => return Err(bad(&format!("scheme `{scheme}` is not redis"))),
            None => return Err(bad("no scheme")),
        };
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let has_password = match auth {
            None => false,
            Some(a) => match a.split_once(':') {
                Some((_, pw)) if !pw.is_empty() => true,
                _ => return Err(bad("credentials without a password")),
            },
        };
        let (hostport, db) = match hostpart.split_once('/') {
            None => (hostpart, 0),
            Some((hp, "")) => (hp, 0),
            Some((hp, d)) => (
                hp,
                d.parse::<u32>()
                    .map_err(|_| bad(&format!("database `{d}` is not a number")))?,
            ),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 6379,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("port `{p}` is not a port number")))?,
        };
        Ok(RemoteUrl {
            url: url.to_string(),
            host: host.to_string(),
            port,
            db,
            has_password,
        })
    }

    /// The URL as given, password included: for the client library only, never for logs.
    pub fn secret_url(&self) -> &str {
        &self.url
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The database number.
    pub fn db(&self) -> u32 {
        self.db
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (auth, host) = rest.rsplit_once('@').unwrap_or(("", rest));
            let user = auth.split_once(':').map(|(u, _)| u).unwrap_or(auth);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let auth = if self.has_password { ":***@" } else { "" };
        write!(f, "redis://{auth}{host}:{}/{}", self.port, self.db)
    }
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteUrl({self})")
    }
}

/// How the remote tier behaves around outages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSettings {
    /// How long a miss waits on the remote (lookup, lease attempt) before going on locally.
    /// Default 20 ms; `$JITUNE_REMOTE_WAIT_MS` overrides it.
    pub wait: Duration,
    /// How long a write, lease renewal or release may take (off the launch path). Default
    /// 500 ms.
    pub io_timeout: Duration,
    /// First back-off after a failure; doubled at every failed retry up to `backoff_max`.
    /// Default 100 ms.
    pub backoff_min: Duration,
    /// Longest back-off. Default 5 s.
    pub backoff_max: Duration,
    /// Writes kept while the remote is away (the oldest are dropped beyond it; they stay in the
    /// local store). Default 4096.
    pub queue_capacity: usize,
    /// Namespace of key names (default `jitune`): fleets sharing one server keep apart.
    pub namespace: String,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            wait: Duration::from_millis(20),
            io_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            queue_capacity: 4096,
            namespace: DEFAULT_NAMESPACE.to_string(),
        }
    }
}

impl RemoteSettings {
    /// The defaults, with `$JITUNE_REMOTE_WAIT_MS` applied (a bad value is ignored with a
    /// warning).
    pub fn from_env() -> RemoteSettings {
        let mut s = RemoteSettings::default();
        if let Ok(v) = std::env::var(REMOTE_WAIT_ENV) {
            match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => s.wait = Duration::from_millis(ms),
                _ => log::warn!(
                    "jitune: {REMOTE_WAIT_ENV}=`{v}` is not a positive number of milliseconds; waiting {} ms",
                    s.wait.as_millis()
                ),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_hide_their_password() {
        let u = RemoteUrl::parse("redis://:s3cret@cache.internal:6380/2").unwrap();
        assert_eq!((u.host(), u.port(), u.db()), ("cache.internal", 6380, 2));
        assert_eq!(u.to_string(), "redis://:***@cache.internal:6380/2");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.secret_url(), "redis://:s3cret@cache.internal:6380/2");
        let d = RemoteUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!(d.to_string(), "redis://127.0.0.1:6379/0");
        let v6 = RemoteUrl::parse("redis://[::1]:7000/").unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 7000));
        assert_eq!(v6.to_string(), "redis://[::1]:7000/0");
        for bad in [
            "http://h:1/0",
            "rediss://h:1/0",
            "redis://:pw@/0",
            "redis://h:99999/0",
            "redis://h:1/x",
            "h:6379",
            "redis://user@h:1/0",
        ] {
            let e = RemoteUrl::parse(bad).unwrap_err();
            assert!(matches!(e, RemoteError::Config(_)), "{bad}");
        }
        let e = RemoteUrl::parse("redis://:hunter2@h:0/0").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("port"), "{e}");
    }

    #[test]
    fn choices_resolve() {
        assert!(RemoteChoice::Off.resolve().is_none());
        let u = RemoteChoice::Url("redis://127.0.0.1:1/0".into())
            .resolve()
            .unwrap()
            .unwrap();
        assert_eq!(u.port(), 1);
        assert!(RemoteChoice::Url("nope".into()).resolve().unwrap().is_err());
    }
}
