//! Self-tests of `SentinelGroup`: real sentinels failing a real master over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cachette_test::SentinelGroup;

fn set(server: &cachette_test::RedisServer, key: &str, value: &str) {
    let () = server
        .query_blocking(redis::cmd("SET").arg(key).arg(value))
        .unwrap();
}

fn get(server: &cachette_test::RedisServer, key: &str) -> Option<String> {
    server.query_blocking(redis::cmd("GET").arg(key)).unwrap()
}

fn role(server: &cachette_test::RedisServer) -> String {
    let info: String = server
        .query_blocking(redis::cmd("INFO").arg("replication"))
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn sentinels_report_the_master_and_failover_switches_it() {
    let started = Instant::now();
    let mut group = SentinelGroup::spawn();
    eprintln!("sentinel group up in {:?}", started.elapsed());
    assert_eq!(group.master_name(), "cachette");
    assert_eq!(group.sentinel_urls().len(), 3);
    assert_eq!(group.sentinel_addrs().len(), 3);
    let old = group.master().addr();
    assert_eq!(group.current_master_addr(), old);
    assert_eq!(role(group.master()), "master");
    assert_eq!(role(group.replica()), "slave");

    // The replica really replicates.
    set(group.master(), "k", "v");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(group.replica(), "k").is_none() {
        assert!(
            Instant::now() < deadline,
            "the write never reached the replica"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let replica = group.replica().addr();
    let started = Instant::now();
    let new = group.failover();
    eprintln!("failover() took {:?}", started.elapsed());
    assert_eq!(new, replica);
    assert_eq!(group.master().addr(), new);
    assert_eq!(group.current_master_addr(), new);
    assert_eq!(role(group.master()), "master");
    assert_eq!(get(group.master(), "k").as_deref(), Some("v"));
    set(group.master(), "after", "failover");

    // The sentinels then turn the old master into a replica of the new one.
    let started = Instant::now();
    group.wait_until_stable();
    eprintln!(
        "old master demoted {:?} after the failover",
        started.elapsed()
    );
    assert_eq!(group.replica().addr(), old);
    assert_eq!(role(group.replica()), "slave");
}

#[test]
fn a_killed_master_is_replaced_by_its_replica() {
    let mut group = SentinelGroup::spawn();
    set(group.master(), "k", "v");
    let replica = group.replica().addr();
    // Let the write reach the replica, or the promotion would lose it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(group.replica(), "k").is_none() {
        assert!(
            Instant::now() < deadline,
            "the write never reached the replica"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let old = group.kill_master();
    let started = Instant::now();
    let new = group.wait_for_new_master(old, Duration::from_secs(30));
    eprintln!(
        "replica promoted {:?} after SIGKILL of the master",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(new, replica);
    assert_eq!(group.current_master_addr(), new);
    assert_eq!(get(group.master(), "k").as_deref(), Some("v"));
    set(group.master(), "after", "promotion");
}
