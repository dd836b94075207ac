//! The routing engine: which of an inbox's rules fire for a message, and who an assignment
//! goes to. Pure: the clock, the business-hours answer, agents' availability and workload and
//! the round-robin pointers are inputs; the same rule set with the same inputs gives the same
//! decisions (replay).
//!
//! Rules are evaluated in order; each rule whose conditions hold fires (its actions are
//! decided), and a fired rule with `stop_processing` ends the evaluation. Assignment within a
//! team never picks an agent who is not `online` or who already holds `capacity` open
//! conversations:
//! - **round-robin**: the next eligible agent after the last one this pointer assigned, in a
//!   stable (id) order — over many arrivals every eligible agent gets the same share (±1);
//! - **least-loaded**: the eligible agent with the fewest open conversations (ties: id order);
//! - **skill match**: least-loaded among the members of teams that have the skill.

use crate::conversation::Priority;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Longest regular expression source a rule may hold.
pub const MAX_REGEX_LEN: usize = 512;
/// Compiled size limit of a rule's regular expression (bytes).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// How a message reached the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Smtp,
    Imap,
    Api,
    /// An agent opened the conversation.
    Agent,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Imap => "imap",
            Self::Api => "api",
            Self::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "smtp" => Self::Smtp,
            "imap" => Self::Imap,
            "api" => Self::Api,
            "agent" => Self::Agent,
            _ => return None,
        })
    }
}

/// When a rule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    /// A conversation opened (by a mail or by an agent).
    Opened,
    /// A further inbound message in an existing conversation.
    Message,
}

/// A regular expression from a rule, compiled with size limits.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// Why a rule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid regular expression {pattern:?}: {reason}")]
    InvalidRegex { pattern: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl Pattern {
    /// Compiles `source` case-insensitively, refusing long or expensive patterns.
    pub fn new(source: &str) -> Result<Self, RuleError> {
        if source.len() > MAX_REGEX_LEN {
            return Err(RuleError::InvalidRegex {
                pattern: source.chars().take(40).collect(),
                reason: format!("longer than {MAX_REGEX_LEN} bytes"),
            });
        }
        let regex = regex::RegexBuilder::new(source)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .nest_limit(32)
            .build()
            .map_err(|e| RuleError::InvalidRegex {
                pattern: source.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The sender's address is one of these (case-insensitive).
    SenderAddress(Vec<String>),
    /// The sender's domain is one of these (or a subdomain of one).
    SenderDomain(Vec<String>),
    /// One of these addresses is among the recipients (To and Cc).
    Recipient(Vec<String>),
    /// The subject contains one of these words (whole words, case-insensitive).
    SubjectWords(Vec<String>),
    /// The body contains one of these words.
    BodyWords(Vec<String>),
    SubjectRegex(Pattern),
    BodyRegex(Pattern),
    /// The sender is on this VIP list: addresses, or `@domain` / `domain` entries.
    Vip(Vec<String>),
    /// The sender's address belongs to a contact marked VIP ([`Facts::sender_is_vip_contact`]).
    VipContact,
    /// The conversation has one of these tags.
    Tags(Vec<String>),
    Channel(Vec<Channel>),
    /// `true`: inside the inbox's business hours; `false`: outside.
    BusinessHours(bool),
    /// Time since the customer's last message is at least / at most this many minutes.
    SinceCustomer {
        at_least_min: Option<u64>,
        at_most_min: Option<u64>,
    },
    /// Time since an agent's last reply (none yet counts as infinitely long ago).
    SinceAgent {
        at_least_min: Option<u64>,
        at_most_min: Option<u64>,
    },
}

/// Assignment strategy within a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    RoundRobin,
    LeastLoaded,
    SkillMatch,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastLoaded => "least_loaded",
            Self::SkillMatch => "skill_match",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round_robin" => Self::RoundRobin,
            "least_loaded" => Self::LeastLoaded,
            "skill_match" => Self::SkillMatch,
            _ => return None,
        })
    }
}

