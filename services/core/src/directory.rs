//! Directory aggregates needed by the foundation: a tenant, an inbox, an API key.
//! The full directory (users, teams, memberships, SSO) builds on these.

use crate::Aggregate;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEvent {
    TenantCreated {
        tenant_id: Uuid,
        name: String,
        cell: String,
    },
    InboxCreated {
        inbox_id: Uuid,
        name: String,
        addresses: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("the tenant already exists")]
    TenantExists,
    #[error("the inbox already exists")]
    InboxExists,
    #[error("a name is required")]
    NameRequired,
    #[error("{0:?} is not a valid email address")]
    InvalidAddress(String),
    #[error("an inbox needs at least one address")]
    NoAddress,
}

/// Tenant aggregate.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: Option<Uuid>,
    pub name: String,
    pub cell: String,
}

#[derive(Debug, Clone)]
pub enum TenantCommand {
    Create {
        tenant_id: Uuid,
        name: String,
        cell: String,
    },
}

impl Aggregate for Tenant {
    type Command = TenantCommand;
    type Event = DirectoryEvent;
    type Error = DirectoryError;

    fn decide(&self, command: TenantCommand) -> Result<Vec<DirectoryEvent>, DirectoryError> {
        match command {
            TenantCommand::Create {
                tenant_id,
                name,
                cell,
            } => {
                if self.id.is_some() {
                    return Err(DirectoryError::TenantExists);
                }
                let name = name.trim().to_owned();
                if name.is_empty() {
                    return Err(DirectoryError::NameRequired);
                }
                Ok(vec![DirectoryEvent::TenantCreated {
                    tenant_id,
                    name,
                    cell,
                }])
            }
        }
    }

    fn evolve(mut self, event: &DirectoryEvent) -> Self {
        if let DirectoryEvent::TenantCreated {
            tenant_id,
            name,
            cell,
        } = event
        {
            self.id = Some(*tenant_id);
            self.name.clone_from(name);
            self.cell.clone_from(cell);
        }
        self
    }
}

/// Inbox aggregate.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inbox {
    pub id: Option<Uuid>,
    pub name: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum InboxCommand {
    Create {
        inbox_id: Uuid,
        name: String,
        addresses: Vec<String>,
    },
}

/// A deliberately plain check: one `@`, a non-empty local part, a domain with a dot, no spaces.
/// Full RFC 5321 validation happens where mail is received.
pub fn normalise_address(raw: &str) -> Result<String, DirectoryError> {
    let a = raw.trim().to_ascii_lowercase();
    let ok = match a.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !a.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
        }
        None => false,
    };
    if ok {
        Ok(a)
    } else {
        Err(DirectoryError::InvalidAddress(raw.to_owned()))
    }
}

impl Aggregate for Inbox {
    type Command = InboxCommand;
    type Event = DirectoryEvent;
    type Error = DirectoryError;

    fn decide(&self, command: InboxCommand) -> Result<Vec<DirectoryEvent>, DirectoryError> {
        match command {
            InboxCommand::Create {
                inbox_id,
                name,
                addresses,
            } => {
                if self.id.is_some() {
                    return Err(DirectoryError::InboxExists);
                }
                let name = name.trim().to_owned();
                if name.is_empty() {
                    return Err(DirectoryError::NameRequired);
                }
                if addresses.is_empty() {
                    return Err(DirectoryError::NoAddress);
                }
                let mut normalised = Vec::with_capacity(addresses.len());
                for a in &addresses {
                    let a = normalise_address(a)?;
                    if !normalised.contains(&a) {
                        normalised.push(a);
                    }
                }
                Ok(vec![DirectoryEvent::InboxCreated {
                    inbox_id,
                    name,
                    addresses: normalised,
                }])
            }
        }
    }

    fn evolve(mut self, event: &DirectoryEvent) -> Self {
        if let DirectoryEvent::InboxCreated {
            inbox_id,
            name,
            addresses,
        } = event
        {
            self.id = Some(*inbox_id);
            self.name.clone_from(name);
            self.addresses.clone_from(addresses);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_nothing_when_create_inbox_then_created_with_normalised_addresses() {
        let id = Uuid::from_u128(1);
        let events = Inbox::default()
            .decide(InboxCommand::Create {
                inbox_id: id,
                name: " Support ".into(),
                addresses: vec!["Support@Example.org".into(), "support@example.org".into()],
            })
            .unwrap();
        assert_eq!(
            events,
            vec![DirectoryEvent::InboxCreated {
                inbox_id: id,
                name: "Support".into(),
                addresses: vec!["support@example.org".into()],
            }]
        );
    }

    #[test]
    fn given_created_when_create_again_then_refused() {
        let created = DirectoryEvent::InboxCreated {
            inbox_id: Uuid::from_u128(1),
            name: "x".into(),
            addresses: vec!["a@b.c".into()],
        };
        let state = Inbox::replay([&created]);
        assert_eq!(
            state.decide(InboxCommand::Create {
                inbox_id: Uuid::from_u128(1),
                name: "y".into(),
                addresses: vec!["a@b.c".into()],
            }),
            Err(DirectoryError::InboxExists)
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in ["", "nobody", "a@b", "a b@c.d", "@c.d", "a@.c", "<a@b.c>"] {
            assert!(normalise_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tenant_needs_a_name() {
        assert_eq!(
            Tenant::default().decide(TenantCommand::Create {
                tenant_id: Uuid::nil(),
                name: "  ".into(),
                cell: "local".into()
            }),
            Err(DirectoryError::NameRequired)
        );
    }
}
