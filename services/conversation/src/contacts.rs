//! Contacts: every external sender or recipient of the tenant's mail, with their conversation
//! history, merge of duplicates, GDPR export and erasure (ADR 0012).
//!
//! - A contact is a `contact` stream (aggregate in `core/src/contact.rs`). Events carrying
//!   personal data are sealed under the contact's own key (`contact:<id>`); those carrying only
//!   ids under the tenant key. The read model seals the profile under the same contact key and
//!   keeps addresses only as blind indexes, so a contact is found by address without the
//!   address being stored.
//! - Senders and recipients are filed by a consumer of the `conversation` stream (`link.rs`):
//!   inbound From, Reply-To, To, Cc (minus the tenant's own inbox addresses) and the recipients
//!   of replies. A new consumer starts at the beginning of the log, so existing conversations'
//!   participants become contacts too (backfill); `rebuild` does the same on demand.
//! - Erasure appends `contact.erased` (no personal data; the audit record), empties the read
//!   model and destroys the contact's key: the log is not rewritten, its hash chain still
//!   verifies, and the contact's events and row can no longer be read.

pub mod api;
mod codec;
pub(crate) mod link;
mod read;

use crate::Conversations;
use postvak_core::Aggregate;
use postvak_core::contact::{
    Contact, ContactCommand, ContactError, ContactEvent, ContactStatus, Profile, normalise_address,
};
use postvak_platform::cell::{CellError, Cells, TenantContext};
use postvak_platform::db::DbTx;
use postvak_platform::store::{ExpectedVersion, StoreError, StreamRef};
use postvak_proto::events::contact as ev;
use uuid::Uuid;

pub use link::rebuild;

#[derive(Debug, thiserror::Error)]
pub enum ContactServiceError {
    #[error(transparent)]
    Domain(#[from] ContactError),
    #[error("not found")]
    NotFound,
    #[error("the contact is at version {current}, not {seen}")]
    Stale { seen: u64, current: u64 },
    #[error("the address {address} belongs to contact {holder}")]
    AddressTaken { address: String, holder: Uuid },
    #[error(transparent)]
    Conversation(#[from] crate::ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cell(#[from] CellError),
}

type Result<T, E = ContactServiceError> = std::result::Result<T, E>;

pub(crate) fn stream(id: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_CONTACT, format!("contact-{id}"))
}

/// A loaded contact.
#[derive(Debug, Clone)]
pub struct LoadedContact {
    pub id: Uuid,
    pub state: Contact,
}

/// The contact service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Contacts {
    cells: Cells,
}

const MAX_ATTEMPTS: usize = 8;

impl Contacts {
    pub fn new(cells: Cells) -> Self {
        Self { cells }
    }

    pub fn cells(&self) -> &Cells {
        &self.cells
    }

    /// The contact as its stream tells it (personal-data events of an erased contact replay as
    /// redacted).
    pub async fn load(&self, ctx: &TenantContext, id: Uuid) -> Result<LoadedContact> {
        let events = ctx.read_stream(&stream(id)).await?;
        let mut state = Contact::default();
        for e in &events {
            state = state.evolve(&codec::decode(e)?);
        }
        Ok(LoadedContact { id, state })
    }

