//! A scripted day of traffic with chosen timestamps; first response, resolution, breaches,
//! reopened, workload, replies per conversation, duplicate replies prevented (stale refusals),
//! template use, suggested replies made and sent, and unassigned at the end of each shift
//! computed by hand; the same answers
//! after the projection is rebuilt from the log.

use crate::timers::{BACKENDS, Env, acted, message, opened, until};
use postvak_conversation::suggest::suggestion_stream;
use postvak_platform::store::{ExpectedVersion, NewEvent, StreamRef};
use postvak_proto::events::agent_activity as aev;
use postvak_proto::events::conversation as cev;
use postvak_proto::events::draft as dev;
use postvak_proto::events::timers as tev;
use postvak_proto::rest::sla as dto;
use postvak_routing::metrics::{MetricsQuery, compute, rebuild};
use postvak_routing::timers::timer_stream;
use serde_json::json;
use uuid::Uuid;

/// Monday 2026-11-23 00:00Z.
const DAY: i64 = 1_795_392_000;

fn at(h: i64, m: i64) -> i64 {
    (DAY + h * 3600 + m * 60) * 1_000_000
}

async fn metrics(env: &Env, q: MetricsQuery) -> dto::Metrics {
    let access = env.dir.access(&env.ctx).await.unwrap();
    compute(&env.dir, &env.ctx, &access, &q).await.unwrap()
}

/// Records an agent-activity fact as the conversation service does.
async fn activity<T: serde::Serialize>(env: &Env, event_type: &str, fact: &T) {
    env.ctx
        .append(
            &StreamRef::new(aev::STREAM_ACTIVITY, format!("test-{}", Uuid::now_v7())),
            ExpectedVersion::NoStream,
            vec![NewEvent::from_payload(event_type, 1, fact).unwrap()],
        )
        .await
        .unwrap();
}

/// A suggested draft on `conv`, as the conversation service records it; returns the draft.
async fn suggested(env: &Env, conv: Uuid, inbox: Uuid, at_us: i64) -> Uuid {
    let draft = Uuid::now_v7();
    let fact = dev::DraftSuggestedV1 {
        draft_id: draft,
        provider_id: Uuid::now_v7(),
        conversation_id: conv,
        inbox_id: inbox,
        message_id: Uuid::now_v7(),
        at_us,
    };
    env.ctx
        .append(
            &suggestion_stream(draft),
            ExpectedVersion::NoStream,
            vec![NewEvent::from_payload(dev::DRAFT_SUGGESTED, 1, &fact).unwrap()],
        )
        .await
        .unwrap();
    draft
}

/// A reply sent from suggested draft `draft` by `by`.
async fn accepted(
    env: &Env,
    draft: Uuid,
    conv: Uuid,
    inbox: Uuid,
    by: Uuid,
    edited: bool,
    at_us: i64,
) {
    let fact = dev::SuggestionAcceptedV1 {
        draft_id: draft,
        provider_id: Uuid::now_v7(),
        conversation_id: conv,
        inbox_id: inbox,
        reply_id: Uuid::now_v7(),
        edited,
        by: Some(by),
        at_us,
    };
    env.ctx
        .append(
            &suggestion_stream(draft),
            ExpectedVersion::Exact(1),
            vec![NewEvent::from_payload(dev::SUGGESTION_ACCEPTED, 1, &fact).unwrap()],
        )
        .await
        .unwrap();
}

fn refused(conv: Uuid, user: Uuid, action: &str, at_us: i64) -> aev::StaleWriteRefusedV1 {
    aev::StaleWriteRefusedV1 {
        conversation_id: conv,
        action: action.into(),
        user_id: Some(user),
        seen_version: 3,
        current_version: 4,
        at_us,
    }
}

