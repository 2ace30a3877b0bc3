//! The Redis (or Valkey) backend of the remote tier, on the `redis` crate's synchronous client.
//!
//! Synchronous because a miss waits on the remote for a few milliseconds at most and the
//! library has no async runtime to offer one. Each call takes a connection from a small idle
//! pool (connecting lazily, within the call's deadline), sets the socket's read and write
//! timeouts to the time left before the deadline, and returns the connection to the pool only
//! when the call ended cleanly: a connection that timed out or broke is dropped, so the next
//! call reconnects. A pooled connection found dead (the server restarted since it was used) is
//! replaced once within the same call, because the restarted server never saw the command.
//!
//! Every reply is read as a `redis::Value` and converted here, so nothing the server sends can
//! fail a call by its type alone: a value of the wrong type under one of our keys reads as a
//! record that does not decode (and is skipped by the caller with a log line).
//!
//! Leases: `SET key token NX PX ttl`; renewal and release are Lua scripts that compare the
//! token first (compare-and-pexpire, compare-and-delete), run with `EVALSHA` and loaded on
//! `NOSCRIPT` (a restarted server has forgotten them).

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Connection, ErrorKind, RedisError, Value};

use super::config::RemoteUrl;
use super::tier::{LeaseToken, RemoteError, RemoteTier};

/// Idle connections kept for reuse (more concurrent callers connect, and their connections are
/// closed after use).
const MAX_IDLE: usize = 16;

const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A Redis server as a [`RemoteTier`].
pub struct RedisTier {
    client: redis::Client,
    url: RemoteUrl,
    idle: Mutex<Vec<Connection>>,
    renew: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTier({})", self.url)
    }
}

/// What went wrong in one attempt, and whether the connection survives it.
fn classify(e: &RedisError) -> (RemoteError, bool) {
    let text = e.to_string();
    match e.kind() {
        ErrorKind::Server(_) => (RemoteError::Server(text), true),
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => {
            (RemoteError::Server(text), false)
        }
        _ if e.is_timeout() => (RemoteError::Timeout(text), false),
        _ => (RemoteError::Unreachable(text), false),
    }
}

/// Whether a failure on a reused connection means it was dead before we used it (so the
/// command never reached a live server and may be sent again on a new connection).
fn stale(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
}

impl RedisTier {
    /// A tier for `url`. No connection is made until the first call.
    pub fn new(url: &RemoteUrl) -> Result<RedisTier, RemoteError> {
        let client = redis::Client::open(url.secret_url())
            // The kind only: the client's URL errors can quote the URL, password and all.
            .map_err(|e| {
                RemoteError::Config(format!("{url}: rejected by the client ({:?})", e.kind()))
            })?;
        Ok(RedisTier {
            client,
            url: url.clone(),
            idle: Mutex::new(Vec::new()),
            renew: redis::Script::new(RENEW_LUA),
            release: redis::Script::new(RELEASE_LUA),
        })
    }

    /// Runs `f` on a connection with the socket timeouts set to the time left until
    /// `deadline`; see the module docs for reuse and the one retry.
    fn with_conn<T>(
        &self,
        deadline: Instant,
        f: impl Fn(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, RemoteError> {
        for attempt in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_micros(1) {
                return Err(RemoteError::Timeout(format!(
                    "{}: no time left for the call",
                    self.url
                )));
            }
            let pooled = self.idle.lock().pop();
            let reused = pooled.is_some();
            let mut con = match pooled {
                Some(c) => c,
                None => self.client.get_connection_with_timeout(left).map_err(|e| {
                    let (err, _) = classify(&e);
                    with_where(err, &self.url)
                })?,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_micros(1) {
                self.give_back(con);
                return Err(RemoteError::Timeout(format!(
                    "{}: connecting took the whole wait",
                    self.url
                )));
            }
            if let Err(e) = con
                .set_read_timeout(Some(left))
                .and_then(|_| con.set_write_timeout(Some(left)))
            {
                let (err, _) = classify(&e);
                return Err(with_where(err, &self.url));
            }
            match f(&mut con) {
                Ok(v) => {
                    self.give_back(con);
                    return Ok(v);
                }
                Err(e) if reused && attempt == 0 && stale(&e) => continue,
                Err(e) => {
                    let (err, keep) = classify(&e);
                    if keep {
                        self.give_back(con);
                    }
                    return Err(with_where(err, &self.url));
                }
            }
        }
        Err(RemoteError::Unreachable(format!(
            "{}: the connection broke twice",
            self.url
        )))
    }

    /// Runs a lease script that acts only for the holder of `token` (with `arg`, the new ttl
    /// in milliseconds, for renewal): whether it acted.
    fn owner_script(
        &self,
        script: &redis::Script,
        key: &str,
        token: &LeaseToken,
        arg: Option<u64>,
        deadline: Instant,
    ) -> Result<bool, RemoteError> {
        let token = token.to_hex();
        self.with_conn(deadline, |c| {
            let mut call = script.key(key);
            call.arg(&token);
            if let Some(a) = arg {
                call.arg(a);
            }
            Ok(matches!(call.invoke::<Value>(c)?, Value::Int(1)))
        })
    }

    fn give_back(&self, con: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(con);
        }
    }
}

fn with_where(e: RemoteError, url: &RemoteUrl) -> RemoteError {
    match e {
        RemoteError::Timeout(m) => RemoteError::Timeout(format!("{url}: {m}")),
        RemoteError::Unreachable(m) => RemoteError::Unreachable(format!("{url}: {m}")),
        RemoteError::Server(m) => RemoteError::Server(format!("{url}: {m}")),
        other => other,
    }
}

/// A byte string reply (`None` for nil); a reply of another type reads as no valid record.
fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::Nil => None,
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => Some(Vec::new()),
    }
}

