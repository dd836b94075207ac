//! The contact aggregate: an external person (a sender or recipient of the tenant's mail), the
//! unit of GDPR export and erasure.
//!
//! A contact has a profile (name, addresses, organisation, VIP flag, notes) and the
//! conversations it took part in. Duplicates are merged: the survivor absorbs the duplicate's
//! profile and links, the duplicate points at the survivor from then on. Erasure is final:
//! the service destroys the contact's key right after `Erased`, so the profile events can no
//! longer be read ([`ContactEvent::Redacted`] stands in for them on replay).

use crate::Aggregate;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Longest name, organisation; longest notes; most addresses per contact.
pub const MAX_TEXT: usize = 200;
pub const MAX_NOTES: usize = 10_000;
pub const MAX_ADDRESSES: usize = 50;

/// A contact's personal data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub name: Option<String>,
    /// Normalised ([`normalise_address`]), no duplicates, in the order they were added.
    pub addresses: Vec<String>,
    pub organisation: Option<String>,
    pub vip: bool,
    pub notes: Option<String>,
}

/// Where a contact stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContactStatus {
    /// Not created yet.
    #[default]
    New,
    Active,
    /// A duplicate merged into another contact.
    Merged {
        into: Uuid,
    },
    Erased,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contact {
    pub id: Option<Uuid>,
    pub version: u64,
    pub status: ContactStatus,
    /// `None` before creation and once erased (its events can't be read any more).
    pub profile: Option<Profile>,
    /// Conversation → its inbox when linked.
    pub conversations: BTreeMap<Uuid, Uuid>,
    /// Duplicates merged into this one.
    pub absorbed: Vec<Uuid>,
    pub created_us: i64,
    pub updated_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactCommand {
    Create {
        contact_id: Uuid,
        profile: Profile,
        from_mail: bool,
        by: Option<Uuid>,
        at_us: i64,
    },
    Update {
        profile: Profile,
        by: Option<Uuid>,
        at_us: i64,
    },
    /// Adds an address (and a name when the contact has none) seen on mail.
    Observe {
        address: String,
        name: Option<String>,
        at_us: i64,
    },
    LinkConversation {
        conversation_id: Uuid,
        inbox_id: Uuid,
        at_us: i64,
    },
    /// On the duplicate: it now lives on in `into`.
    MergeInto {
        into: Uuid,
        by: Option<Uuid>,
        at_us: i64,
    },
    /// On the survivor: take over the duplicate's profile and conversations.
    Absorb {
        from: Uuid,
        profile: Profile,
        conversations: BTreeMap<Uuid, Uuid>,
        by: Option<Uuid>,
        at_us: i64,
    },
    Erase {
        by: Option<Uuid>,
        at_us: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactEvent {
    Created {
        contact_id: Uuid,
        profile: Profile,
        from_mail: bool,
        by: Option<Uuid>,
        at_us: i64,
    },
    Updated {
        profile: Profile,
        by: Option<Uuid>,
        at_us: i64,
    },
    ConversationLinked {
        conversation_id: Uuid,
        inbox_id: Uuid,
        at_us: i64,
    },
    Merged {
        into: Uuid,
        by: Option<Uuid>,
        at_us: i64,
    },
    Absorbed {
        from: Uuid,
        by: Option<Uuid>,
        at_us: i64,
    },
    Erased {
        contact_id: Uuid,
        by: Option<Uuid>,
        at_us: i64,
    },
    /// A personal-data event whose key was destroyed: it happened, its content is gone.
    Redacted { at_us: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    #[error("no such contact")]
    NotFound,
    #[error("the contact exists already")]
    AlreadyExists,
    #[error("the contact was merged into {into}")]
    Merged { into: Uuid },
    #[error("the contact was erased")]
    Erased,
    #[error("a contact can't be merged into itself")]
    MergeIntoSelf,
    #[error("{0}")]
    Invalid(String),
}

/// The form an address is stored and found by: trimmed, without angle brackets, lower-cased.
/// `None` when it is not `local@domain` (one `@`, both sides non-empty, no whitespace).
///
/// Lower-casing the local part is what every mainstream provider does in practice; it means
/// `Eve@Example.org` and `eve@example.org` are one contact.
pub fn normalise_address(raw: &str) -> Option<String> {
    let s = raw.trim();
    let s = s
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(s)
        .trim();
    let (local, domain) = s.split_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
        || s.len() > 320
    {
        return None;
    }
    Some(s.to_lowercase())
}

/// A text field as stored: trimmed, `None` when empty.
pub fn clean_text(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The organisation as filtered on: trimmed, whitespace collapsed, lower-cased.
pub fn organisation_key(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl Profile {
    /// Checks limits and normalises addresses (duplicates dropped). An empty address list is
    /// refused.
    pub fn validated(mut self) -> Result<Self, ContactError> {
        let mut addresses = Vec::with_capacity(self.addresses.len());
        for a in &self.addresses {
            let n = normalise_address(a)
                .ok_or_else(|| ContactError::Invalid(format!("{a:?} is not an e-mail address")))?;
            if !addresses.contains(&n) {
                addresses.push(n);
            }
        }
        if addresses.is_empty() {
            return Err(ContactError::Invalid(
                "a contact needs at least one address".into(),
            ));
        }
        if addresses.len() > MAX_ADDRESSES {
            return Err(ContactError::Invalid(format!(
                "a contact holds at most {MAX_ADDRESSES} addresses"
            )));
        }
        self.addresses = addresses;
        self.name = clean_text(self.name.as_deref());
        self.organisation = clean_text(self.organisation.as_deref());
        self.notes = clean_text(self.notes.as_deref());
        for (what, v, max) in [
            ("name", &self.name, MAX_TEXT),
            ("organisation", &self.organisation, MAX_TEXT),
            ("notes", &self.notes, MAX_NOTES),
        ] {
            if v.as_ref().is_some_and(|v| v.chars().count() > max) {
                return Err(ContactError::Invalid(format!(
                    "{what} holds at most {max} characters"
                )));
            }
        }
        Ok(self)
    }

    /// This profile with a duplicate's folded in: addresses united, VIP if either was, empty
    /// fields filled from the duplicate, notes kept from both.
    pub fn absorbing(&self, other: &Profile) -> Profile {
        let mut out = self.clone();
        for a in &other.addresses {
            if !out.addresses.contains(a) {
                out.addresses.push(a.clone());
            }
        }
        out.vip |= other.vip;
        if out.name.is_none() {
            out.name.clone_from(&other.name);
        }
        if out.organisation.is_none() {
            out.organisation.clone_from(&other.organisation);
        }
        out.notes = match (&self.notes, &other.notes) {
            (Some(a), Some(b)) if a != b => Some(format!("{a}\n\n{b}")),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        out
    }
}

impl Contact {
    pub fn is_active(&self) -> bool {
        self.status == ContactStatus::Active
    }

    fn require_active(&self) -> Result<&Profile, ContactError> {
        match self.status {
            ContactStatus::New => Err(ContactError::NotFound),
            ContactStatus::Merged { into } => Err(ContactError::Merged { into }),
            ContactStatus::Erased => Err(ContactError::Erased),
            ContactStatus::Active => self.profile.as_ref().ok_or(ContactError::Erased),
        }
    }
}

impl Aggregate for Contact {
    type Command = ContactCommand;
    type Event = ContactEvent;
    type Error = ContactError;

    fn decide(&self, command: ContactCommand) -> Result<Vec<ContactEvent>, ContactError> {
        use ContactCommand as C;
        use ContactEvent as E;
        match command {
            C::Create {
                contact_id,
                profile,
                from_mail,
                by,
                at_us,
            } => {
                if self.status != ContactStatus::New {
                    return Err(ContactError::AlreadyExists);
                }
                Ok(vec![E::Created {
                    contact_id,
                    profile: profile.validated()?,
                    from_mail,
                    by,
                    at_us,
                }])
            }
            C::Update { profile, by, at_us } => {
                let current = self.require_active()?;
                let profile = profile.validated()?;
                if &profile == current {
                    return Ok(vec![]);
                }
                Ok(vec![E::Updated { profile, by, at_us }])
            }
            C::Observe {
                address,
                name,
                at_us,
            } => {
                let current = self.require_active()?;
                let address = normalise_address(&address)
                    .ok_or_else(|| ContactError::Invalid(format!("{address:?} is no address")))?;
                let mut next = current.clone();
                if !next.addresses.contains(&address) {
                    next.addresses.push(address);
                }
                if next.name.is_none() {
                    next.name = clean_text(name.as_deref());
                }
                if &next == current {
                    return Ok(vec![]);
                }
                Ok(vec![E::Updated {
                    profile: next.validated()?,
                    by: None,
                    at_us,
                }])
            }
            C::LinkConversation {
                conversation_id,
                inbox_id,
                at_us,
            } => {
                self.require_active()?;
                if self.conversations.contains_key(&conversation_id) {
                    return Ok(vec![]);
                }
                Ok(vec![E::ConversationLinked {
                    conversation_id,
                    inbox_id,
                    at_us,
                }])
            }
            C::MergeInto { into, by, at_us } => {
                if Some(into) == self.id {
                    return Err(ContactError::MergeIntoSelf);
                }
                if self.status == (ContactStatus::Merged { into }) {
                    return Ok(vec![]);
                }
                self.require_active()?;
                Ok(vec![E::Merged { into, by, at_us }])
            }
            C::Absorb {
                from,
                profile,
                conversations,
                by,
                at_us,
            } => {
                if Some(from) == self.id {
                    return Err(ContactError::MergeIntoSelf);
                }
                let current = self.require_active()?;
                if self.absorbed.contains(&from) {
                    return Ok(vec![]);
                }
                let mut out = Vec::new();
                let merged = current.absorbing(&profile);
                if &merged != current {
                    out.push(E::Updated {
                        profile: merged,
                        by,
                        at_us,
                    });
                }
                for (conversation_id, inbox_id) in conversations {
                    if !self.conversations.contains_key(&conversation_id) {
                        out.push(E::ConversationLinked {
                            conversation_id,
                            inbox_id,
                            at_us,
                        });
                    }
                }
                out.push(E::Absorbed { from, by, at_us });
                Ok(out)
            }
            C::Erase { by, at_us } => match self.status {
                ContactStatus::New => Err(ContactError::NotFound),
                ContactStatus::Erased => Ok(vec![]),
                ContactStatus::Active | ContactStatus::Merged { .. } => Ok(vec![E::Erased {
                    contact_id: self.id.unwrap_or_default(),
                    by,
                    at_us,
                }]),
            },
        }
    }

    fn evolve(mut self, event: &ContactEvent) -> Self {
        use ContactEvent as E;
        self.version += 1;
        match event {
            E::Created {
                contact_id,
                profile,
                at_us,
                ..
            } => {
                self.id = Some(*contact_id);
                self.status = ContactStatus::Active;
                self.profile = Some(profile.clone());
                self.created_us = *at_us;
                self.updated_us = *at_us;
            }
            E::Updated { profile, at_us, .. } => {
                if self.status != ContactStatus::Erased {
                    self.profile = Some(profile.clone());
                }
                self.updated_us = *at_us;
            }
            E::ConversationLinked {
                conversation_id,
                inbox_id,
                at_us,
            } => {
                self.conversations.insert(*conversation_id, *inbox_id);
                self.updated_us = self.updated_us.max(*at_us);
            }
            E::Merged { into, at_us, .. } => {
                if self.status != ContactStatus::Erased {
                    self.status = ContactStatus::Merged { into: *into };
                }
                self.updated_us = *at_us;
            }
            E::Absorbed { from, at_us, .. } => {
                self.absorbed.push(*from);
                self.updated_us = *at_us;
            }
            E::Erased {
                contact_id, at_us, ..
            } => {
                self.id = self.id.or(Some(*contact_id));
                self.status = ContactStatus::Erased;
                self.profile = None;
                self.updated_us = *at_us;
            }
            E::Redacted { at_us } => {
                // The creation event itself may be the redacted one: the stream still exists.
                if self.status == ContactStatus::New {
                    self.status = ContactStatus::Erased;
                    self.created_us = *at_us;
                }
                self.updated_us = self.updated_us.max(*at_us);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const T0: i64 = 1_700_000_000_000_000;
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    const ME: u128 = 1;
    const OTHER: u128 = 2;

    fn profile(addresses: &[&str]) -> Profile {
        Profile {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ..Profile::default()
        }
    }

    fn created(addresses: &[&str]) -> ContactEvent {
        ContactEvent::Created {
            contact_id: id(ME),
            profile: profile(addresses),
            from_mail: true,
            by: None,
            at_us: T0,
        }
    }

    struct Given(Contact);
    fn given(events: &[ContactEvent]) -> Given {
        Given(Contact::replay(events))
    }
    impl Given {
        fn when(&self, cmd: ContactCommand) -> Result<Vec<ContactEvent>, ContactError> {
            self.0.decide(cmd)
        }
    }

    #[test]
    fn addresses_are_normalised_for_case_whitespace_and_brackets() {
        assert_eq!(
            normalise_address("  <Eve@Example.ORG> ").as_deref(),
            Some("eve@example.org")
        );
        assert_eq!(
            normalise_address("eve@example.org"),
            normalise_address(" EVE@example.org")
        );
        for bad in ["", "eve", "@x.org", "eve@", "e ve@x.org", "a@b@c"] {
            assert_eq!(normalise_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn create_normalises_and_refuses_a_second_create() {
        let events = given(&[])
            .when(ContactCommand::Create {
                contact_id: id(ME),
                profile: Profile {
                    name: Some("  Eve ".into()),
                    ..profile(&["Eve@Example.org", "eve@example.org "])
                },
                from_mail: false,
                by: None,
                at_us: T0,
            })
            .unwrap();
        let ContactEvent::Created { profile: p, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(p.addresses, vec!["eve@example.org"]);
        assert_eq!(p.name.as_deref(), Some("Eve"));
        assert_eq!(
            given(&events).when(ContactCommand::Create {
                contact_id: id(ME),
                profile: profile(&["x@y.z"]),
                from_mail: false,
                by: None,
                at_us: T0,
            }),
            Err(ContactError::AlreadyExists)
        );
        assert!(matches!(
            given(&[]).when(ContactCommand::Create {
                contact_id: id(ME),
                profile: profile(&[]),
                from_mail: false,
                by: None,
                at_us: T0
            }),
            Err(ContactError::Invalid(_))
        ));
    }

    #[test]
    fn observing_a_known_address_changes_nothing_and_a_name_fills_a_gap() {
        let g = given(&[created(&["eve@example.org"])]);
        assert_eq!(
            g.when(ContactCommand::Observe {
                address: " EVE@example.org".into(),
                name: None,
                at_us: T0
            }),
            Ok(vec![])
        );
        let named = g
            .when(ContactCommand::Observe {
                address: "eve@example.org".into(),
                name: Some("Eve".into()),
                at_us: T0,
            })
            .unwrap();
        assert!(
            matches!(&named[0], ContactEvent::Updated { profile, .. } if profile.name.as_deref() == Some("Eve"))
        );
    }

    #[test]
    fn a_conversation_is_linked_once() {
        let link = ContactCommand::LinkConversation {
            conversation_id: id(9),
            inbox_id: id(10),
            at_us: T0,
        };
        let g = given(&[created(&["e@x.org"])]);
        let first = g.when(link.clone()).unwrap();
        assert_eq!(first.len(), 1);
        let mut events = vec![created(&["e@x.org"])];
        events.extend(first);
        assert_eq!(given(&events).when(link), Ok(vec![]));
    }

    #[test]
    fn merge_moves_profile_and_links_to_the_survivor_once() {
        let dup = Contact::replay(&[
            ContactEvent::Created {
                contact_id: id(OTHER),
                profile: Profile {
                    name: Some("E. Customer".into()),
                    vip: true,
                    ..profile(&["eve@home.example"])
                },
                from_mail: true,
                by: None,
                at_us: T0,
            },
            ContactEvent::ConversationLinked {
                conversation_id: id(20),
                inbox_id: id(10),
                at_us: T0,
            },
        ]);
        let survivor = given(&[created(&["eve@example.org"])]);
        let absorb = ContactCommand::Absorb {
            from: id(OTHER),
            profile: dup.profile.clone().unwrap(),
            conversations: dup.conversations.clone(),
            by: None,
            at_us: T0 + 1,
        };
        let events = survivor.when(absorb.clone()).unwrap();
        let after =
            Contact::replay(std::iter::once(&created(&["eve@example.org"])).chain(events.iter()));
        let p = after.profile.clone().unwrap();
        assert_eq!(p.addresses, vec!["eve@example.org", "eve@home.example"]);
        assert!(p.vip);
        assert_eq!(p.name.as_deref(), Some("E. Customer"));
        assert!(after.conversations.contains_key(&id(20)));
        // Absorbing the same duplicate again changes nothing.
        assert_eq!(after.decide(absorb), Ok(vec![]));
        // The duplicate then points at the survivor; merging into itself is refused.
        let merged = dup
            .decide(ContactCommand::MergeInto {
                into: id(ME),
                by: None,
                at_us: T0,
            })
            .unwrap();
        let dup = merged.iter().fold(dup, Contact::evolve);
        assert_eq!(dup.status, ContactStatus::Merged { into: id(ME) });
        assert_eq!(
            dup.decide(ContactCommand::Update {
                profile: profile(&["x@y.z"]),
                by: None,
                at_us: T0
            }),
            Err(ContactError::Merged { into: id(ME) })
        );
        assert_eq!(
            after.decide(ContactCommand::MergeInto {
                into: id(ME),
                by: None,
                at_us: T0
            }),
            Err(ContactError::MergeIntoSelf)
        );
    }

    #[test]
    fn erasure_is_final_and_replays_without_the_redacted_profile() {
        let g = given(&[created(&["eve@example.org"])]);
        let erased = g
            .when(ContactCommand::Erase {
                by: Some(id(7)),
                at_us: T0 + 5,
            })
            .unwrap();
        assert!(
            matches!(erased[0], ContactEvent::Erased { contact_id, .. } if contact_id == id(ME))
        );
        // After the key is gone the created event replays as Redacted.
        let after = Contact::replay(&[ContactEvent::Redacted { at_us: T0 }, erased[0].clone()]);
        assert_eq!(after.status, ContactStatus::Erased);
        assert_eq!(after.profile, None);
        assert_eq!(after.id, Some(id(ME)));
        assert_eq!(
            after.decide(ContactCommand::Erase {
                by: None,
                at_us: T0
            }),
            Ok(vec![])
        );
        assert_eq!(
            after.decide(ContactCommand::LinkConversation {
                conversation_id: id(1),
                inbox_id: id(2),
                at_us: T0
            }),
            Err(ContactError::Erased)
        );
        assert_eq!(
            given(&[]).when(ContactCommand::Erase {
                by: None,
                at_us: T0
            }),
            Err(ContactError::NotFound)
        );
    }
}
