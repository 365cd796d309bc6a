//! What Redis Cluster needs beyond routing: work cut by slot, and a
//! keyspace walk over every master.
//!
//! redis-rs routes each command by its key's slot and splits `MGET` and
//! `UNLINK` itself, but sends a pipeline to one node only (a pipeline
//! across slots fails with `CROSSSLOT` before it leaves) and routes `SCAN`
//! to one random node. So pipelines and the sweep script are cut by slot
//! here, and `SCAN` is sent to each master by address.
//!
//! # Walking the keyspace while slots move
//!
//! A key migrating from node A to node B is on exactly one of them at any
//! time (`MIGRATE` moves it atomically). One pass over the masters finds it
//! if A is walked before B; if B is walked first, the key can move in
//! between and be missed. A second pass finds any key that moved at most
//! once during the first. So each walk reads every master's own view of
//! its slots (`CLUSTER NODES`, whose `myself` line also shows the slots it
//! is migrating or importing) before and after the pass, and walks again
//! when a slot was on the move or the views changed, up to
//! [`MAX_PASSES`] passes. A key moved more than once during every pass can
//! still be missed; nothing short of stopping migrations prevents that.
//! Rejected: the cluster client's `SCAN` (one random node), and `KEYS`.

use std::collections::HashMap;
use std::future::Future;

use redis::cluster_routing::Slot;
use redis::{Cmd, Value};

use super::RedisStore;
use crate::store::StoreError;

/// Passes of one walk at most (see the module docs).
const MAX_PASSES: usize = 3;

/// Commands grouped by slot, in order within each group, with their
/// indexes in `cmds`. `None` slots (off Cluster) form one group.
pub(super) fn by_slot(cmds: Vec<(Option<Slot>, Cmd)>) -> Vec<(Vec<usize>, Vec<Cmd>)> {
    let mut groups: Vec<(Vec<usize>, Vec<Cmd>)> = Vec::new();
    let mut index_of: HashMap<Option<Slot>, usize> = HashMap::new();
    for (i, (slot, cmd)) in cmds.into_iter().enumerate() {
        let group = *index_of.entry(slot).or_insert_with(|| {
            groups.push((Vec::new(), Vec::new()));
            groups.len() - 1
        });
        if let Some((indexes, cmds)) = groups.get_mut(group) {
            indexes.push(i);
            cmds.push(cmd);
        }
    }
    groups
}

/// The indexes of `keys`, grouped by `slot_of` (`None`: one group), in
/// order within each group.
pub(super) fn indexes_by_slot(
    keys: &[String],
    slot_of: impl Fn(&str) -> Option<Slot>,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index_of: HashMap<Option<Slot>, usize> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let group = *index_of.entry(slot_of(key)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        if let Some(indexes) = groups.get_mut(group) {
            indexes.push(i);
        }
    }
    groups
}

/// Keys grouped by `slot_of` (`None`: one group).
pub(super) fn keys_by_slot(
    keys: Vec<String>,
    slot_of: impl Fn(&str) -> Option<Slot>,
) -> Vec<Vec<String>> {
    let mut groups: HashMap<Option<Slot>, Vec<String>> = HashMap::new();
    for key in keys {
        groups.entry(slot_of(&key)).or_default().push(key);
    }
    groups.into_values().collect()
}

/// Each master (`host:port`) with its own view of its slots.
type View = Vec<(String, String)>;

impl RedisStore {
    /// [`RedisStore::scan`] on Cluster: every master, in passes (see the
    /// module docs).
    pub(super) async fn walk<F, Fut>(
        &self,
        pattern: &str,
        batch: usize,
        mut each: F,
    ) -> Result<u64, StoreError>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let mut total = 0;
        let mut before = self.view().await?;
        for pass in 1..=MAX_PASSES {
            for (node, _) in &before {
                total += self
                    .scan_node(Some(node), pattern, batch, &mut each)
                    .await?;
            }
            let after = self.view().await?;
            let moving = before
                .iter()
                .chain(&after)
                .any(|(_, slots)| slots.contains('['));
            if after == before && !moving {
                break;
            }
            if pass < MAX_PASSES {
                tracing::debug!(
                    pass,
                    "cachette redis: slots moved during a keyspace walk; walking again"
                );
            } else {
                tracing::warn!(
                    "cachette redis: slots kept moving during {MAX_PASSES} keyspace walks; a key moved meanwhile may have been missed"
                );
            }
            before = after;
        }
        Ok(total)
    }

    /// Every master's view of its own slots, sorted by node.
    async fn view(&self) -> Result<View, StoreError> {
        let answers = self
            .run(|mut conn| async move {
                conn.on_masters(redis::cmd("CLUSTER").arg("NODES").clone())
                    .await
            })
            .await?;
        let mut view: View = answers
            .into_iter()
            .map(|(node, answer)| (node, own_slots(&answer)))
            .collect();
        view.sort();
        Ok(view)
    }
}

/// The slots field of the `myself` line of a `CLUSTER NODES` answer:
/// ranges, and `[slot->-id]` / `[slot-<-id]` while migrating / importing.
fn own_slots(answer: &Value) -> String {
    let text: String = redis::from_redis_value_ref(answer).unwrap_or_default();
    text.lines()
        .find(|line| {
            line.split(' ')
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
        })
        .map(|line| line.split(' ').skip(8).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_grouped_by_slot_in_order() {
        let cmd = |k: &str| {
            let mut c = redis::cmd("GET");
            c.arg(k);
            c
        };
        let keys = ["a{1}", "b{2}", "a{1}:lease", "c{1}"];
        let groups = by_slot(
            keys.iter()
                .map(|k| (Some(Slot::for_key(k)), cmd(k)))
                .collect(),
        );
        let indexes: Vec<Vec<usize>> = groups.iter().map(|(i, _)| i.clone()).collect();
        assert_eq!(indexes, vec![vec![0, 2, 3], vec![1]]);
        let one = by_slot(keys.iter().map(|k| (None, cmd(k))).collect());
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn the_own_slots_come_from_the_myself_line() {
        let nodes = "\
a1 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
b2 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461-<-a1]
";
        let answer = Value::BulkString(nodes.as_bytes().to_vec());
        assert_eq!(own_slots(&answer), "0-5460 [5461-<-a1]");
    }
}
