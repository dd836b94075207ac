//! Contact events ↔ stored shapes (`postvak_proto::events::contact`), and which key seals each.

use postvak_core::contact::{ContactEvent as E, Profile};
use postvak_platform::store::{EventData, KeyScope, NewEvent, RecordedEvent, StoreError, micros};
use postvak_proto::events::contact::{self as ev, ContactProfileV1};
use serde::Serialize;
use uuid::Uuid;

/// The key scope of a contact's personal data: destroying it is the erasure.
pub(crate) fn contact_key(id: Uuid) -> KeyScope {
    KeyScope::Subject(format!("contact:{id}"))
}

fn value<T: Serialize>(t: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(t).map_err(|e| StoreError::Serialization(e.to_string()))
}

pub(crate) fn profile_v1(p: &Profile) -> ContactProfileV1 {
    ContactProfileV1 {
        name: p.name.clone(),
        addresses: p.addresses.clone(),
        organisation: p.organisation.clone(),
        vip: p.vip,
        notes: p.notes.clone(),
    }
}

pub(crate) fn profile(p: &ContactProfileV1) -> Profile {
    Profile {
        name: p.name.clone(),
        addresses: p.addresses.clone(),
        organisation: p.organisation.clone(),
        vip: p.vip,
        notes: p.notes.clone(),
    }
}

/// The stored event for `e` of contact `id`: personal data under the contact's key, ids under
/// the tenant's.
pub(crate) fn encode(e: &E, id: Uuid) -> Result<NewEvent, StoreError> {
    let (t, payload, key) = match e {
        E::Created {
            contact_id,
            profile,
            from_mail,
            by,
            at_us,
        } => (
            ev::CONTACT_CREATED,
            value(&ev::ContactCreatedV1 {
                contact_id: *contact_id,
                profile: profile_v1(profile),
                source: if *from_mail { "mail" } else { "api" }.into(),
                by: *by,
                at_us: *at_us,
            })?,
            contact_key(id),
        ),
        E::Updated { profile, by, at_us } => (
            ev::CONTACT_UPDATED,
            value(&ev::ContactUpdatedV1 {
                profile: profile_v1(profile),
                by: *by,
                at_us: *at_us,
            })?,
            contact_key(id),
        ),
        E::ConversationLinked {
            conversation_id,
            inbox_id,
            at_us,
        } => (
            ev::CONTACT_CONVERSATION_LINKED,
            value(&ev::ContactConversationLinkedV1 {
                conversation_id: *conversation_id,
                inbox_id: *inbox_id,
                at_us: *at_us,
            })?,
            KeyScope::Tenant,
        ),
        E::Merged { into, by, at_us } => (
            ev::CONTACT_MERGED,
            value(&ev::ContactMergedV1 {
                into: *into,
                by: *by,
                at_us: *at_us,
            })?,
            KeyScope::Tenant,
        ),
        E::Absorbed { from, by, at_us } => (
            ev::CONTACT_ABSORBED,
            value(&ev::ContactAbsorbedV1 {
                from: *from,
                by: *by,
                at_us: *at_us,
            })?,
            KeyScope::Tenant,
        ),
        E::Erased {
            contact_id,
            by,
            at_us,
        } => (
            ev::CONTACT_ERASED,
            value(&ev::ContactErasedV1 {
                contact_id: *contact_id,
                by: *by,
                at_us: *at_us,
            })?,
            KeyScope::Tenant,
        ),
        E::Redacted { .. } => {
            return Err(StoreError::Serialization(
                "a redacted event is never appended".into(),
            ));
        }
    };
    Ok(NewEvent::new(t, 1, payload).with_key(key))
}

/// Decodes a stored contact event; one whose key was destroyed is [`E::Redacted`].
pub(crate) fn decode(e: &RecordedEvent) -> Result<E, StoreError> {
    if matches!(e.data, EventData::Shredded) {
        return Ok(E::Redacted {
            at_us: micros(e.recorded_at),
        });
    }
    Ok(match (e.event_type.as_str(), e.event_version) {
        (ev::CONTACT_CREATED, 1) => {
            let p: ev::ContactCreatedV1 = e.payload()?;
            E::Created {
                contact_id: p.contact_id,
                profile: profile(&p.profile),
                from_mail: p.source == "mail",
                by: p.by,
                at_us: p.at_us,
            }
        }
        (ev::CONTACT_UPDATED, 1) => {
            let p: ev::ContactUpdatedV1 = e.payload()?;
            E::Updated {
                profile: profile(&p.profile),
                by: p.by,
                at_us: p.at_us,
            }
        }
        (ev::CONTACT_CONVERSATION_LINKED, 1) => {
            let p: ev::ContactConversationLinkedV1 = e.payload()?;
            E::ConversationLinked {
                conversation_id: p.conversation_id,
                inbox_id: p.inbox_id,
                at_us: p.at_us,
            }
        }
        (ev::CONTACT_MERGED, 1) => {
            let p: ev::ContactMergedV1 = e.payload()?;
            E::Merged {
                into: p.into,
                by: p.by,
                at_us: p.at_us,
            }
        }
        (ev::CONTACT_ABSORBED, 1) => {
            let p: ev::ContactAbsorbedV1 = e.payload()?;
            E::Absorbed {
                from: p.from,
                by: p.by,
                at_us: p.at_us,
            }
        }
        (ev::CONTACT_ERASED, 1) => {
            let p: ev::ContactErasedV1 = e.payload()?;
            E::Erased {
                contact_id: p.contact_id,
                by: p.by,
                at_us: p.at_us,
            }
        }
        (t, v) => {
            return Err(StoreError::UnknownEventType {
                event_type: t.to_owned(),
                event_version: v,
            });
        }
    })
}