/// One action of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AssignUser(Uuid),
    /// Assign to a member of `team` (skill match: of any team with `skill`, or of `team` when
    /// given and skilled).
    AssignTeam {
        team: Option<Uuid>,
        strategy: Strategy,
        skill: Option<String>,
    },
    AddTag(String),
    SetPriority(Priority),
    AddParticipantUser(Uuid),
    AddParticipantInbox(Uuid),
    AutoReply(Uuid),
    Close,
    /// Tell these users (an event the notification service may pick up).
    Notify {
        users: Vec<Uuid>,
        message: String,
    },
}

/// A rule of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub triggers: BTreeSet<Trigger>,
    /// `true`: every condition must hold; `false`: at least one. No conditions: always.
    pub match_all: bool,
    pub conditions: Vec<Condition>,
    pub actions: Vec<Action>,
    pub stop_processing: bool,
}

impl Rule {
    /// Checks what the types can't: at least one action, sensible bounds.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(RuleError::Invalid(
                "a rule needs a name of 1–200 characters".into(),
            ));
        }
        if self.actions.is_empty() {
            return Err(RuleError::Invalid(
                "a rule needs at least one action".into(),
            ));
        }
        if self.triggers.is_empty() {
            return Err(RuleError::Invalid(
                "a rule needs at least one trigger".into(),
            ));
        }
        for a in &self.actions {
            if let Action::AssignTeam {
                team,
                strategy,
                skill,
            } = a
            {
                match strategy {
                    Strategy::SkillMatch if skill.as_deref().is_none_or(str::is_empty) => {
                        return Err(RuleError::Invalid("skill_match needs a skill".into()));
                    }
                    Strategy::RoundRobin | Strategy::LeastLoaded if team.is_none() => {
                        return Err(RuleError::Invalid(format!(
                            "{} needs a team",
                            strategy.as_str()
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// What is known about the message and conversation a rule is evaluated for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub from: Option<String>,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body: String,
    pub tags: BTreeSet<String>,
    pub channel: Option<Channel>,
    /// Inside the inbox's business hours now.
    pub in_business_hours: bool,
    pub now_us: i64,
    pub last_customer_us: Option<i64>,
    pub last_agent_us: Option<i64>,
    /// The sender's address belongs to a contact marked VIP (looked up by the caller: contacts
    /// are another service's data, routing keeps its own copy of the VIP marks).
    pub sender_is_vip_contact: bool,
}

fn lower(s: &str) -> String {
    s.trim().to_lowercase()
}

fn domain_of(address: &str) -> Option<&str> {
    address.rsplit_once('@').map(|(_, d)| d)
}

fn domain_matches(domain: &str, wanted: &str) -> bool {
    let wanted = wanted.trim_start_matches('@');
    domain == wanted || domain.ends_with(&format!(".{wanted}"))
}

/// Whole-word, case-insensitive containment.
fn has_word(text: &str, words: &[String]) -> bool {
    let text = text.to_lowercase();
    let tokens: BTreeSet<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    words.iter().any(|w| {
        let w = w.trim().to_lowercase();
        if w.contains(|c: char| !c.is_alphanumeric()) {
            // A phrase: plain substring.
            !w.is_empty() && text.contains(&w)
        } else {
            tokens.contains(w.as_str())
        }
    })
}

fn within(elapsed_us: Option<i64>, at_least_min: Option<u64>, at_most_min: Option<u64>) -> bool {
    let minutes = |m: u64| i64::try_from(m).unwrap_or(i64::MAX / 60_000_000) * 60_000_000;
    match elapsed_us {
        Some(e) => {
            at_least_min.is_none_or(|m| e >= minutes(m))
                && at_most_min.is_none_or(|m| e <= minutes(m))
        }
        // Never happened: longer than any bound.
        None => at_most_min.is_none(),
    }
}

impl Condition {
    /// Whether [`Condition::holds`] looks at [`Facts::body`]: only then need the body be
    /// read (a mail's text can be 50 KB in a sealed blob).
    pub fn reads_body(&self) -> bool {
        matches!(self, Self::BodyWords(_) | Self::BodyRegex(_))
    }

    pub fn holds(&self, f: &Facts) -> bool {
        let from = f.from.as_deref().map(lower);
        match self {
            Self::SenderAddress(list) => from
                .as_deref()
                .is_some_and(|a| list.iter().any(|x| lower(x) == a)),
            Self::SenderDomain(list) => from
                .as_deref()
                .and_then(domain_of)
                .is_some_and(|d| list.iter().any(|x| domain_matches(d, &lower(x)))),
            Self::Recipient(list) => f
                .recipients
                .iter()
                .any(|r| list.iter().any(|x| lower(x) == lower(r))),
            Self::SubjectWords(words) => has_word(&f.subject, words),
            Self::BodyWords(words) => has_word(&f.body, words),
            Self::SubjectRegex(p) => p.is_match(&f.subject),
            Self::BodyRegex(p) => p.is_match(&f.body),
            Self::Vip(list) => from.as_deref().is_some_and(|a| {
                list.iter().any(|x| {
                    let x = lower(x);
                    if x.contains('@') && !x.starts_with('@') {
                        x == a
                    } else {
                        domain_of(a).is_some_and(|d| domain_matches(d, &x))
                    }
                })
            }),
            Self::VipContact => f.sender_is_vip_contact,
            Self::Tags(tags) => tags.iter().any(|t| f.tags.contains(&lower(t))),
            Self::Channel(list) => f.channel.is_some_and(|c| list.contains(&c)),
            Self::BusinessHours(inside) => f.in_business_hours == *inside,
            Self::SinceCustomer {
                at_least_min,
                at_most_min,
            } => within(
                f.last_customer_us.map(|t| f.now_us.saturating_sub(t)),
                *at_least_min,
                *at_most_min,
            ),
            Self::SinceAgent {
                at_least_min,
                at_most_min,
            } => within(
                f.last_agent_us.map(|t| f.now_us.saturating_sub(t)),
                *at_least_min,
                *at_most_min,
            ),
        }
    }
}

impl Rule {
    /// Whether the rule fires for `facts` on `trigger`.
    pub fn matches(&self, trigger: Trigger, facts: &Facts) -> bool {
        if !self.enabled || !self.triggers.contains(&trigger) {
            return false;
        }
        if self.conditions.is_empty() {
            return true;
        }
        if self.match_all {
            self.conditions.iter().all(|c| c.holds(facts))
        } else {
            self.conditions.iter().any(|c| c.holds(facts))
        }
    }
}

/// Availability of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Availability {
    #[default]
    Online,
    Away,
    OutOfOffice,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Away => "away",
            Self::OutOfOffice => "out_of_office",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "online" => Self::Online,
            "away" => Self::Away,
            "out_of_office" => Self::OutOfOffice,
            _ => return None,
        })
    }
}

/// An agent as assignment sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: Uuid,
    pub availability: Availability,
    /// Most open assigned conversations; `None` = no limit.
    pub capacity: Option<u32>,
    /// Open conversations assigned now.
    pub open: u32,
}

impl Agent {
    /// Online and below capacity.
    pub fn can_take(&self) -> bool {
        self.availability == Availability::Online && self.capacity.is_none_or(|c| self.open < c)
    }
}

/// A team as assignment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: Uuid,
    pub members: BTreeSet<Uuid>,
    pub skills: BTreeSet<String>,
}

