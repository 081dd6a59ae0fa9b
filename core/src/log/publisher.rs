//! Who published a message: the node id and the database instance behind it, carried in the message id
//! (`Nats-Msg-Id`). The batch's `node_id` says whose versions its changes are; the publisher may be another
//! node that publishes them again after the server lost them (a republish). The instance tells this node's
//! own messages (skipped: their rows are here already) from messages that only claim its id (applied and
//! reported: another node configured with the same id, or this node's history from before a restore).

/// The publishing database: its node id and a random number drawn once per database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publisher {
    pub node: u64,
    pub instance: u64,
}

/// What a message id says about its publisher: the node, and the instance (absent in ids written by a
/// library before instances existed, `node-outbox-hlc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedBy {
    pub node: u64,
    pub instance: Option<u64>,
}

impl Publisher {
    /// The message id of outbox entry `outbox_id` whose newest stamp is `max_hlc`: unique even when outbox
    /// ids repeat (a restored file) and across databases sharing a node id.
    pub fn message_id(&self, outbox_id: i64, max_hlc: u64) -> String {
        format!("{}-{outbox_id}-{max_hlc}-{:x}", self.node, self.instance)
    }
}

impl PublishedBy {
    /// Reads a message id written by [`Publisher::message_id`] (or by an older library); None when the id
    /// is missing or not one of ours.
    pub fn from_message_id(id: &str) -> Option<PublishedBy> {
        let mut parts = id.split('-');
        let node = parts.next()?.parse().ok()?;
        let _outbox: i64 = parts.next()?.parse().ok()?;
        let _hlc: u64 = parts.next()?.parse().ok()?;
        let instance = match parts.next() {
            Some(hex) => Some(u64::from_str_radix(hex, 16).ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(PublishedBy { node, instance })
    }
}

/// How a received batch relates to this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Published by this database: its rows and their state are here already.
    Own,
    /// Another node's changes (or this node's, published again by another node after broker data loss).
    Other,
    /// The batch claims this node's id, but this database did not publish it: another node shares the id,
    /// this node's history from before a snapshot restore, or a forgery. Applied (every node must end alike)
    /// and reported.
    ClaimsThisNode,
}

impl Publisher {
    /// Judges a batch of `batch_node`'s changes that arrived with message id `published_by`.
    pub fn judge(&self, batch_node: u64, published_by: Option<PublishedBy>) -> Origin {
        if batch_node != self.node {
            return Origin::Other;
        }
        match published_by {
            Some(by) if by.node != self.node => Origin::Other,
            Some(by) if by.instance.is_none_or(|i| i == self.instance) => Origin::Own,
            _ => Origin::ClaimsThisNode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_name_their_publisher() {
        let me = Publisher {
            node: 7,
            instance: 0xabc,
        };
        let id = me.message_id(12, 99);
        assert_eq!(
            PublishedBy::from_message_id(&id),
            Some(PublishedBy {
                node: 7,
                instance: Some(0xabc)
            })
        );
        assert_eq!(
            PublishedBy::from_message_id("7-12-99"),
            Some(PublishedBy {
                node: 7,
                instance: None
            })
        );
        assert_eq!(PublishedBy::from_message_id("hello"), None);
        assert_eq!(PublishedBy::from_message_id("7-12-99-zz"), None);
    }

    #[test]
    fn only_this_database_own_messages_are_skipped() {
        let me = Publisher {
            node: 7,
            instance: 1,
        };
        let by = |node, instance| Some(PublishedBy { node, instance });
        assert_eq!(me.judge(7, by(7, Some(1))), Origin::Own);
        assert_eq!(
            me.judge(7, by(7, None)),
            Origin::Own,
            "an id from before instances"
        );
        assert_eq!(me.judge(7, by(7, Some(2))), Origin::ClaimsThisNode);
        assert_eq!(me.judge(7, None), Origin::ClaimsThisNode);
        assert_eq!(
            me.judge(7, by(3, Some(9))),
            Origin::Other,
            "republished by node 3"
        );
        assert_eq!(me.judge(3, by(3, Some(9))), Origin::Other);
    }
}
