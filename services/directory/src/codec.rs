//! Domain events ⇄ stored shapes (`postvak_proto::events::directory`), with upcasting of older
//! versions on read. The domain enum is never serialized.

use postvak_core::directory::DirectoryEvent;
use postvak_platform::store::{EventCodec, RecordedEvent, StoreError};
use postvak_proto::events::directory as ev;

/// A directory event in its stored shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredDirectoryEvent {
    TenantCreated(ev::TenantCreatedV1),
    InboxCreated(ev::InboxCreatedV1),
}

impl From<DirectoryEvent> for StoredDirectoryEvent {
    fn from(e: DirectoryEvent) -> Self {
        match e {
            DirectoryEvent::TenantCreated {
                tenant_id,
                name,
                cell,
            } => Self::TenantCreated(ev::TenantCreatedV1 {
                tenant_id,
                name,
                cell,
            }),
            DirectoryEvent::InboxCreated {
                inbox_id,
                name,
                addresses,
            } => Self::InboxCreated(ev::InboxCreatedV1 {
                inbox_id,
                name,
                addresses,
            }),
        }
    }
}

impl From<StoredDirectoryEvent> for DirectoryEvent {
    fn from(e: StoredDirectoryEvent) -> Self {
        match e {
            StoredDirectoryEvent::TenantCreated(p) => DirectoryEvent::TenantCreated {
                tenant_id: p.tenant_id,
                name: p.name,
                cell: p.cell,
            },
            StoredDirectoryEvent::InboxCreated(p) => DirectoryEvent::InboxCreated {
                inbox_id: p.inbox_id,
                name: p.name,
                addresses: p.addresses,
            },
        }
    }
}

fn ser<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Serialization(e.to_string()))
}

impl EventCodec for StoredDirectoryEvent {
    fn encode(&self) -> Result<(&'static str, u32, serde_json::Value), StoreError> {
        Ok(match self {
            Self::TenantCreated(p) => (ev::TENANT_CREATED, 1, ser(p)?),
            Self::InboxCreated(p) => (ev::INBOX_CREATED, 1, ser(p)?),
        })
    }

    fn decode(event: &RecordedEvent) -> Result<Self, StoreError> {
        match (event.event_type.as_str(), event.event_version) {
            (ev::TENANT_CREATED, 1) => Ok(Self::TenantCreated(event.payload()?)),
            (ev::INBOX_CREATED, 1) => Ok(Self::InboxCreated(event.payload()?)),
            (t, v) => Err(StoreError::UnknownEventType {
                event_type: t.to_owned(),
                event_version: v,
            }),
        }
    }
}