/// Who can be assigned and how loaded they are, plus the round-robin pointers (the agent each
/// pointer assigned last). Assignment decisions update it, so a batch of arrivals decided one
/// after another sees its own effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    pub agents: BTreeMap<Uuid, Agent>,
    pub teams: BTreeMap<Uuid, Team>,
    /// Pointer key (see [`pointer_key`]) → the agent assigned last.
    pub pointers: BTreeMap<String, Uuid>,
}

/// The round-robin pointer of a rule's team: one per (rule, team).
pub fn pointer_key(rule: Uuid, team: Uuid) -> String {
    format!("{rule}:{team}")
}

/// The agent after `last` among the eligible `candidates`, cycling in id order.
pub fn round_robin(candidates: &[&Agent], last: Option<Uuid>) -> Option<Uuid> {
    let mut eligible: Vec<Uuid> = candidates
        .iter()
        .filter(|a| a.can_take())
        .map(|a| a.id)
        .collect();
    eligible.sort();
    eligible.dedup();
    let first = *eligible.first()?;
    Some(match last {
        Some(l) => eligible.iter().copied().find(|id| *id > l).unwrap_or(first),
        None => first,
    })
}

/// The eligible agent with the fewest open conversations (ties: lowest id).
pub fn least_loaded(candidates: &[&Agent]) -> Option<Uuid> {
    candidates
        .iter()
        .filter(|a| a.can_take())
        .min_by_key(|a| (a.open, a.id))
        .map(|a| a.id)
}