    /// Decides `make` against the current state and appends the result, retrying when someone
    /// else wrote in between; then writes the read model (the consumer repeats it from the log).
    pub(crate) async fn change<F>(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        if_match: Option<u64>,
        make: F,
    ) -> Result<(Contact, Vec<ContactEvent>)>
    where
        F: Fn(&Contact) -> Result<Vec<ContactCommand>>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let state = self.load(ctx, id).await?.state;
            let mut next = state.clone();
            let mut events = Vec::new();
            for cmd in make(&state)? {
                let decided = next.decide(cmd)?;
                for e in &decided {
                    next = next.clone().evolve(e);
                }
                events.extend(decided);
            }
            if let Some(seen) = if_match
                && seen != state.version
            {
                return Err(ContactServiceError::Stale {
                    seen,
                    current: state.version,
                });
            }
            if events.is_empty() {
                return Ok((next, events));
            }
            let expected = if state.version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(state.version)
            };
            let new_events = events
                .iter()
                .map(|e| codec::encode(e, id))
                .collect::<Result<Vec<_>, StoreError>>()?;
            match ctx.append(&stream(id), expected, new_events).await {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            if let Err(e) = self.project(ctx, id, &next).await {
                tracing::warn!(error = %e, contact_id = %id, "contact read model update deferred");
            }
            return Ok((next, events));
        }
        Err(StoreError::Conflict {
            stream_id: stream(id).stream_id,
            expected: ExpectedVersion::Any,
            actual: 0,
        }
        .into())
    }

    async fn project(&self, ctx: &TenantContext, id: Uuid, state: &Contact) -> Result<()> {
        let keyring = ctx.cell().store.keyring();
        let prepared = read::prepare(keyring, ctx.tenant(), id, state).await?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        read::write(&mut tx, ctx.tenant(), &prepared).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tx(&self, ctx: &TenantContext, write: bool) -> Result<DbTx> {
        Ok(ctx.cell().db().tenant_tx(ctx.tenant(), write).await?)
    }

    /// The contact holding `address` (any spelling), if any.
    pub async fn find_by_address(
        &self,
        ctx: &TenantContext,
        address: &str,
    ) -> Result<Option<Uuid>> {
        let Some(n) = normalise_address(address) else {
            return Ok(None);
        };
        let index = read::address_index(ctx.cell().store.keyring(), ctx.tenant(), &n).await?;
        let mut tx = self.tx(ctx, false).await?;
        let found = read::by_address(&mut tx, ctx.tenant(), &index).await?;
        tx.commit().await?;
        Ok(found)
    }

    /// Reserves every address of `profile` for `id`; on a clash releases what it took and
    /// answers [`ContactServiceError::AddressTaken`].
    async fn reserve_all(&self, ctx: &TenantContext, id: Uuid, profile: &Profile) -> Result<()> {
        let keyring = ctx.cell().store.keyring();
        let mut indexes = Vec::with_capacity(profile.addresses.len());
        for a in &profile.addresses {
            indexes.push((
                a.clone(),
                read::address_index(keyring, ctx.tenant(), a).await?,
            ));
        }
        let mut tx = self.tx(ctx, true).await?;
        let mut taken = Vec::new();
        let mut clash = None;
        for (address, index) in &indexes {
            let holder = read::reserve(&mut tx, ctx.tenant(), index, id).await?;
            if holder == id {
                taken.push(index.clone());
            } else {
                clash = Some(ContactServiceError::AddressTaken {
                    address: address.clone(),
                    holder,
                });
                break;
            }
        }
        if let Some(c) = clash {
            drop(tx);
            return Err(c);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates a contact through the API; every address must be free.
    pub async fn create(
        &self,
        ctx: &TenantContext,
        profile: Profile,
        by: Option<Uuid>,
    ) -> Result<(Uuid, Contact)> {
        let profile = profile.validated()?;
        let id = Uuid::now_v7();
        self.reserve_all(ctx, id, &profile).await?;
        let (state, _) = self
            .change(ctx, id, None, |_| {
                Ok(vec![ContactCommand::Create {
                    contact_id: id,
                    profile: profile.clone(),
                    from_mail: false,
                    by,
                    at_us: crate::now_us(),
                }])
            })
            .await?;
        Ok((id, state))
    }

    /// Replaces the profile (addresses included: new ones must be free).
    pub async fn update(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        if_match: Option<u64>,
        edit: impl Fn(&Profile) -> Profile,
        by: Option<Uuid>,
    ) -> Result<Contact> {
        let current = self.load(ctx, id).await?.state;
        let profile = match (current.status, &current.profile) {
            (ContactStatus::Active, Some(p)) => edit(p).validated()?,
            (ContactStatus::New, _) => return Err(ContactServiceError::NotFound),
            (ContactStatus::Merged { into }, _) => return Err(ContactError::Merged { into }.into()),
            _ => return Err(ContactError::Erased.into()),
        };
        self.reserve_all(ctx, id, &profile).await?;
        let (state, _) = self
            .change(ctx, id, if_match, |_| {
                Ok(vec![ContactCommand::Update {
                    profile: profile.clone(),
                    by,
                    at_us: crate::now_us(),
                }])
            })
            .await?;
        Ok(state)
    }

    /// Merges the duplicate `from` into `into`: the survivor takes its addresses, fields it
    /// lacked and its conversations first (so a crash in between repeats, never loses), then
    /// the duplicate points at the survivor.
    pub async fn merge(
        &self,
        ctx: &TenantContext,
        from: Uuid,
        into: Uuid,
        by: Option<Uuid>,
    ) -> Result<Contact> {
        if from == into {
            return Err(ContactError::MergeIntoSelf.into());
        }
        let dup = self.load(ctx, from).await?.state;
        let dup_profile = match (dup.status, &dup.profile) {
            (ContactStatus::Active, Some(p)) => p.clone(),
            (ContactStatus::Merged { into: already }, _) if already == into => {
                return Ok(self.load(ctx, into).await?.state);
            }
            (ContactStatus::New, _) => return Err(ContactServiceError::NotFound),
            (ContactStatus::Merged { into }, _) => return Err(ContactError::Merged { into }.into()),
            _ => return Err(ContactError::Erased.into()),
        };
        let conversations = dup.conversations.clone();
        let (survivor, _) = self
            .change(ctx, into, None, |_| {
                Ok(vec![ContactCommand::Absorb {
                    from,
                    profile: dup_profile.clone(),
                    conversations: conversations.clone(),
                    by,
                    at_us: crate::now_us(),
                }])
            })
            .await?;
        self.change(ctx, from, None, |_| {
            Ok(vec![ContactCommand::MergeInto {
                into,
                by,
                at_us: crate::now_us(),
            }])
        })
        .await?;
        // The survivor's row again, now that the duplicate let go of the shared addresses.
        if let Err(e) = self.project(ctx, into, &survivor).await {
            tracing::warn!(error = %e, contact_id = %into, "contact read model update deferred");
        }
        Ok(survivor)
    }

    /// Erases a contact: appends `contact.erased`, empties the read model, destroys the key.
    /// Repeating it (e.g. after a crash between the append and the destruction) finishes the job.
    pub async fn erase(&self, ctx: &TenantContext, id: Uuid, by: Option<Uuid>) -> Result<Contact> {
        let (state, _) = self
            .change(ctx, id, None, |s| {
                if s.status == ContactStatus::New {
                    return Err(ContactServiceError::NotFound);
                }
                Ok(vec![ContactCommand::Erase {
                    by,
                    at_us: crate::now_us(),
                }])
            })
            .await?;
        // Written before the key goes: the row must not keep ciphertext either.
        self.project(ctx, id, &state).await?;
        // The files agents sent them are sealed with the tenant key, which stays: removed
        // (before the key goes, so a repeated erasure finishes this too).
        let conversations: Vec<Uuid> = self
            .links(ctx, id)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        crate::files::remove_for_conversations(ctx, &conversations).await?;
        ctx.cell()
            .store
            .keyring()
            .destroy(ctx.tenant(), &codec::contact_key(id))
            .await
            .map_err(StoreError::from)?;
        Ok(state)
    }

    /// Files `address` (a sender or recipient of conversation `conversation`) as a contact:
    /// the contact holding it, or a new one; links the conversation. Idempotent.
    pub(crate) async fn file(
        &self,
        ctx: &TenantContext,
        address: &str,
        name: Option<&str>,
        conversation: Uuid,
        inbox: Uuid,
    ) -> Result<Option<Uuid>> {
        let Some(normalised) = normalise_address(address) else {
            return Ok(None);
        };
        let keyring = ctx.cell().store.keyring();
        let index = read::address_index(keyring, ctx.tenant(), &normalised).await?;
        let candidate = Uuid::now_v7();
        let mut tx = self.tx(ctx, true).await?;
        let reserved = read::reserve(&mut tx, ctx.tenant(), &index, candidate).await?;
        tx.commit().await?;
        let mut holder = reserved;
        // Follow merges (the projection moves addresses; a stale row may still point back).
        for _ in 0..8 {
            let state = self.load(ctx, holder).await?.state;
            match state.status {
                ContactStatus::Merged { into } => holder = into,
                _ => break,
            }
        }
        let at_us = crate::now_us();
        let name = name.map(str::to_owned);
        let result = self
            .change(ctx, holder, None, |s| {
                let mut cmds = Vec::new();
                match s.status {
                    // Ours (or a reservation whose creation never happened): create it now.
                    ContactStatus::New => cmds.push(ContactCommand::Create {
                        contact_id: holder,
                        profile: Profile {
                            name: name.clone(),
                            addresses: vec![normalised.clone()],
                            ..Profile::default()
                        },
                        from_mail: true,
                        by: None,
                        at_us,
                    }),
                    ContactStatus::Active => cmds.push(ContactCommand::Observe {
                        address: normalised.clone(),
                        name: name.clone(),
                        at_us,
                    }),
                    _ => return Err(ContactError::Erased.into()),
                }
                cmds.push(ContactCommand::LinkConversation {
                    conversation_id: conversation,
                    inbox_id: inbox,
                    at_us,
                });
                Ok(cmds)
            })
            .await;
        match result {
            Ok(_) => Ok(Some(holder)),
            // The row still names an erased contact (its projection is behind): let go of the
            // address and file it afresh.
            Err(ContactServiceError::Domain(ContactError::Erased)) => {
                let mut tx = self.tx(ctx, true).await?;
                read::release(&mut tx, ctx.tenant(), &index, reserved).await?;
                tx.commit().await?;
                Box::pin(self.file(ctx, address, name.as_deref(), conversation, inbox)).await
            }
            Err(e) => Err(e),
        }
    }

    /// A contact as the API shows it, from the read model (no permission check).
    pub async fn get(
        &self,
        ctx: &TenantContext,
        id: Uuid,
    ) -> Result<Option<postvak_proto::rest::contact::Contact>> {
        match self.row(ctx, id).await? {
            Some(r) => Ok(Some(self.dto(ctx, &r).await?)),
            None => Ok(None),
        }
    }

    /// A contact's read-model row.
    pub(crate) async fn row(
        &self,
        ctx: &TenantContext,
        id: Uuid,
    ) -> Result<Option<read::ContactRow>> {
        let mut tx = self.tx(ctx, false).await?;
        let r = read::get(&mut tx, ctx.tenant(), id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// The conversations linked to a contact.
    pub(crate) async fn links(&self, ctx: &TenantContext, id: Uuid) -> Result<Vec<(Uuid, Uuid)>> {
        let mut tx = self.tx(ctx, false).await?;
        let r = read::links(&mut tx, ctx.tenant(), id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// A page of active contacts after `after`.
    pub(crate) async fn list(
        &self,
        ctx: &TenantContext,
        filter: &read::Filter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<read::ContactRow>> {
        let mut tx = self.tx(ctx, false).await?;
        let r = read::list(&mut tx, ctx.tenant(), filter, after, limit).await?;
        tx.commit().await?;
        Ok(r)
    }

    pub(crate) async fn dto(
        &self,
        ctx: &TenantContext,
        row: &read::ContactRow,
    ) -> Result<postvak_proto::rest::contact::Contact> {
        Ok(read::to_dto(ctx.cell().store.keyring(), ctx.tenant(), row).await?)
    }

    pub(crate) fn conversations(&self) -> Conversations {
        Conversations::new(self.cells.clone())
    }
}
