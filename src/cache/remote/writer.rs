//! The write side of [`Remote`]: winners, failure records and lease releases sent through to
//! the remote tier, queued while it is away, and the flusher thread that pushes the queue when
//! it is back.
//!
//! A file of its own because writing is the half of the remote tier that outlives the call that
//! made it: a write is sent at once when the tier is up and nothing is queued before it, and
//! queued otherwise (or from the first that fails). Queued writes are pushed, oldest first, by a
//! background flusher thread that exists only while the queue is non-empty: it sleeps until the
//! back-off allows a probe, and is also woken early by any other call that finds the tier back
//! (see [`super::link`]). So winners tuned during an outage land when the server returns even if
//! no further miss happens. One send lock keeps writes in the order they were made.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::client::{Lease, Remote};
use super::health::Gate;
use super::link::{bump, Inner, Signal};
use super::queue::Write;
use super::record;
use super::tier::{RemoteError, RemoteTier};
use crate::cache::entry::Entry;
use crate::cache::store::{with_binary_key, FailureRecord};
use crate::key::DeviceFingerprint;

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// The server has it.
    Written,
    /// Queued: pushed when the server is back.
    Queued,
}

impl Remote {
    /// Writes waiting for the server.
    pub fn pending_writes(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Gives `lease` up (compare-and-delete: only if still held by it). Queued, after any
    /// queued writes, when the server is away; the lease expires by itself in any case.
    pub fn release(&self, lease: Lease) -> Published {
        let key = self.inner.keys.lease(&lease.key);
        self.inner.write(vec![Write::Release {
            key,
            token: lease.token,
        }])
    }

    /// Writes a tuned winner through to the remote tier (see the module docs for when it is
    /// queued). `binary`, the winner's CUBIN, is sent only with a fleet key, before the entry
    /// that names it, and with its MAC.
    pub fn publish(&self, entry: &Entry, binary: Option<&[u8]>) -> Published {
        self.inner.write(self.inner.entry_writes(entry, binary))
    }

    /// Writes a failure record through (measured on `device`, whose hash is the key's).
    pub fn publish_failure(&self, rec: &FailureRecord, device: &DeviceFingerprint) -> Published {
        self.inner
            .write(vec![self.inner.failure_write(rec, device)])
    }

    /// Writes a failure record now, without the back-off or the queue (for `jitune push`): the
    /// error says why it did not land.
    pub fn push_failure(
        &self,
        rec: &FailureRecord,
        device: &DeviceFingerprint,
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        let w = self.inner.failure_write(rec, device);
        send(&*self.inner.tier, &w, Instant::now() + timeout)
    }

    /// Writes a winner now, without the back-off or the queue (for `jitune push`): the error
    /// says why it did not land.
    pub fn push(
        &self,
        entry: &Entry,
        binary: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        let deadline = Instant::now() + timeout;
        for w in self.inner.entry_writes(entry, binary) {
            send(&*self.inner.tier, &w, deadline)?;
        }
        Ok(())
    }

    /// Pushes queued writes now, from this thread, for at most `timeout` (at exit, in tests).
    /// Returns how many are still queued.
    pub fn flush(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let inner = &*self.inner;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let sending = inner.send_lock.lock();
            let Some(w) = inner.queue.lock().pop() else {
                break;
            };
            let budget = inner.settings.io_timeout.min(deadline - now);
            let res = inner.call_result(budget, |t, d| send(t, &w, d));
            if res.is_err() {
                inner.queue.lock().requeue(w);
            }
            drop(sending);
            match res {
                Ok(()) => bump(&inner.counters.written),
                Err(_) => {
                    std::thread::sleep(
                        inner
                            .health
                            .retry_at()
                            .saturating_duration_since(Instant::now())
                            .min(deadline.saturating_duration_since(Instant::now())),
                    );
                }
            }
        }
        self.pending_writes()
    }
}

/// Sends one write.
fn send(tier: &dyn RemoteTier, w: &Write, deadline: Instant) -> Result<(), RemoteError> {
    match w {
        Write::Put { key, value } => tier.put(key, value, deadline),
        Write::Field { key, field, value } => tier.put_field(key, field, value, deadline),
        Write::Release { key, token } => tier.release(key, token, deadline).map(|_| ()),
    }
}

impl Inner {
    /// The write that publishes a failure record (measured on `device`).
    fn failure_write(&self, rec: &FailureRecord, device: &DeviceFingerprint) -> Write {
        Write::Field {
            key: self.keys.failures(&rec.key),
            field: rec.config.clone(),
            value: record::encode_failure(rec, device, self.fleet.as_ref()),
        }
    }