impl Pool {
    fn members(&self, ids: &BTreeSet<Uuid>) -> Vec<&Agent> {
        ids.iter().filter_map(|u| self.agents.get(u)).collect()
    }

    /// Picks an assignee for `rule`'s team action and records the pick (pointer, workload).
    pub fn assign(
        &mut self,
        rule: Uuid,
        team: Option<Uuid>,
        strategy: Strategy,
        skill: Option<&str>,
    ) -> Option<Uuid> {
        let picked = match strategy {
            Strategy::RoundRobin => {
                let t = self.teams.get(&team?)?;
                let key = pointer_key(rule, t.id);
                let pick =
                    round_robin(&self.members(&t.members), self.pointers.get(&key).copied())?;
                self.pointers.insert(key, pick);
                pick
            }
            Strategy::LeastLoaded => {
                let t = self.teams.get(&team?)?;
                least_loaded(&self.members(&t.members))?
            }
            Strategy::SkillMatch => {
                let skill = lower(skill?);
                let mut ids = BTreeSet::new();
                for t in self.teams.values() {
                    if team.is_some_and(|x| x != t.id) {
                        continue;
                    }
                    if t.skills.iter().any(|s| lower(s) == skill) {
                        ids.extend(t.members.iter().copied());
                    }
                }
                least_loaded(&self.members(&ids))?
            }
        };
        if let Some(a) = self.agents.get_mut(&picked) {
            a.open = a.open.saturating_add(1);
        }
        Some(picked)
    }
}

/// An action with its assignment resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    Assign(Uuid),
    AddTag(String),
    SetPriority(Priority),
    AddParticipantUser(Uuid),
    AddParticipantInbox(Uuid),
    AutoReply(Uuid),
    Close,
    Notify {
        users: Vec<Uuid>,
        message: String,
    },
    /// A team assignment found nobody available with room.
    NoAssignee {
        team: Option<Uuid>,
        strategy: Strategy,
    },
}

/// One rule that fired and what it decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub rule_id: Uuid,
    pub rule_name: String,
    pub actions: Vec<Decided>,
}

