//! The etcd watch stream: changes decoded into `WatchEvent`s, the revision to resume from after
//! a reconnect, and compaction reported as such rather than as an error.

use etcd_client::{EventType, WatchStream};

use super::{KeyValue, RegistryError, describe, key_value_of};

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: i64 },
}

/// One message of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes (possibly none for a progress notification); resume from `next_revision` after a
    /// reconnect to see every later change exactly once.
    Changes {
        events: Vec<WatchEvent>,
        next_revision: i64,
    },
    /// The requested revision was compacted away: re-list and resume after the listing.
    Compacted { compact_revision: i64 },
}

/// Whether etcd refused a revision because it was compacted.
fn is_compacted(err: &etcd_client::Error) -> bool {
    describe(err).contains("compacted")
}

/// An open watch. Dropping it cancels the watch on the server.
pub struct Watch {
    pub(super) stream: WatchStream,
    pub(super) key: String,
    pub(super) endpoints: String,
    pub(super) secrets: crate::redact::Secrets,
    pub(super) next_revision: i64,
}

impl Watch {
    /// The next message. An error means the stream is gone: reconnect from the last
    /// `next_revision` (a compaction is reported as `Compacted`, not as an error).
    pub async fn next(&mut self) -> Result<WatchMessage, RegistryError> {
        loop {
            let message = match self.stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return Err(self.closed("closed by the server".into())),
                Err(e) if is_compacted(&e) => {
                    return Ok(WatchMessage::Compacted { compact_revision: 0 });
                }
                Err(e) => return Err(self.closed(self.secrets.scrub(&describe(&e)))),
            };
            if message.compact_revision() != 0 {
                return Ok(WatchMessage::Compacted {
                    compact_revision: message.compact_revision(),
                });
            }
            if message.canceled() {
                let reason = message.cancel_reason();
                if reason.contains("compacted") {
                    return Ok(WatchMessage::Compacted { compact_revision: 0 });
                }
                return Err(self.closed(format!("cancelled by the server: {reason}")));
            }
            if message.created() && message.events().is_empty() {
                // The creation notice carries the store's current revision, not how far our
                // watch has caught up: it must not move the resume point.
                continue;
            }
            let mut events = Vec::with_capacity(message.events().len());
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                self.next_revision = self.next_revision.max(kv.mod_revision() + 1);
                events.push(match event.event_type() {
                    EventType::Put => WatchEvent::Put(key_value_of(kv)),
                    EventType::Delete => WatchEvent::Delete {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        mod_revision: kv.mod_revision(),
                    },
                });
            }
            if events.is_empty() {
                // A progress notification: everything up to the header revision was seen.
                if let Some(header) = message.header() {
                    self.next_revision = self.next_revision.max(header.revision() + 1);
                }
            }
            return Ok(WatchMessage::Changes {
                events,
                next_revision: self.next_revision,
            });
        }
    }

    fn closed(&self, reason: String) -> RegistryError {
        RegistryError::WatchClosed {
            key: self.key.clone(),
            endpoints: self.endpoints.clone(),
            reason,
        }
    }
}