/// A reply's items as text (for key names and map fields), non-UTF-8 bytes replaced.
fn text_of(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::SimpleString(s) => s,
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn is_wrong_type(e: &RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
}

/// Escapes the glob characters of `SCAN MATCH` in a literal prefix.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl RemoteTier for RedisTier {
    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, RemoteError> {
        self.with_conn(deadline, |c| {
            match redis::cmd("GET").arg(key).query::<Value>(c) {
                Ok(v) => Ok(bytes_of(v)),
                // Not a string: not one of our records. Empty bytes fail decoding, logged.
                Err(e) if is_wrong_type(&e) => Ok(Some(Vec::new())),
                Err(e) => Err(e),
            }
        })
    }

    fn put(&self, key: &str, value: &[u8], deadline: Instant) -> Result<(), RemoteError> {
        self.with_conn(deadline, |c| {
            redis::cmd("SET").arg(key).arg(value).query::<Value>(c)?;
            Ok(())
        })
    }

    fn put_field(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        deadline: Instant,
    ) -> Result<(), RemoteError> {
        self.with_conn(deadline, |c| {
            redis::cmd("HSET")
                .arg(key)
                .arg(field)
                .arg(value)
                .query::<Value>(c)?;
            Ok(())
        })
    }

    fn fields(&self, key: &str, deadline: Instant) -> Result<Vec<(String, Vec<u8>)>, RemoteError> {
        self.with_conn(deadline, |c| {
            let v = match redis::cmd("HGETALL").arg(key).query::<Value>(c) {
                Ok(v) => v,
                Err(e) if is_wrong_type(&e) => {
                    log::warn!(
                        "jitune: remote cache: {key} is not a map; its failure records are skipped"
                    );
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e),
            };
            let pairs: Vec<(Value, Value)> = match v {
                Value::Map(m) => m,
                Value::Array(items) => {
                    let mut it = items.into_iter();
                    let mut out = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        out.push((k, v));
                    }
                    out
                }
                _ => Vec::new(),
            };
            Ok(pairs
                .into_iter()
                .map(|(k, v)| (text_of(k), bytes_of(v).unwrap_or_default()))
                .collect())
        })
    }

    fn try_lease(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<bool, RemoteError> {
        let token = token.to_hex();
        self.with_conn(deadline, |c| {
            let v = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query::<Value>(c)?;
            Ok(matches!(v, Value::Okay) || matches!(&v, Value::SimpleString(s) if s == "OK"))
        })
    }

    fn renew(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<bool, RemoteError> {
        self.owner_script(&self.renew, key, token, Some(ttl_ms(ttl)), deadline)
    }

    fn release(
        &self,
        key: &str,
        token: &LeaseToken,
        deadline: Instant,
    ) -> Result<bool, RemoteError> {
        self.owner_script(&self.release, key, token, None, deadline)
    }

    fn scan(&self, prefix: &str, deadline: Instant) -> Result<Vec<String>, RemoteError> {
        let pattern = glob_escape(prefix);
        self.with_conn(deadline, |c| {
            let mut out = Vec::new();
            let mut cursor = String::from("0");
            loop {
                let v = redis::cmd("SCAN")
                    .arg(&cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query::<Value>(c)?;
                let Value::Array(mut parts) = v else {
                    break;
                };
                if parts.len() != 2 {
                    break;
                }
                let keys = parts.pop();
                cursor = parts.pop().map(text_of).unwrap_or_default();
                if let Some(Value::Array(keys)) = keys {
                    out.extend(keys.into_iter().map(text_of));
                }
                if cursor == "0" || cursor.is_empty() {
                    break;
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_are_literal_prefixes() {
        assert_eq!(glob_escape("jitune:v1:entry:"), "jitune:v1:entry:*");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }

    #[test]
    fn an_unreachable_server_fails_within_the_deadline() {
        // Port 1 on loopback: nothing listens there, the connect is refused at once.
        let t = RedisTier::new(&RemoteUrl::parse("redis://127.0.0.1:1/0").unwrap()).unwrap();
        let start = Instant::now();
        let e = t
            .get("k", Instant::now() + Duration::from_millis(50))
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(e, RemoteError::Unreachable(_) | RemoteError::Timeout(_)),
            "{e}"
        );
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    }
}