/// Evaluates `rules` in order for `facts` on `trigger`, resolving assignments against `pool`
/// (which records them). `already_assigned`: a conversation that has an assignee takes no
/// further assignment from a later rule of the same run.
pub fn evaluate(
    rules: &[Rule],
    trigger: Trigger,
    facts: &Facts,
    pool: &mut Pool,
    mut already_assigned: bool,
) -> Vec<Fired> {
    let mut out = Vec::new();
    for rule in rules {
        if !rule.matches(trigger, facts) {
            continue;
        }
        let mut actions = Vec::with_capacity(rule.actions.len());
        for a in &rule.actions {
            actions.push(match a {
                Action::AssignUser(u) => {
                    if already_assigned {
                        continue;
                    }
                    already_assigned = true;
                    if let Some(agent) = pool.agents.get_mut(u) {
                        agent.open = agent.open.saturating_add(1);
                    }
                    Decided::Assign(*u)
                }
                Action::AssignTeam {
                    team,
                    strategy,
                    skill,
                } => {
                    if already_assigned {
                        continue;
                    }
                    match pool.assign(rule.id, *team, *strategy, skill.as_deref()) {
                        Some(u) => {
                            already_assigned = true;
                            Decided::Assign(u)
                        }
                        None => Decided::NoAssignee {
                            team: *team,
                            strategy: *strategy,
                        },
                    }
                }
                Action::AddTag(t) => Decided::AddTag(t.clone()),
                Action::SetPriority(p) => Decided::SetPriority(*p),
                Action::AddParticipantUser(u) => Decided::AddParticipantUser(*u),
                Action::AddParticipantInbox(i) => Decided::AddParticipantInbox(*i),
                Action::AutoReply(t) => Decided::AutoReply(*t),
                Action::Close => Decided::Close,
                Action::Notify { users, message } => Decided::Notify {
                    users: users.clone(),
                    message: message.clone(),
                },
            });
        }
        out.push(Fired {
            rule_id: rule.id,
            rule_name: rule.name.clone(),
            actions,
        });
        if rule.stop_processing {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Strategy;
    use super::*;
    use proptest::prelude::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn rule(n: u128, conditions: Vec<Condition>, actions: Vec<Action>) -> Rule {
        Rule {
            id: id(1000 + n),
            name: format!("rule {n}"),
            enabled: true,
            triggers: [Trigger::Opened].into(),
            match_all: true,
            conditions,
            actions,
            stop_processing: false,
        }
    }

    fn facts() -> Facts {
        Facts {
            from: Some("Ann@Example.COM".into()),
            recipients: vec!["support@acme.test".into()],
            subject: "Refund for order 42, please".into(),
            body: "My invoice is wrong.".into(),
            channel: Some(Channel::Smtp),
            in_business_hours: true,
            now_us: 10 * 3_600_000_000,
            last_customer_us: Some(10 * 3_600_000_000),
            ..Facts::default()
        }
    }

    fn pool(
        agents: &[(u128, Availability, Option<u32>, u32)],
        teams: &[(u128, &[u128], &[&str])],
    ) -> Pool {
        Pool {
            agents: agents
                .iter()
                .map(|&(n, availability, capacity, open)| {
                    (
                        id(n),
                        Agent {
                            id: id(n),
                            availability,
                            capacity,
                            open,
                        },
                    )
                })
                .collect(),
            teams: teams
                .iter()
                .map(|&(n, members, skills)| {
                    (
                        id(n),
                        Team {
                            id: id(n),
                            members: members.iter().map(|m| id(*m)).collect(),
                            skills: skills.iter().map(|s| (*s).to_owned()).collect(),
                        },
                    )
                })
                .collect(),
            pointers: BTreeMap::new(),
        }
    }

    #[test]
    fn conditions_match_sender_words_regex_and_vip() {
        let f = facts();
        assert!(Condition::SenderAddress(vec!["ann@example.com".into()]).holds(&f));
        assert!(Condition::SenderDomain(vec!["example.com".into()]).holds(&f));
        assert!(!Condition::SenderDomain(vec!["ample.com".into()]).holds(&f));
        assert!(Condition::Recipient(vec!["SUPPORT@acme.test".into()]).holds(&f));
        assert!(Condition::SubjectWords(vec!["refund".into()]).holds(&f));
        assert!(!Condition::SubjectWords(vec!["fun".into()]).holds(&f));
        assert!(Condition::BodyWords(vec!["invoice is".into()]).holds(&f));
        assert!(Condition::SubjectRegex(Pattern::new(r"order \d+").unwrap()).holds(&f));
        assert!(Condition::Vip(vec!["@example.com".into()]).holds(&f));
        assert!(!Condition::Vip(vec!["bob@example.com".into()]).holds(&f));
        assert!(!Condition::VipContact.holds(&f));
        let vip = Facts {
            sender_is_vip_contact: true,
            ..f.clone()
        };
        assert!(Condition::VipContact.holds(&vip));
        assert!(Condition::Channel(vec![Channel::Smtp]).holds(&f));
        assert!(!Condition::BusinessHours(false).holds(&f));
        assert!(
            Condition::SinceAgent {
                at_least_min: Some(60),
                at_most_min: None
            }
            .holds(&f)
        );
        assert!(
            Condition::SinceCustomer {
                at_least_min: None,
                at_most_min: Some(5)
            }
            .holds(&f)
        );
    }

    #[test]
    fn invalid_and_huge_regexes_are_refused() {
        assert!(matches!(
            Pattern::new("(unclosed"),
            Err(RuleError::InvalidRegex { .. })
        ));
        assert!(Pattern::new(&"a".repeat(MAX_REGEX_LEN + 1)).is_err());
        // Compiles to far more than the size limit.
        assert!(Pattern::new(r"\w{200}\w{200}\w{200}").is_err());
    }

    #[test]
    fn stop_processing_ends_the_evaluation_and_only_one_assignment_wins() {
        let rules = vec![
            rule(
                1,
                vec![Condition::SubjectWords(vec!["refund".into()])],
                vec![Action::AddTag("billing".into()), Action::AssignUser(id(7))],
            ),
            rule(
                2,
                vec![],
                vec![
                    Action::AssignUser(id(8)),
                    Action::SetPriority(Priority::High),
                ],
            ),
            Rule {
                stop_processing: true,
                ..rule(3, vec![], vec![Action::Close])
            },
            rule(4, vec![], vec![Action::AddTag("never".into())]),
        ];
        let fired = evaluate(
            &rules,
            Trigger::Opened,
            &facts(),
            &mut Pool::default(),
            false,
        );
        assert_eq!(fired.len(), 3);
        assert_eq!(
            fired[0].actions,
            vec![Decided::AddTag("billing".into()), Decided::Assign(id(7))]
        );
        assert_eq!(fired[1].actions, vec![Decided::SetPriority(Priority::High)]);
        assert_eq!(fired[2].actions, vec![Decided::Close]);
        // A message trigger does not run opened-only rules.
        assert!(
            evaluate(
                &rules,
                Trigger::Message,
                &facts(),
                &mut Pool::default(),
                false
            )
            .is_empty()
        );
    }

    #[test]
    fn skill_match_takes_the_least_loaded_skilled_member() {
        let mut p = pool(
            &[
                (1, Availability::Online, None, 3),
                (2, Availability::Online, None, 1),
                (3, Availability::Online, None, 0),
            ],
            &[(10, &[1, 2], &["german"]), (11, &[3], &["french"])],
        );
        assert_eq!(
            p.assign(id(99), None, Strategy::SkillMatch, Some("German")),
            Some(id(2))
        );
        assert_eq!(
            p.assign(id(99), None, Strategy::SkillMatch, Some("dutch")),
            None
        );
    }

    #[test]
    fn unavailable_and_full_agents_are_skipped() {
        let mut p = pool(
            &[
                (1, Availability::Away, None, 0),
                (2, Availability::Online, Some(1), 1),
                (3, Availability::OutOfOffice, None, 0),
            ],
            &[(10, &[1, 2, 3], &[])],
        );
        assert_eq!(
            p.assign(id(99), Some(id(10)), Strategy::RoundRobin, None),
            None
        );
        assert_eq!(
            p.assign(id(99), Some(id(10)), Strategy::LeastLoaded, None),
            None
        );
    }

    fn availability() -> impl proptest::strategy::Strategy<Value = Availability> {
        prop_oneof![
            6 => Just(Availability::Online),
            1 => Just(Availability::Away),
            1 => Just(Availability::OutOfOffice),
        ]
    }

    proptest! {
        /// Over many arrivals with a stable set of eligible agents, every one gets the same
        /// share, ±1.
        #[test]
        fn round_robin_is_fair(
            agents in proptest::collection::vec((availability(), 0u32..3), 1..8),
            arrivals in 1usize..300,
        ) {
            let list: Vec<_> = agents.iter().enumerate()
                .map(|(i, (a, open))| (i as u128 + 1, *a, None, *open)).collect();
            let members: Vec<u128> = (1..=agents.len() as u128).collect();
            let mut p = pool(&list, &[(50, &members, &[])]);
            let mut counts: BTreeMap<Uuid, usize> = BTreeMap::new();
            for _ in 0..arrivals {
                if let Some(u) = p.assign(id(77), Some(id(50)), Strategy::RoundRobin, None) {
                    *counts.entry(u).or_default() += 1;
                }
            }
            let eligible: Vec<Uuid> = p.agents.values()
                .filter(|a| a.availability == Availability::Online).map(|a| a.id).collect();
            if eligible.is_empty() {
                prop_assert!(counts.is_empty());
            } else {
                let per: Vec<usize> = eligible.iter().map(|e| counts.get(e).copied().unwrap_or(0)).collect();
                let (lo, hi) = (per.iter().min().copied().unwrap_or(0), per.iter().max().copied().unwrap_or(0));
                prop_assert!(hi - lo <= 1, "shares {per:?}");
                prop_assert_eq!(per.iter().sum::<usize>(), arrivals);
            }
        }

        /// Least-loaded never takes an agent past their capacity, nor an unavailable one.
        #[test]
        fn least_loaded_never_exceeds_capacity(
            agents in proptest::collection::vec((availability(), proptest::option::of(0u32..5), 0u32..5), 1..8),
            arrivals in 1usize..60,
            strategy in prop_oneof![Just(Strategy::LeastLoaded), Just(Strategy::RoundRobin)],
        ) {
            let list: Vec<_> = agents.iter().enumerate()
                .map(|(i, (a, cap, open))| (i as u128 + 1, *a, *cap, (*open).min(cap.unwrap_or(u32::MAX)))).collect();
            let members: Vec<u128> = (1..=agents.len() as u128).collect();
            let mut p = pool(&list, &[(50, &members, &[])]);
            for _ in 0..arrivals {
                let before = p.clone();
                match p.assign(id(77), Some(id(50)), strategy, None) {
                    Some(u) => {
                        let a = &before.agents[&u];
                        prop_assert!(a.can_take(), "picked {a:?}");
                        if strategy == Strategy::LeastLoaded {
                            let min = before.agents.values().filter(|x| x.can_take()).map(|x| x.open).min();
                            prop_assert_eq!(Some(a.open), min);
                        }
                    }
                    None => prop_assert!(before.agents.values().all(|a| !a.can_take())),
                }
                for a in p.agents.values() {
                    if let Some(c) = a.capacity {
                        let start = list.iter().find(|x| id(x.0) == a.id).map(|x| x.3).unwrap_or(0);
                        prop_assert!(a.open <= c.max(start));
                    }
                }
            }
        }

        /// The same rule set and the same arrivals from the same starting pool decide the same,
        /// every time (replay).
        #[test]
        fn same_rules_same_inputs_same_decisions(
            subjects in proptest::collection::vec(prop_oneof![Just("refund"), Just("hello"), Just("urgent refund")], 1..40),
            stop in any::<bool>(),
        ) {
            let rules = vec![
                Rule { stop_processing: stop, ..rule(1, vec![Condition::SubjectWords(vec!["urgent".into()])], vec![Action::SetPriority(Priority::Urgent)]) },
                rule(2, vec![Condition::SubjectWords(vec!["refund".into()])], vec![
                    Action::AssignTeam { team: Some(id(50)), strategy: Strategy::RoundRobin, skill: None },
                    Action::AddTag("billing".into()),
                ]),
                rule(3, vec![], vec![Action::AssignTeam { team: Some(id(50)), strategy: Strategy::LeastLoaded, skill: None }]),
            ];
            let start = pool(
                &[(1, Availability::Online, Some(5), 0), (2, Availability::Online, Some(2), 1), (3, Availability::Away, None, 0)],
                &[(50, &[1, 2, 3], &[])],
            );
            let run = || {
                let mut p = start.clone();
                subjects.iter().map(|s| {
                    let f = Facts { subject: (*s).to_owned(), ..facts() };
                    evaluate(&rules, Trigger::Opened, &f, &mut p, false)
                }).collect::<Vec<_>>()
            };
            prop_assert_eq!(run(), run());
        }
    }
}
