//! SLA clocks on live conversations: warning then breach when nobody answers, nothing when an
//! agent answers in time, and policies refused with stable codes.

use crate::timers::{BACKENDS, Backend, Env, message, now_us, until};
use postvak_proto::events::conversation as cev;
use postvak_proto::events::timers as tev;
use postvak_proto::rest::sla as dto;
use postvak_routing::sla::save_policy;
use postvak_routing::timers::timer_stream;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

fn policy(first_response_secs: i64) -> dto::PutSlaPolicy {
    dto::PutSlaPolicy {
        name: "Gold".into(),
        targets: dto::SlaTargets {
            first_response_secs: Some(first_response_secs),
            next_response_secs: None,
            resolution_secs: None,
        },
        by_priority: BTreeMap::new(),
        warn_at: Some(0.5),
        holidays: Vec::new(),
    }
}

async fn unanswered_conversations_warn_then_breach(backend: Backend) {
    let env = Env::new(backend, true).await;
    let saved = save_policy(&env.ctx, env.inbox, policy(2)).await.unwrap();
    let now = now_us();
    let late = env.open(env.inbox, now).await;
    let answered = env.open(env.inbox, now).await;
    env.script(
        answered,
        &[(
            cev::REPLY_QUEUED,
            message(answered, env.inbox, Some(Uuid::now_v7()), now + 200_000),
        )],
    )
    .await;
    // The breach timer of `late` fires ~2 s after the message.
    let rows = until(30, "the breach", || async {
        let rows = env.timers(late).await;
        rows.iter()
            .any(|t| t.kind == "sla_breach" && t.state == "fired")
            .then_some(rows)
    })
    .await;
    let mut seen = Vec::new();
    for kind in ["sla_warning", "sla_breach"] {
        let t: Vec<_> = rows.iter().filter(|t| t.kind == kind).collect();
        assert_eq!(t.len(), 1, "{rows:?}");
        assert_eq!(t[0].state, "fired");
        let events = env.stream(&timer_stream(t[0].timer_id)).await;
        let names: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        let expected = if kind == "sla_warning" {
            tev::SLA_WARNING
        } else {
            tev::SLA_BREACHED
        };
        assert_eq!(names, [expected, tev::TIMER_FIRED]);
        let p: tev::SlaClockEventV1 = events[0].payload().unwrap();
        assert_eq!(p.policy_id, saved.id);
        assert_eq!(p.policy_name, "Gold");
        assert_eq!(p.conversation_id, late);
        assert_eq!(p.inbox_id, env.inbox);
        assert_eq!(p.clock, "first_response");
        assert_eq!(p.due_at_us, now + 2_000_000);
        seen.push(t[0].due_at_us);
    }
    // Warning at half the target, breach at the target (24/7: no business hours set).
    assert_eq!(seen, [now + 1_000_000, now + 2_000_000]);
    // The answered conversation's clock stopped: its timers were cancelled, never fired.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = env.timers(answered).await;
    assert!(
        rows.iter()
            .filter(|t| t.kind.starts_with("sla_"))
            .all(|t| t.state == "cancelled"),
        "{rows:?}"
    );
    assert!(rows.iter().any(|t| t.kind == "sla_breach"), "{rows:?}");
}

#[tokio::test]
async fn unanswered_conversations_warn_then_breach_sqlite() {
    unanswered_conversations_warn_then_breach(Backend::Sqlite).await;
}

#[tokio::test]
async fn unanswered_conversations_warn_then_breach_postgres() {
    unanswered_conversations_warn_then_breach(Backend::Postgres).await;
}

#[tokio::test]
async fn unanswered_conversations_warn_then_breach_nats() {
    unanswered_conversations_warn_then_breach(Backend::PostgresNats).await;
}

/// A customer waiting over a weekend in Amsterdam: the breach timer is set in business hours.
#[tokio::test]
async fn breach_time_counts_business_hours_in_the_inbox_time_zone() {
    for backend in BACKENDS {
        let env = Env::new(backend, true).await;
        let day = serde_json::json!([["09:00", "17:00"]]);
        env.dir
            .update_inbox(
                &env.ctx,
                env.inbox,
                postvak_proto::events::identity::InboxUpdatedV1 {
                    inbox_id: env.inbox,
                    name: None,
                    signature: None,
                    timezone: Some("Europe/Amsterdam".into()),
                    business_hours: Some(serde_json::json!({
                        "mon": day, "tue": day, "wed": day, "thu": day, "fri": day})),
                },
            )
            .await
            .unwrap();
        save_policy(&env.ctx, env.inbox, policy(2 * 3600))
            .await
            .unwrap();
        // Friday 2026-03-27 16:00 CET (15:00Z): one hour on Friday, one on Monday after the
        // switch to summer time — Monday 10:00 CEST = 08:00Z.
        let friday = 1_774_623_600_000_000; // 2026-03-27T15:00:00Z
        let conv = env.open(env.inbox, friday).await;
        let rows = until(20, "the SLA timers", || async {
            let rows = env.timers(conv).await;
            (rows.iter().filter(|t| t.kind.starts_with("sla_")).count() == 2).then_some(rows)
        })
        .await;
        let breach = rows.iter().find(|t| t.kind == "sla_breach").unwrap();
        assert_eq!(breach.due_at_us, 1_774_857_600_000_000); // 2026-03-30T08:00:00Z
        let warning = rows.iter().find(|t| t.kind == "sla_warning").unwrap();
        assert_eq!(warning.due_at_us, 1_774_627_200_000_000); // Fri 17:00 CET = 16:00Z
    }
}

#[tokio::test]
async fn bad_policies_are_refused_with_stable_codes() {
    let env = Env::new(Backend::Sqlite, false).await;
    let cases = [
        dto::PutSlaPolicy {
            warn_at: Some(1.5),
            ..policy(60)
        },
        dto::PutSlaPolicy {
            name: " ".into(),
            ..policy(60)
        },
        policy(0),
        dto::PutSlaPolicy {
            holidays: vec!["christmas".into()],
            ..policy(60)
        },
        dto::PutSlaPolicy {
            by_priority: [("whenever".to_owned(), dto::SlaTargets::default())].into(),
            ..policy(60)
        },
    ];
    for case in cases {
        let err = save_policy(&env.ctx, env.inbox, case.clone())
            .await
            .expect_err("refused");
        let p = err.problem();
        assert_eq!(
            (p.status, p.code.as_str()),
            (422, "invalid_sla_policy"),
            "{case:?}"
        );
    }
    let bad = postvak_routing::sla::save_automation(
        &env.ctx,
        env.inbox,
        dto::Automation {
            escalate: None,
            auto_close: Some(dto::AutoCloseSettings { after_days: 0 }),
        },
    )
    .await
    .expect_err("refused");
    assert_eq!(bad.problem().code, "invalid_automation");
}