#[tokio::test]
async fn a_scripted_day_gives_the_hand_computed_metrics() {
    for backend in BACKENDS {
        let env = Env::new(backend, true).await;
        // Shifts: 09:00–17:00 Amsterdam (CET in November: the shift ends at 16:00Z), Mon–Fri.
        let shift = json!([["09:00", "17:00"]]);
        env.dir
            .update_inbox(
                &env.ctx,
                env.inbox,
                postvak_proto::events::identity::InboxUpdatedV1 {
                    inbox_id: env.inbox,
                    name: None,
                    signature: None,
                    timezone: Some("Europe/Amsterdam".into()),
                    business_hours: Some(json!({
                        "mon": shift, "tue": shift, "wed": shift, "thu": shift, "fri": shift})),
                },
            )
            .await
            .unwrap();
        let other_inbox = env
            .dir
            .create_inbox(&env.ctx, "Sales", &["sales@acme.test".to_owned()])
            .await
            .unwrap()
            .id;
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let inbox = env.inbox;
        let (a, b, c, d, e) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        // A: asked 08:00, Alice answers 08:30 (FRT 30 min), again 09:10, closed 10:00 (2 h).
        // A suggested draft arrives 08:20 (Alice's conversation by then); she sends it as is.
        env.script(
            a,
            &[
                (cev::OPENED, opened(a, inbox, at(8, 0))),
                (cev::MESSAGE_RECEIVED, message(a, inbox, None, at(8, 0))),
                (
                    cev::ASSIGNED,
                    json!({"assignee": alice, "claimed": true, "at_us": at(8, 10)}),
                ),
            ],
        )
        .await;
        let draft = suggested(&env, a, inbox, at(8, 20)).await;
        accepted(&env, draft, a, inbox, alice, false, at(8, 30)).await;
        env.script(
            a,
            &[
                (cev::REPLY_QUEUED, message(a, inbox, Some(alice), at(8, 30))),
                (cev::MESSAGE_RECEIVED, message(a, inbox, None, at(9, 0))),
                (cev::REPLY_QUEUED, message(a, inbox, Some(alice), at(9, 10))),
                (
                    cev::STATUS_CHANGED,
                    json!({"status": "closed", "at_us": at(10, 0)}),
                ),
            ],
        )
        .await;
        // B: asked 09:00, Bob answers 10:00 (FRT 1 h), closed 12:00 (3 h), reopened 13:00,
        // assigned to Bob 13:05 (open now). A suggestion arrives 09:30 while B is unassigned
        // (nobody's); Bob edits it and sends it.
        env.script(
            b,
            &[
                (cev::OPENED, opened(b, inbox, at(9, 0))),
                (cev::MESSAGE_RECEIVED, message(b, inbox, None, at(9, 0))),
            ],
        )
        .await;
        let draft = suggested(&env, b, inbox, at(9, 30)).await;
        accepted(&env, draft, b, inbox, bob, true, at(10, 0)).await;
        env.script(
            b,
            &[
                (cev::REPLY_QUEUED, message(b, inbox, Some(bob), at(10, 0))),
                (
                    cev::STATUS_CHANGED,
                    json!({"status": "closed", "at_us": at(12, 0)}),
                ),
                (
                    cev::STATUS_CHANGED,
                    json!({"status": "open", "at_us": at(13, 0)}),
                ),
                (
                    cev::ASSIGNED,
                    json!({"assignee": bob, "claimed": false, "at_us": at(13, 5)}),
                ),
            ],
        )
        .await;
        // C: asked 11:00, nobody answers; its first-response SLA breached at 12:00.
        env.script(
            c,
            &[
                (cev::OPENED, opened(c, inbox, at(11, 0))),
                (cev::MESSAGE_RECEIVED, message(c, inbox, None, at(11, 0))),
            ],
        )
        .await;
        // C's suggestion (11:05) is never sent.
        suggested(&env, c, inbox, at(11, 5)).await;
        let timer = Uuid::now_v7();
        let breach = tev::SlaClockEventV1 {
            policy_id: Uuid::now_v7(),
            policy_name: "Gold".into(),
            conversation_id: c,
            inbox_id: inbox,
            clock: "first_response".into(),
            due_at_us: at(12, 0),
            timer_id: timer,
            at_us: at(12, 0),
        };
        env.ctx
            .append(
                &timer_stream(timer),
                ExpectedVersion::NoStream,
                vec![NewEvent::from_payload(tev::SLA_BREACHED, 1, &breach).unwrap()],
            )
            .await
            .unwrap();
        // D, in another inbox: answered in 5 minutes.
        env.script(
            d,
            &[
                (cev::OPENED, opened(d, other_inbox, at(8, 0))),
                (
                    cev::MESSAGE_RECEIVED,
                    message(d, other_inbox, None, at(8, 0)),
                ),
                (
                    cev::REPLY_QUEUED,
                    message(d, other_inbox, Some(alice), at(8, 5)),
                ),
            ],
        )
        .await;
        // D's suggestion (08:02) is sent by Alice at 08:05: counted in the other inbox only.
        let draft = suggested(&env, d, other_inbox, at(8, 2)).await;
        accepted(&env, draft, d, other_inbox, alice, false, at(8, 5)).await;
        // E: asked 15:00, still unassigned when Monday's shift ends (16:00Z), assigned to
        // Alice 17:00.
        env.script(
            e,
            &[
                (cev::OPENED, opened(e, inbox, at(15, 0))),
                (cev::MESSAGE_RECEIVED, message(e, inbox, None, at(15, 0))),
                (
                    cev::ASSIGNED,
                    json!({"assignee": alice, "claimed": false, "at_us": at(17, 0)}),
                ),
            ],
        )
        .await;
        // Duplicate replies prevented: Alice's reply to A at 09:05 and Bob's note on B at 10:30
        // were refused as stale; one in the other inbox (D); one about a conversation nobody
        // knows (not counted anywhere). Alice's 09:10 reply on A came from a template.
        activity(
            &env,
            aev::STALE_WRITE_REFUSED,
            &refused(a, alice, "reply", at(9, 5)),
        )
        .await;
        activity(
            &env,
            aev::STALE_WRITE_REFUSED,
            &refused(b, bob, "note", at(10, 30)),
        )
        .await;
        activity(
            &env,
            aev::STALE_WRITE_REFUSED,
            &refused(d, alice, "reply", at(8, 3)),
        )
        .await;
        activity(
            &env,
            aev::STALE_WRITE_REFUSED,
            &refused(Uuid::now_v7(), bob, "reply", at(9, 0)),
        )
        .await;
        activity(
            &env,
            aev::TEMPLATE_USED,
            &aev::TemplateUsedV1 {
                conversation_id: a,
                message_id: Uuid::now_v7(),
                template_id: Uuid::now_v7(),
                user_id: Some(alice),
                at_us: at(9, 10),
            },
        )
        .await;
        let _ = acted;

        let day = MetricsQuery {
            inbox_id: Some(inbox),
            from: Some(DAY),
            to: Some(DAY + 86_400),
            ..MetricsQuery::default()
        };
        let m = until(60, "the projection to catch up", || async {
            let m = metrics(&env, day.clone()).await;
            let all = metrics(
                &env,
                MetricsQuery {
                    inbox_id: None,
                    ..day.clone()
                },
            )
            .await;
            (m.sla_breaches == 1
                && m.workload.len() == 2
                && m.workload.iter().map(|w| w.open).sum::<u64>() == 2
                && m.reopened == 1
                && m.template_uses == 1
                && all.duplicate_replies_prevented == 3
                && all.first_response.count == 3
                && all.suggestions.suggested == 4
                && all.suggestions.accepted == 3)
                .then_some(m)
        })
        .await;
        let expected = dto::Metrics {
            from: DAY,
            to: DAY + 86_400,
            first_response: dto::DurationStats {
                count: 2,
                p50_secs: Some(1800),
                avg_secs: Some(2700.0),
            },
            resolution: dto::DurationStats {
                count: 2,
                p50_secs: Some(7200),
                avg_secs: Some(9000.0),
            },
            unassigned_now: 1,
            // Monday 16:00Z: C and E (A assigned, B closed then assigned after reopening).
            unassigned_at_end_of_shift: vec![dto::ShiftEnd {
                ended_at: DAY + 16 * 3600,
                unassigned: 2,
            }],
            workload: {
                let mut w = vec![
                    dto::AgentWorkload {
                        user_id: alice,
                        open: 1,
                        replies: 2,
                        suggestions_accepted: 1,
                    },
                    dto::AgentWorkload {
                        user_id: bob,
                        open: 1,
                        replies: 1,
                        suggestions_accepted: 1,
                    },
                ];
                w.sort_by_key(|x| x.user_id);
                w
            },
            sla_breaches: 1,
            sla_warnings: 0,
            reopened: 1,
            replies_per_conversation: Some(1.5),
            duplicate_replies_prevented: 2,
            template_uses: 1,
            // A, B and C were suggested; A (as is) and B (edited) sent.
            suggestions: dto::SuggestionStats {
                suggested: 3,
                accepted: 2,
                accepted_unedited: 1,
                acceptance_rate: Some(2.0 / 3.0),
            },
        };
        assert_eq!(m, expected, "{backend:?}");

        // Two days: Tuesday's shift ends with C alone (E was assigned Monday evening).
        let two_days = metrics(
            &env,
            MetricsQuery {
                to: Some(DAY + 2 * 86_400),
                ..day.clone()
            },
        )
        .await;
        assert_eq!(
            two_days.unassigned_at_end_of_shift,
            [
                dto::ShiftEnd {
                    ended_at: DAY + 16 * 3600,
                    unassigned: 2
                },
                dto::ShiftEnd {
                    ended_at: DAY + 86_400 + 16 * 3600,
                    unassigned: 1
                },
            ]
        );

        // Alice alone; the whole tenant; a period before the day.
        let m = metrics(
            &env,
            MetricsQuery {
                user_id: Some(alice),
                ..day.clone()
            },
        )
        .await;
        assert_eq!(m.first_response.count, 1);
        assert_eq!(m.first_response.p50_secs, Some(1800));
        assert_eq!(m.replies_per_conversation, Some(2.0));
        assert_eq!(
            (m.duplicate_replies_prevented, m.template_uses),
            (1, 1),
            "Alice's own"
        );
        // Alice's suggestions: the one on her conversation A, which she sent.
        assert_eq!(
            m.suggestions,
            dto::SuggestionStats {
                suggested: 1,
                accepted: 1,
                accepted_unedited: 1,
                acceptance_rate: Some(1.0),
            }
        );
        // Bob sent one, but none was suggested while a conversation was his: no rate.
        let bob_m = metrics(
            &env,
            MetricsQuery {
                user_id: Some(bob),
                ..day.clone()
            },
        )
        .await;
        assert_eq!(
            bob_m.suggestions,
            dto::SuggestionStats {
                suggested: 0,
                accepted: 1,
                accepted_unedited: 0,
                acceptance_rate: None,
            }
        );
        // Per agent, shifts are not counted (unassigned belongs to nobody).
        assert!(m.unassigned_at_end_of_shift.is_empty());
        let all = metrics(
            &env,
            MetricsQuery {
                inbox_id: None,
                ..day.clone()
            },
        )
        .await;
        assert_eq!(all.first_response.count, 3);
        assert_eq!(all.first_response.p50_secs, Some(1800));
        assert_eq!(all.first_response.avg_secs, Some(1900.0));
        assert_eq!(all.unassigned_now, 2);
        assert_eq!(all.duplicate_replies_prevented, 3);
        assert!(all.unassigned_at_end_of_shift.is_empty(), "only per inbox");
        assert_eq!(
            all.suggestions,
            dto::SuggestionStats {
                suggested: 4,
                accepted: 3,
                accepted_unedited: 2,
                acceptance_rate: Some(0.75),
            }
        );
        let alice_all = all.workload.iter().find(|w| w.user_id == alice).unwrap();
        assert_eq!(alice_all.suggestions_accepted, 2, "A and D");
        let before = metrics(
            &env,
            MetricsQuery {
                from: Some(DAY - 86_400),
                to: Some(DAY),
                ..day.clone()
            },
        )
        .await;
        assert_eq!(before.first_response.count, 0);
        assert_eq!(before.sla_breaches, 0);
        assert_eq!(before.suggestions, dto::SuggestionStats::default());

        // Rebuilt from the log: the same answers.
        let applied = rebuild(&env.ctx).await.unwrap();
        assert!(applied >= 19, "{applied}");
        assert_eq!(metrics(&env, day.clone()).await, expected, "{backend:?}");
    }
}