    /// The writes that publish `entry` (and its binary, with a fleet key), binary first.
    fn entry_writes(&self, entry: &Entry, binary: Option<&[u8]>) -> Vec<Write> {
        let mut writes = Vec::with_capacity(2);
        let mut hash = None;
        if let (Some(cubin), Some(fleet)) = (binary, &self.fleet) {
            hash = Some(*blake3::hash(cubin).as_bytes());
            writes.push(with_binary_key(entry, |bkey| Write::Put {
                key: self.keys.binary(bkey),
                value: record::encode_binary(bkey, cubin, fleet),
            }));
        }
        writes.push(Write::Put {
            key: self.keys.entry(&entry.key),
            value: record::encode_entry(entry, hash, self.fleet.as_ref()),
        });
        writes
    }

    /// Sends `writes` in order now if the tier is up and nothing is queued before them;
    /// otherwise (or from the first that fails) queues them and makes sure a flusher runs.
    fn write(self: &Arc<Self>, writes: Vec<Write>) -> Published {
        let mut rest = writes.into_iter().peekable();
        let sending = self.send_lock.lock();
        if self.queue.lock().is_empty() {
            while let Some(w) = rest.peek() {
                let ok = self
                    .call_result(self.settings.io_timeout, |t, d| send(t, w, d))
                    .is_ok();
                if !ok {
                    break;
                }
                bump(&self.counters.written);
                rest.next();
            }
        }
        let mut any = false;
        {
            let mut q = self.queue.lock();
            for w in rest {
                any = true;
                bump(&self.counters.queued);
                let dropped = q.push(w);
                if dropped > 0 {
                    self.counters
                        .dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    let mut warned = self.drop_warned.lock();
                    if !*warned {
                        *warned = true;
                        log::warn!(
                            "jitune: remote cache {}: write queue full ({} writes); dropping the oldest (they stay in the local cache)",
                            self.tier.describe(),
                            self.settings.queue_capacity
                        );
                    }
                }
            }
        }
        // Released only now: a write made meanwhile by another thread goes after these.
        drop(sending);
        if !any {
            return Published::Written;
        }
        self.ensure_flusher();
        Published::Queued
    }

    /// Starts the flusher thread unless one runs; wakes it either way.
    fn ensure_flusher(self: &Arc<Self>) {
        let mut s = self.signal.state.lock();
        s.kicked = true;
        self.signal.cv.notify_all();
        if s.running || s.shutdown {
            return;
        }
        s.running = true;
        drop(s);
        let weak = Arc::downgrade(self);
        let signal = Arc::clone(&self.signal);
        let spawned = std::thread::Builder::new()
            .name("jitune-remote-flush".into())
            .spawn(move || flusher(weak, signal));
        if let Err(e) = spawned {
            // Writes stay queued; the next write or `flush` tries again.
            log::warn!("jitune: cannot start the remote cache flusher thread: {e}");
            self.signal.state.lock().running = false;
        }
    }
}

/// The flusher thread: pushes queued writes when the back-off allows, sleeps otherwise, and
/// exits when the queue is empty or the [`Remote`] is gone.
fn flusher(weak: Weak<Inner>, signal: Arc<Signal>) {
    loop {
        let sleep_until = {
            let Some(inner) = weak.upgrade() else {
                break;
            };
            let sending = inner.send_lock.lock();
            let mut q = inner.queue.lock();
            if q.is_empty() {
                // Decided under the queue lock: a writer that queues after this sees
                // `running == false` and starts a new flusher.
                signal.state.lock().running = false;
                return;
            }
            match inner.health.gate() {
                Gate::Skip => Some(inner.health.retry_at()),
                Gate::Go | Gate::Probe => {
                    let Some(w) = q.pop() else {
                        continue;
                    };
                    drop(q);
                    let res = send(&*inner.tier, &w, Instant::now() + inner.settings.io_timeout);
                    if res.is_err() {
                        inner.queue.lock().requeue(w);
                    }
                    drop(sending);
                    match res {
                        Ok(()) => {
                            bump(&inner.counters.written);
                            inner.succeeded();
                            None
                        }
                        Err(e) => {
                            bump(&inner.counters.unavailable);
                            inner.health.failure(&inner.tier.describe(), &e.to_string());
                            Some(inner.health.retry_at())
                        }
                    }
                }
            }
        };
        if let Some(until) = sleep_until {
            let mut s = signal.state.lock();
            if s.shutdown {
                break;
            }
            if !s.kicked {
                let _ = signal.cv.wait_until(&mut s, until);
            }
            s.kicked = false;
            if s.shutdown {
                break;
            }
        }
    }
    signal.state.lock().running = false;
}
