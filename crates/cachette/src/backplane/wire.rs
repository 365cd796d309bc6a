//! The backplane's messages on the wire: short text, one per event.
//!
//! ```text
//! c1|<kind>|<sender hex>|<seq>|<body>
//! ```
//!
//! * `c1` is the format version (the channel name carries it too), so a
//!   future format can run beside this one during a rolling deploy.
//! * `kind`: `k` a key changed (body: the store key), `n` a namespace was
//!   cleared (body: its key head), `m` an invalidation mark was raised
//!   (body: the mark's store key), `f` every copy of the sender's
//!   namespaces is suspect (its announcements were lost), `h` heartbeat
//!   (body: `<lease ms>|<sent ns>`), `a` acknowledgement (seq: every
//!   message of the addressee up to it was applied). Upper-case `K`, `N`
//!   and `M` ask for an acknowledgement (read-your-writes writes).
//! * `sender` is the instance's random id: receivers skip their own
//!   messages (except heartbeats, which prove the round trip).
//! * `seq` is the sender's sequence number, assigned in publishing order, so
//!   an acknowledgement of `seq` covers every earlier message.
//!
//! The body is last so a key may contain any character, `|` included.

use std::time::Duration;

/// The format version, first field of every message.
pub(crate) const VERSION: &str = "c1";

/// What a message announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// The entry under this store key changed: drop its copies.
    Key(&'a str),
    /// Every entry under this key head changed: drop every copy.
    Namespace(&'a str),
    /// The invalidation mark under this store key was raised: read it
    /// again before judging an entry by it.
    Mark(&'a str),
    /// Announcements of the sender were lost: drop every copy.
    FlushAll,
    /// The sender is alive, holding a lease of this length.
    Heartbeat { lease: Duration, sent_ns: u64 },
    /// The sender applied the addressee's messages up to `seq`.
    Ack,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    pub(crate) sender: u64,
    pub(crate) seq: u64,
    /// The sender waits for acknowledgements (read-your-writes).
    pub(crate) ack_wanted: bool,
    pub(crate) body: Body<'a>,
}

impl Message<'_> {
    pub(crate) fn encode(&self) -> String {
        let kind = match (&self.body, self.ack_wanted) {
            (Body::Key(_), false) => 'k',
            (Body::Key(_), true) => 'K',
            (Body::Namespace(_), false) => 'n',
            (Body::Namespace(_), true) => 'N',
            (Body::Mark(_), false) => 'm',
            (Body::Mark(_), true) => 'M',
            (Body::FlushAll, _) => 'f',
            (Body::Heartbeat { .. }, _) => 'h',
            (Body::Ack, _) => 'a',
        };
        let head = format!("{VERSION}|{kind}|{:016x}|{}|", self.sender, self.seq);
        match &self.body {
            Body::Key(text) | Body::Namespace(text) | Body::Mark(text) => head + text,
            Body::FlushAll | Body::Ack => head,
            Body::Heartbeat { lease, sent_ns } => {
                format!("{head}{}|{sent_ns}", lease.as_millis())
            }
        }
    }

    /// Parses a message; `None` for anything that is not one (another
    /// format version, another application's traffic on the channel).
    pub(crate) fn parse(bytes: &[u8]) -> Option<Message<'_>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.splitn(5, '|');
        if fields.next()? != VERSION {
            return None;
        }
        let kind = fields.next()?;
        let sender = u64::from_str_radix(fields.next()?, 16).ok()?;
        let seq = fields.next()?.parse().ok()?;
        let body = fields.next()?;
        let (body, ack_wanted) = match kind {
            "k" | "K" if !body.is_empty() => (Body::Key(body), kind == "K"),
            "n" | "N" if !body.is_empty() => (Body::Namespace(body), kind == "N"),
            "m" | "M" if !body.is_empty() => (Body::Mark(body), kind == "M"),
            "f" => (Body::FlushAll, false),
            "a" => (Body::Ack, false),
            "h" => {
                let (lease, sent) = body.split_once('|')?;
                let lease = Duration::from_millis(lease.parse().ok()?);
                (
                    Body::Heartbeat {
                        lease,
                        sent_ns: sent.parse().ok()?,
                    },
                    false,
                )
            }
            _ => return None,
        };
        Some(Message {
            sender,
            seq,
            ack_wanted,
            body,
        })
    }
}

/// The key head of a store key (`prefix:ns:v1:` of `prefix:ns:v1:{key}`):
/// heads never contain `{`, every store key has one.
pub(crate) fn head_of(store_key: &str) -> Option<&str> {
    store_key.find('{').map(|i| &store_key[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message<'_>) {
        let text = m.encode();
        assert_eq!(Message::parse(text.as_bytes()), Some(m), "{text}");
    }

    #[test]
    fn every_kind_round_trips() {
        for ack_wanted in [false, true] {
            round_trip(Message {
                sender: 0xdead_beef,
                seq: 7,
                ack_wanted,
                body: Body::Key("product:v1:{a|b|c}"),
            });
            round_trip(Message {
                sender: u64::MAX,
                seq: u64::MAX,
                ack_wanted,
                body: Body::Namespace("shop:product:v2:"),
            });
            round_trip(Message {
                sender: 3,
                seq: 4,
                ack_wanted,
                body: Body::Mark("shop:listing:tag:{category|7}"),
            });
        }
        for body in [
            Body::FlushAll,
            Body::Ack,
            Body::Heartbeat {
                lease: Duration::from_millis(500),
                sent_ns: 123_456_789,
            },
        ] {
            round_trip(Message {
                sender: 1,
                seq: 2,
                ack_wanted: false,
                body,
            });
        }
    }

    #[test]
    fn anything_else_is_ignored() {
        for junk in [
            &b""[..],
            b"hello",
            b"c2|k|1|1|x:v1:{k}",
            b"c1|k|zz|1|x:v1:{k}",
            b"c1|k|1|-1|x:v1:{k}",
            b"c1|k|1|1|",
            b"c1|q|1|1|x",
            b"c1|h|1|1|500",
            b"c1|h|1|1|x|1",
            b"\xff\xfe",
        ] {
            assert_eq!(Message::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn heads_end_where_the_hash_tag_starts() {
        assert_eq!(head_of("p:ns:v1:{k{x}}"), Some("p:ns:v1:"));
        assert_eq!(head_of("ns:v1:{#abc}"), Some("ns:v1:"));
        assert_eq!(head_of("no-tag"), None);
    }
}
