//! Invalidation marks: how a tag, or a whole namespace, is invalidated in
//! O(1) however many entries it covers.
//!
//! There are no membership sets (they grow with every write, must be
//! cleaned up, and expire before or after their keys). Instead:
//!
//! * every entry records the time it reflects the source as of (`as_of`,
//!   a load's start or a write's time) and its tags, in its envelope;
//! * invalidating tag `t` writes one small key, `[prefix:]ns:tag:{t}`,
//!   holding `"<removed µs> <expired µs>"` — raised, never lowered;
//! * a read compares: an entry whose `as_of` is at or before a mark of one
//!   of its tags (or of the namespace, `[prefix:]ns:cleared`) is removed
//!   (never served) or expired (kept only as a fail-safe fallback).
//!
//! A load that read the source before an invalidation carries an `as_of`
//! before the mark, so its value is void the moment it lands: no stale set.
//!
//! Marks are cached in process. Without a backplane they are re-read after
//! the poll period; with one, every invalidation is announced and the
//! announced mark is forgotten here, so the next read fetches it. A fetch
//! that started before a forget does not put its older answer back (the
//! epoch below).
//!
//! Marks are kept for the cache's mark lifetime (a year by default): a mark
//! only matters for entries written before it, and no entry outlives that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::envelope::{self, Tags};
use crate::store::{Store, StoreError};

/// The two times of a mark, unix µs; 0 is "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// Entries as of this time or earlier are never served again.
    pub removed_us: u64,
    /// Entries as of this time or earlier are served only as a fail-safe
    /// fallback.
    pub expired_us: u64,
}

/// What marks make of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Valid,
    /// Usable only as a fail-safe fallback.
    Expired,
    Removed,
}

impl Mark {
    /// Parses a stored mark; `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<Mark> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (removed, expired) = text.split_once(' ')?;
        Some(Mark {
            removed_us: removed.parse().ok()?,
            expired_us: expired.parse().ok()?,
        })
    }

    /// The stored form.
    pub fn encode(&self) -> String {
        format!("{} {}", self.removed_us, self.expired_us)
    }

    /// The later of each time.
    #[must_use]
    pub fn merge(self, other: Mark) -> Mark {
        Mark {
            removed_us: self.removed_us.max(other.removed_us),
            expired_us: self.expired_us.max(other.expired_us),
        }
    }

    fn judge(&self, as_of_us: u64) -> Verdict {
        if as_of_us <= self.removed_us {
            Verdict::Removed
        } else if as_of_us <= self.expired_us {
            Verdict::Expired
        } else {
            Verdict::Valid
        }
    }
}

/// The worse of two verdicts.
fn worse(a: Verdict, b: Verdict) -> Verdict {
    match (a, b) {
        (Verdict::Removed, _) | (_, Verdict::Removed) => Verdict::Removed,
        (Verdict::Expired, _) | (_, Verdict::Expired) => Verdict::Expired,
        _ => Verdict::Valid,
    }
}

/// The namespace's own mark, under a name no tag can have.
const NAMESPACE: &str = "";
/// Marks cached at most; beyond, the least used are fetched again.
const CACHED_MARKS: u64 = 100_000;

/// The marks of one namespace as this process knows them.
pub(crate) struct Marks {
    /// `[prefix:]ns:`
    head: String,
    namespace_key: String,
    /// By tag.
    known: moka::sync::Cache<String, Mark>,
    /// The namespace's mark, judged on every read (L1 hits included), so
    /// kept in atomics rather than the map.
    namespace: NamespaceMark,
    /// Trust in a fetched mark, in ms (`u64::MAX`: until forgotten).
    poll_ms: u64,
    /// Bumped by every forget: a fetch that saw another epoch does not
    /// cache what it read.
    epoch: AtomicU64,
    /// Held by a fetch while it checks the epoch and caches, and by every
    /// forget: so no fetch caches between a forget and its epoch bump.
    updates: Mutex<()>,
    /// False with a zero poll period: every judgement reads the store.
    caching: bool,
}

/// The namespace's mark and until when it is trusted (0: unknown).
#[derive(Default)]
struct NamespaceMark {
    removed_us: AtomicU64,
    expired_us: AtomicU64,
    trusted_until_ms: AtomicU64,
}

/// Marks fetched for one batch of entries, by tag (`""`: the namespace).
pub(crate) type Fetched = std::collections::HashMap<String, Mark>;

impl std::fmt::Debug for Marks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marks")
            .field("head", &self.head)
            .field("cached", &self.known.entry_count())
            .finish()
    }
}

impl Marks {
    /// `poll`: how long a fetched mark is trusted (`None`: until forgotten).
    pub(crate) fn new(prefix: Option<&str>, namespace: &str, poll: Option<Duration>) -> Marks {
        let head = match prefix {
            Some(prefix) => format!("{prefix}:{namespace}:"),
            None => format!("{namespace}:"),
        };
        let mut known = moka::sync::Cache::builder().max_capacity(CACHED_MARKS);
        if let Some(poll) = poll.filter(|p| !p.is_zero()) {
            known = known.time_to_live(poll);
        }
        Marks {
            namespace_key: format!("{head}cleared"),
            head,
            known: known.build(),
            namespace: NamespaceMark::default(),
            poll_ms: poll.map_or(u64::MAX, |p| {
                u64::try_from(p.as_millis()).unwrap_or(u64::MAX)
            }),
            epoch: AtomicU64::new(0),
            updates: Mutex::new(()),
            caching: poll != Some(Duration::ZERO),
        }
    }

