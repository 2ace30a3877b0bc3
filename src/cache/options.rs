//! How a [`Cache`](super::Cache) is opened: [`CacheOptions`] and [`UserCache`], and what the
//! environment says when the caller does not (`JITUNE_CACHE`, `JITUNE_SHIPPED`,
//! `JITUNE_BINARY_CAP`, and the XDG and home directories).
//!
//! A file of its own because choosing and resolving options is a concern apart from the cache
//! they open: the tuner, the `jitune` command and the tests build options, and a malformed
//! setting is resolved here to a default with one warning, before any file is touched.

use std::path::PathBuf;

use super::{remote, store};

/// Environment variable naming the user cache file (or `memory` for no file).
pub const CACHE_ENV: &str = "JITUNE_CACHE";

/// Environment variable naming read-only shipped cache files for the default tuner (`:`-separated).
pub const SHIPPED_ENV: &str = "JITUNE_SHIPPED";

/// Environment variable capping the user cache's binaries that are not winners' (bytes, or
/// with a `K`/`M`/`G` suffix; `off` for no cap). Default [`store::DEFAULT_BINARY_CAP`].
pub const BINARY_CAP_ENV: &str = "JITUNE_BINARY_CAP";

/// How to open a [`Cache`](super::Cache).
///
/// ```no_run
/// use jitune::cache::{Cache, CacheOptions};
/// let cache = Cache::open(CacheOptions::at("/tmp/my-cache.sqlite").with_shipped("/opt/app/tuned.sqlite"))?;
/// # Ok::<(), jitune::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// The writable user cache.
    pub user: UserCache,
    /// Read-only shipped caches, searched in order after the user cache.
    pub shipped: Vec<PathBuf>,
    /// The fleet-wide remote tier (Redis): `$JITUNE_REMOTE` by default. See [`remote`].
    pub remote: remote::RemoteChoice,
    /// Bytes of the user store's binaries that are not winners' kept, least recently used
    /// dropped first (`Some(u64::MAX)`: no cap); `None`: `$JITUNE_BINARY_CAP`, else
    /// [`store::DEFAULT_BINARY_CAP`] (256 MiB). Winners' binaries are always kept.
    pub binary_cap: Option<u64>,
}

impl CacheOptions {
    /// Options with the user cache at `path`.
    pub fn at(path: impl Into<PathBuf>) -> CacheOptions {
        CacheOptions {
            user: UserCache::At(path.into()),
            shipped: Vec::new(),
            remote: remote::RemoteChoice::Default,
            binary_cap: None,
        }
    }

    /// Options without a user file.
    pub fn memory_only() -> CacheOptions {
        CacheOptions {
            user: UserCache::MemoryOnly,
            shipped: Vec::new(),
            remote: remote::RemoteChoice::Default,
            binary_cap: None,
        }
    }

    /// Adds a shipped (read-only) cache layer.
    pub fn with_shipped(mut self, path: impl Into<PathBuf>) -> CacheOptions {
        self.shipped.push(path.into());
        self
    }

    /// The options of the default tuner: the default user cache, and read-only shipped layers
    /// from `JITUNE_SHIPPED` (paths separated by `:`; a missing or unreadable one is skipped
    /// with a warning when the cache opens).
    pub fn from_env() -> CacheOptions {
        let mut opts = CacheOptions::default();
        if let Some(v) = std::env::var_os(SHIPPED_ENV) {
            opts = opts.with_shipped_list(&v);
        }
        opts
    }

    /// Adds the shipped layers of a `:`-separated list (the form of `JITUNE_SHIPPED`).
    pub fn with_shipped_list(mut self, list: &std::ffi::OsStr) -> CacheOptions {
        self.shipped
            .extend(std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()));
        self
    }

    /// Uses the remote tier at `url` (`redis://[:password@]host:port/db`) instead of
    /// `$JITUNE_REMOTE`. The URL is checked when the cache opens.
    pub fn with_remote(mut self, url: impl Into<String>) -> CacheOptions {
        self.remote = remote::RemoteChoice::Url(url.into());
        self
    }

    /// No remote tier, whatever `$JITUNE_REMOTE` says.
    pub fn without_remote(mut self) -> CacheOptions {
        self.remote = remote::RemoteChoice::Off;
        self
    }

    /// Keeps at most `bytes` of binaries that are not winners' in the user store (instead of
    /// `$JITUNE_BINARY_CAP` or the 256 MiB default); `u64::MAX` for no cap.
    pub fn with_binary_cap(mut self, bytes: u64) -> CacheOptions {
        self.binary_cap = Some(bytes);
        self
    }

    /// The binary cap these options resolve to (`None`: no cap): the one given, else
    /// `$JITUNE_BINARY_CAP` (a malformed value is ignored with a warning), else
    /// [`store::DEFAULT_BINARY_CAP`].
    pub fn resolve_binary_cap(&self) -> Option<u64> {
        let cap = match self.binary_cap {
            Some(c) => c,
            None => match std::env::var(BINARY_CAP_ENV) {
                Ok(v) if v.trim().is_empty() => store::DEFAULT_BINARY_CAP,
                Ok(v) if ["off", "none", "unlimited"].contains(&v.trim().to_ascii_lowercase().as_str()) => u64::MAX,
                Ok(v) => store::parse_byte_size(&v).unwrap_or_else(|| {
                    log::warn!(
                        "jitune: {BINARY_CAP_ENV}=`{v}` is not a size (bytes, or with a K/M/G suffix, or `off`); \
                         capping binaries at the default {} MiB",
                        store::DEFAULT_BINARY_CAP >> 20
                    );
                    store::DEFAULT_BINARY_CAP
                }),
                Err(_) => store::DEFAULT_BINARY_CAP,
            },
        };
        (cap != u64::MAX).then_some(cap)
    }

    /// The user cache path these options resolve to (`None`: memory only), from the
    /// environment for [`UserCache::Default`].
    pub fn resolve_user_path(&self) -> Option<PathBuf> {
        match &self.user {
            UserCache::MemoryOnly => None,
            UserCache::At(p) => Some(p.clone()),
            UserCache::Default => default_user_path(),
        }
    }
}

/// Where the user cache lives.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum UserCache {
    /// `$JITUNE_CACHE` (a path, or `memory`), else `$XDG_CACHE_HOME/jitune/cache.sqlite`, else
    /// `$HOME/.cache/jitune/cache.sqlite`.
    #[default]
    Default,
    /// No file: results live in memory only.
    MemoryOnly,
    /// This file.
    At(PathBuf),
}

fn default_user_path() -> Option<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(v) = non_empty(CACHE_ENV) {
        if v == "memory" {
            return None;
        }
        return Some(PathBuf::from(v));
    }
    // XDG says relative values are invalid and must be ignored.
    if let Some(x) = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Some(x.join("jitune").join("cache.sqlite"));
    }
    if let Some(h) = non_empty("HOME") {
        return Some(
            PathBuf::from(h)
                .join(".cache")
                .join("jitune")
                .join("cache.sqlite"),
        );
    }
    log::warn!("jitune: neither {CACHE_ENV}, XDG_CACHE_HOME nor HOME is set; tuning results will not persist");
    None
}
