//! Who may do what: tenant roles, per-inbox grants with validity windows (handover), and the
//! permission a principal holds on an inbox at an instant. Pure: the clock is an argument.

use time::OffsetDateTime;
use uuid::Uuid;

/// A user's role in their tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TenantRole {
    Viewer,
    Agent,
    Admin,
    Owner,
}

impl TenantRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Agent => "agent",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Self::Viewer,
            "agent" => Self::Agent,
            "admin" => Self::Admin,
            "owner" => Self::Owner,
            _ => return None,
        })
    }

    /// Tenant administration: users, teams, inboxes, API keys, SSO.
    pub fn administers_tenant(self) -> bool {
        self >= Self::Admin
    }
}

/// A permission on one inbox. Ordered: `Admin` includes `Reply` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InboxRole {
    /// See conversations, never send.
    Read,
    /// Answer, note, assign.
    Reply,
    /// Members and rules.
    Admin,
}

impl InboxRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Reply => "reply",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "reply" => Self::Reply,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grantee {
    User(Uuid),
    Team(Uuid),
}

/// A membership of an inbox, possibly bounded in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub grant_id: Uuid,
    pub inbox_id: Uuid,
    pub grantee: Grantee,
    pub role: InboxRole,
    pub valid_from: Option<OffsetDateTime>,
    pub valid_until: Option<OffsetDateTime>,
}

impl Grant {
    /// In force at `now`: `valid_from <= now < valid_until`. An expired grant needs no revoke.
    pub fn in_force(&self, now: OffsetDateTime) -> bool {
        self.valid_from.is_none_or(|f| f <= now) && self.valid_until.is_none_or(|u| now < u)
    }
}

/// The permission `user` (with `tenant_role`, member of `teams`) holds on `inbox` at `now`.
/// Tenant owners and admins administer every inbox; a viewer never holds more than `Read`.
pub fn inbox_permission(
    tenant_role: TenantRole,
    user: Uuid,
    teams: &[Uuid],
    inbox: Uuid,
    grants: &[Grant],
    now: OffsetDateTime,
) -> Option<InboxRole> {
    if tenant_role.administers_tenant() {
        return Some(InboxRole::Admin);
    }
    let best = grants
        .iter()
        .filter(|g| g.inbox_id == inbox && g.in_force(now))
        .filter(|g| match g.grantee {
            Grantee::User(u) => u == user,
            Grantee::Team(t) => teams.contains(&t),
        })
        .map(|g| g.role)
        .max()?;
    Some(if tenant_role == TenantRole::Viewer {
        best.min(InboxRole::Read)
    } else {
        best
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const U: Uuid = Uuid::from_u128(1);
    const OTHER: Uuid = Uuid::from_u128(2);
    const TEAM: Uuid = Uuid::from_u128(3);
    const INBOX: Uuid = Uuid::from_u128(10);

    fn grant(grantee: Grantee, role: InboxRole) -> Grant {
        Grant {
            grant_id: Uuid::from_u128(99),
            inbox_id: INBOX,
            grantee,
            role,
            valid_from: None,
            valid_until: None,
        }
    }

    #[test]
    fn handover_old_grant_expires_by_itself() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let old = Grant {
            valid_until: Some(datetime!(2026-11-24 09:00 UTC)),
            ..grant(Grantee::User(U), InboxRole::Reply)
        };
        let new = Grant {
            valid_from: Some(datetime!(2026-11-20 00:00 UTC)),
            ..grant(Grantee::User(OTHER), InboxRole::Reply)
        };
        let grants = [old, new];
        assert_eq!(
            inbox_permission(TenantRole::Agent, U, &[], INBOX, &grants, now),
            None
        );
        assert_eq!(
            inbox_permission(TenantRole::Agent, OTHER, &[], INBOX, &grants, now),
            Some(InboxRole::Reply)
        );
        // During the overlap both held it.
        let overlap = datetime!(2026-11-21 00:00 UTC);
        assert!(inbox_permission(TenantRole::Agent, U, &[], INBOX, &grants, overlap).is_some());
        assert!(inbox_permission(TenantRole::Agent, OTHER, &[], INBOX, &grants, overlap).is_some());
    }

    #[test]
    fn team_grants_and_best_role_win() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let grants = [
            grant(Grantee::User(U), InboxRole::Read),
            grant(Grantee::Team(TEAM), InboxRole::Reply),
        ];
        assert_eq!(
            inbox_permission(TenantRole::Agent, U, &[TEAM], INBOX, &grants, now),
            Some(InboxRole::Reply)
        );
        assert_eq!(
            inbox_permission(TenantRole::Agent, U, &[], INBOX, &grants, now),
            Some(InboxRole::Read)
        );
    }

    #[test]
    fn viewers_never_reply_and_admins_hold_everything() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let grants = [grant(Grantee::User(U), InboxRole::Admin)];
        assert_eq!(
            inbox_permission(TenantRole::Viewer, U, &[], INBOX, &grants, now),
            Some(InboxRole::Read)
        );
        assert_eq!(
            inbox_permission(TenantRole::Admin, OTHER, &[], INBOX, &[], now),
            Some(InboxRole::Admin)
        );
        assert_eq!(
            inbox_permission(TenantRole::Agent, OTHER, &[], INBOX, &grants, now),
            None
        );
    }

    #[test]
    fn window_bounds_are_half_open() {
        let t = datetime!(2026-11-24 12:00 UTC);
        let g = Grant {
            valid_from: Some(t),
            valid_until: Some(t + time::Duration::hours(1)),
            ..grant(Grantee::User(U), InboxRole::Read)
        };
        assert!(g.in_force(t));
        assert!(!g.in_force(t - time::Duration::seconds(1)));
        assert!(!g.in_force(t + time::Duration::hours(1)));
    }
}