    /// The store key of `tag`'s mark. The tag sits in a hash tag, so on
    /// Cluster each mark is one slot of its own.
    pub(crate) fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{{{tag}}}", self.head)
    }

    /// `[prefix:]ns:`, where every key of the namespace starts.
    pub(crate) fn head(&self) -> &str {
        &self.head
    }

    /// The store key of the namespace's mark.
    pub(crate) fn namespace_key(&self) -> &str {
        &self.namespace_key
    }

    fn key_of(&self, name: &str) -> String {
        if name == NAMESPACE {
            self.namespace_key.clone()
        } else {
            self.tag_key(name)
        }
    }

    /// The tag (or `""` for the namespace) a mark key names, if it is one
    /// of this namespace's.
    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        if key == self.namespace_key {
            return Some(NAMESPACE);
        }
        key.strip_prefix(&self.head)?
            .strip_prefix("tag:{")?
            .strip_suffix('}')
    }

    /// The verdict from cached marks alone; `None` if one is not known.
    pub(crate) fn judge_cached(&self, as_of_us: u64, tags: Option<&Tags>) -> Option<Verdict> {
        self.judge_with(&Fetched::new(), as_of_us, tags)
    }

    /// The verdict of an L1 copy's tags alone, from cached marks; `None`
    /// if one is not known. (A namespace clear drops L1 copies instead:
    /// here, and with a backplane everywhere; so an L1 hit of an untagged
    /// copy reads no mark and no clock.)
    pub(crate) fn judge_tags_cached(&self, as_of_us: u64, tags: &Tags) -> Option<Verdict> {
        let mut verdict = Verdict::Valid;
        for tag in tags.0.iter() {
            verdict = worse(verdict, self.known.get(&**tag)?.judge(as_of_us));
        }
        Some(verdict)
    }

    /// Whether `key` is this namespace's own mark.
    pub(crate) fn is_namespace_key(&self, key: &str) -> bool {
        key == self.namespace_key
    }

    /// The verdict from marks just `fetched`, else cached ones; `None` if
    /// one is not known.
    pub(crate) fn judge_with(
        &self,
        fetched: &Fetched,
        as_of_us: u64,
        tags: Option<&Tags>,
    ) -> Option<Verdict> {
        let mark = |name: &str| fetched.get(name).copied().or_else(|| self.recall(name));
        let mut verdict = mark(NAMESPACE)?.judge(as_of_us);
        for tag in tags.map(|t| &t.0[..]).unwrap_or_default() {
            verdict = worse(verdict, mark(tag)?.judge(as_of_us));
        }
        Some(verdict)
    }

    /// The verdict, fetching the marks not cached (one round trip).
    pub(crate) async fn judge(
        &self,
        store: &dyn Store,
        as_of_us: u64,
        tags: Option<&Tags>,
    ) -> Result<Verdict, StoreError> {
        if let Some(verdict) = self.judge_cached(as_of_us, tags) {
            return Ok(verdict);
        }
        let names: Vec<&str> = std::iter::once(NAMESPACE)
            .chain(
                tags.map(|t| &t.0[..])
                    .unwrap_or_default()
                    .iter()
                    .map(|t| &**t),
            )
            .collect();
        let marks = self.fetch(store, &names).await?;
        Ok(marks
            .iter()
            .fold(Verdict::Valid, |v, m| worse(v, m.judge(as_of_us))))
    }

    /// Fetches the marks of every entry's tags not cached, in one round
    /// trip, before a batch of entries is judged.
    pub(crate) async fn prefetch<'a>(
        &self,
        store: &dyn Store,
        tags: impl Iterator<Item = &'a Tags>,
    ) -> Result<Fetched, StoreError> {
        let mut names: Vec<&str> = Vec::new();
        if self.recall(NAMESPACE).is_none() {
            names.push(NAMESPACE);
        }
        for list in tags {
            for tag in list.0.iter() {
                if !names.contains(&&**tag) && !self.known.contains_key(&**tag) {
                    names.push(tag);
                }
            }
        }
        if names.is_empty() {
            return Ok(Fetched::new());
        }
        let marks = self.fetch(store, &names).await?;
        Ok(names.iter().map(|n| (*n).to_owned()).zip(marks).collect())
    }

    async fn fetch(&self, store: &dyn Store, names: &[&str]) -> Result<Vec<Mark>, StoreError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let keys: Vec<String> = names.iter().map(|n| self.key_of(n)).collect();
        let raw = store.get_many(&keys).await?;
        let marks: Vec<Mark> = raw
            .iter()
            .map(|b| b.as_deref().and_then(Mark::parse).unwrap_or_default())
            .collect();
        self.cache_fetched(epoch, names, &marks);
        Ok(marks)
    }

    /// Caches marks fetched since `epoch`, unless a forget came between.
    fn cache_fetched(&self, epoch: u64, names: &[&str], marks: &[Mark]) {
        let _updates = self.lock();
        if self.caching && self.epoch.load(Ordering::SeqCst) == epoch {
            for (name, mark) in names.iter().zip(marks) {
                self.remember(name, *mark);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.updates.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached mark of `name`, if trusted still.
    fn recall(&self, name: &str) -> Option<Mark> {
        if name != NAMESPACE {
            return self.known.get(name);
        }
        let ns = &self.namespace;
        let until = ns.trusted_until_ms.load(Ordering::Acquire);
        // The clock is read only when a mark is known at all.
        (until != 0 && (until == u64::MAX || envelope::now_ms() < until)).then(|| Mark {
            removed_us: ns.removed_us.load(Ordering::Acquire),
            expired_us: ns.expired_us.load(Ordering::Acquire),
        })
    }

    /// Caches `mark` for `name` (under the update lock).
    fn remember(&self, name: &str, mark: Mark) {
        if name != NAMESPACE {
            self.known.insert(name.to_owned(), mark);
            return;
        }
        let ns = &self.namespace;
        // Marks only rise: a concurrent reader sees the old or the new.
        ns.removed_us.fetch_max(mark.removed_us, Ordering::Release);
        ns.expired_us.fetch_max(mark.expired_us, Ordering::Release);
        let until = envelope::now_ms().saturating_add(self.poll_ms);
        ns.trusted_until_ms.store(until.max(1), Ordering::Release);
    }

    /// This process raised the mark under `key`; `mark` is what the store
    /// holds now.
    pub(crate) fn learn(&self, key: &str, mark: Mark) {
        if let Some(name) = self.name_of(key) {
            let _updates = self.lock();
            self.epoch.fetch_add(1, Ordering::SeqCst);
            if self.caching {
                self.remember(name, mark);
            }
        }
    }

    /// Another instance raised the mark under `key` (if it is one of
    /// ours): fetch it again before trusting it.
    pub(crate) fn forget(&self, key: &str) -> bool {
        match self.name_of(key) {
            Some(name) => {
                let _updates = self.lock();
                self.epoch.fetch_add(1, Ordering::SeqCst);
                if name == NAMESPACE {
                    self.namespace.trusted_until_ms.store(0, Ordering::Release);
                } else {
                    self.known.invalidate(name);
                }
                true
            }
            None => false,
        }
    }

    /// Marks may have been raised unheard (the backplane was down).
    pub(crate) fn forget_all(&self) {
        let _updates = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.namespace.trusted_until_ms.store(0, Ordering::Release);
        self.known.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_only_rise() {
        let m = Mark {
            removed_us: 5,
            expired_us: 9,
        };
        assert_eq!(Mark::parse(m.encode().as_bytes()), Some(m));
        assert_eq!(Mark::parse(b"x y"), None);
        let later = m.merge(Mark {
            removed_us: 7,
            expired_us: 1,
        });
        assert_eq!((later.removed_us, later.expired_us), (7, 9));
    }

    #[test]
    fn entries_at_or_before_a_mark_are_void() {
        let m = Mark {
            removed_us: 100,
            expired_us: 200,
        };
        assert_eq!(m.judge(100), Verdict::Removed);
        assert_eq!(m.judge(101), Verdict::Expired);
        assert_eq!(m.judge(200), Verdict::Expired);
        assert_eq!(m.judge(201), Verdict::Valid);
    }

    #[test]
    fn a_fetch_that_raced_a_forget_caches_nothing() {
        let marks = Marks::new(None, "ns", Some(Duration::from_secs(60)));
        let old = Mark::default();
        for name in ["", "t"] {
            let key = marks.key_of(name);
            // Fetched before the forget, answered after it: the answer may
            // predate the raise the forget announced.
            let epoch = marks.epoch.load(Ordering::SeqCst);
            assert!(marks.forget(&key));
            marks.cache_fetched(epoch, &[name], &[old]);
            assert_eq!(
                marks.recall(name),
                None,
                "{name:?}: a stale mark was cached"
            );
            // A fetch begun after the forget is cached.
            let epoch = marks.epoch.load(Ordering::SeqCst);
            marks.cache_fetched(epoch, &[name], &[old]);
            assert_eq!(marks.recall(name), Some(old));
            marks.forget_all();
            assert_eq!(marks.recall(name), None);
        }
    }

    #[test]
    fn keys_name_their_marks() {
        let marks = Marks::new(Some("shop"), "listing", None);
        assert_eq!(marks.tag_key("cat:7"), "shop:listing:tag:{cat:7}");
        assert_eq!(marks.namespace_key(), "shop:listing:cleared");
        assert_eq!(marks.name_of("shop:listing:tag:{cat:7}"), Some("cat:7"));
        assert_eq!(marks.name_of("shop:listing:cleared"), Some(""));
        assert_eq!(marks.name_of("shop:product:tag:{cat:7}"), None);
    }
}
